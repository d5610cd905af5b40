"""Popularity: every user gets the catalogue ranked by how often each item occurs in the training
interactions. The baseline a user's first question on their own data is about ("does this beat
popularity?"), run through the same evaluator, exclusions and protocol as every other model.

A :class:`~genrec.models.contracts.Retriever` whose query vector is the constant 1 and whose item
"vectors" are log(1 + count) (a monotone transform of the counts; ties are pessimistic in the
evaluator). It has nothing to train: its counts are set from the training split when the run's
task builds it (:meth:`fit_counts`), and saved in the checkpoint like any weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genrec.errors import ConfigError
from genrec.models.base import ModelConfig, item_range_end, mask_items
from genrec.models.contracts import Retriever


@dataclass
class PopularityConfig(ModelConfig):
    name: str = "popularity"
    embedding_dim: int = 1
    """Unused (the score is one number per item)."""
    num_layers: int = 1
    """Unused."""
    dropout: float = 0.0
    """Unused."""
    l2_normalize: bool = False
    """Unused (scores are log counts)."""


class Popularity(nn.Module, Retriever):
    config: PopularityConfig

    def __init__(self, config: PopularityConfig):
        super().__init__()
        if config.num_items < 1:
            raise ConfigError("model.num_items must be set (>= 1) before building a model")
        self.config = config
        self.register_buffer("log_counts", torch.zeros(config.num_items + 1))  # [I+1]; row 0 = padding

    @torch.no_grad()
    def fit_counts(self, items: torch.Tensor) -> None:
        """Set the scores from the training interactions' item ids (any shape; 0 ignored)."""
        counts = torch.bincount(items.flatten().long(), minlength=self.config.num_items + 1).float()
        counts[0] = 0
        self.log_counts.copy_(torch.log1p(counts))

    @property
    def num_items(self) -> int:
        return self.config.num_items

    @property
    def max_history(self) -> int:
        return self.config.max_seq_len

    @property
    def uses_timestamps(self) -> bool:
        return False

    def embedding_parameters(self) -> int:
        return 0

    def user_vectors(self, items, timestamps=None, query_time=None, labels=None, behaviours=None, user_tokens=None) -> torch.Tensor:
        if bool(((items != 0).sum(1) == 0).any()):
            raise ValueError("every history must contain at least one item")
        return self.log_counts.new_ones(items.size(0), 1)  # [B 1]

    def item_vectors(self, ids=None, start: int = 0, end: int | None = None) -> torch.Tensor:
        vals = self.log_counts[ids] if ids is not None else self.log_counts[start:end]
        return vals.unsqueeze(-1)  # [..., 1]

    def score_items(self, user: torch.Tensor, start: int = 1, end: int | None = None) -> torch.Tensor:
        return user @ self.item_vectors(start=start, end=end).T  # [B end-start]

    def score_candidates(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return user * self.log_counts[candidates]  # [B C]

    @torch.no_grad()
    def topk(self, user: torch.Tensor, k: int, exclude: torch.Tensor | None = None, chunk_size: int = 65536,
             start: int = 1, end: int | None = None):
        end = item_range_end(self.num_items, start, end)
        s = self.score_items(user, start, end)  # [B end-start]
        if exclude is not None:
            s = mask_items(s, exclude, start, end)
        top = s.topk(min(k, end - start), dim=1)
        return top.values, top.indices + start
