"""DIN: Deep Interest Network (Zhou et al., KDD 2018), the classic target-attention ranker.

    e_j = E[item_j] + W_a · feedback_j          history tokens (item + its observed feedback)
    w_j = MLP_att([e_j, c, e_j − c, e_j ⊙ c])     one weight per history item, no softmax (as DIN)
    u   = Σ_j w_j e_j                             candidate-specific user interest
    out = MLP([u, c, u ⊙ c, Σ_j e_j / n])         one output per ranking task

Ranking only: it implements the :class:`~genrec.models.contracts.Ranker` contract (as the
interleaved generative models do), so the evaluator, the cascade and the CLI treat them alike.

Deviations: SiLU instead of Dice/PReLU activations; history feedback is added to the item
embedding (the generative models read it too, so the comparison is like for like); no side features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from genrec.errors import ConfigError
from genrec.models.base import ModelConfig
from genrec.models.contracts import ItemTable, Ranker


@dataclass
class DINConfig(ModelConfig):
    name: str = "din"
    attention_dims: list[int] = field(default_factory=lambda: [80, 40])
    """Hidden widths of the attention MLP."""
    mlp_dims: list[int] = field(default_factory=lambda: [200, 80])
    """Hidden widths of the output MLP."""
    task_names: tuple[str, ...] = ("like",)
    """Ranking tasks (set from the data's labels when the model is built for a run)."""
    task_kinds: tuple[str, ...] = ("binary",)
    """``binary`` or ``regression`` per task."""
    l2_normalize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.task_names, self.task_kinds = tuple(self.task_names), tuple(self.task_kinds)
        if len(self.task_names) != len(self.task_kinds):
            raise ConfigError("model.task_names and model.task_kinds differ in length")


def _mlp(dims: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-2], dims[1:-1]):
        layers += [nn.Linear(a, b), nn.SiLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(dims[-2], dims[-1]))
    return nn.Sequential(*layers)


class DIN(nn.Module, Ranker):
    config: DINConfig

    def __init__(self, config: DINConfig):
        super().__init__()
        if config.num_items < 1:
            raise ConfigError("model.num_items must be set (>= 1) before building a model")
        self.config = config
        D, A = config.embedding_dim, len(config.task_names)
        self.item_embedding = ItemTable(config.num_items, D, init="normal")
        self.feedback = nn.Linear(A, D, bias=False)
        self.attention = _mlp([4 * D, *config.attention_dims, 1], 0.0)
        self.out = _mlp([4 * D, *config.mlp_dims, A], config.dropout)

    @property
    def num_items(self) -> int:
        return self.config.num_items

    @property
    def max_history(self) -> int:
        return self.config.max_seq_len

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.config.task_names

    @property
    def task_kinds(self) -> tuple[str, ...]:
        return self.config.task_kinds

    def embedding_parameters(self) -> int:
        return self.item_embedding.weight.numel()

    @property
    def uses_timestamps(self) -> bool:
        return False

    def rank(
        self,
        items: torch.Tensor,
        labels: torch.Tensor,
        candidates: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        query_time: torch.Tensor | None = None,
        micro_batch: int | None = None,
        visible: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """History [B, n] (+ labels [B, n, A]), candidates [B, C] -> outputs [B, C, A].
        ``visible`` [B, C, n]: which history items each candidate may attend to (default: all real
        ones); training passes a strictly causal mask so item k is scored from items < k."""
        B, n = items.shape
        C = candidates.size(1)
        valid = (items != 0).unsqueeze(1).expand(B, C, n) if visible is None else visible & (items != 0).unsqueeze(1)
        valid = valid.unsqueeze(-1)  # [B C n 1]
        e = self.item_embedding(items) + self.feedback(labels.to(self.feedback.weight.dtype)) * (items != 0).unsqueeze(-1)  # [B n D]
        c = self.item_embedding(candidates)  # [B C D]
        ee, cc = e.unsqueeze(1).expand(B, C, n, -1), c.unsqueeze(2).expand(B, C, n, -1)
        w = self.attention(torch.cat([ee, cc, ee - cc, ee * cc], dim=-1)) * valid  # [B C n 1]
        interest = (w * ee).sum(2)  # [B C D]
        vf = valid.to(e.dtype)
        mean = (vf * ee).sum(2) / vf.sum(2).clamp(min=1)  # [B C D] mean of the visible history
        feats = torch.cat([interest, c, interest * c, mean], dim=-1)
        return self.out(feats)  # [B C A]
