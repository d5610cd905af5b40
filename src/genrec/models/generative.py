"""Ranking and retrieval as transduction over interleaved item/action tokens (HSTU §1.3, UniGRF §2).

One causal backbone (any :class:`SequentialRecommender`: HSTU, SASRec, ...) reads

    item_0, action_0, item_1, action_1, ..., item_{n-1}, action_{n-1}

- the output at ``item_k`` predicts ``action_k`` (multi-task MLP head: a logit per binary task, a
  value per regression task). It sees the whole history and the item itself: target-aware by
  construction;
- the output at ``action_k`` (L2-normalised) retrieves ``item_{k+1}`` from the catalogue, scored
  against the backbone's own item table.

Token embeddings: item tokens use the backbone's item table (× √D); an action token is, by default,
its interaction's item embedding plus a linear map of the feedback vector, both × √D
(``HeadConfig.action_token``; ``feedback`` = the map alone, genrec's first design). Both tokens of an
interaction carry its timestamp; a token's "next" time for the time bias is the next token's.
``model.max_seq_len`` counts interactions, as for every model; the backbone is built for
:func:`interleaved_tokens` = 2·max_seq_len + 1 token positions (two per interaction, one slot left
for a candidate), so its ``config.max_seq_len`` (what ``model.json`` records) counts tokens.

Two classes: :class:`InterleavedRanker` (``task.kind: ranking``; the action-token outputs are never
trained, so it offers no retrieval) and :class:`GenerativeRecommender` (``unified``: both).

M-FALCON (:meth:`rank`): the history is encoded once and its keys/values cached; candidates follow
in micro-batches, each seeing the whole history and itself, never another candidate, all at the
position right after the history. :meth:`rank_one_by_one` is the reference it is tested against.

Deviation from HSTU's reference ranking model: that code adds action embeddings to item embeddings;
this is the interleaved form the paper describes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrec.errors import ConfigError
from genrec.models.base import KVCache, SequentialRecommender, next_timestamps
from genrec.models.contracts import Ranker, Retriever
from genrec.models.ops import Context


def interleaved_tokens(max_history: int) -> int:
    """Token positions a backbone needs for ``max_history`` interactions plus one candidate."""
    return 2 * max_history + 1


@dataclass
class HeadConfig:
    task_names: tuple[str, ...] = ("like",)
    """Ranking tasks, in label-column order (filled from the data's labels)."""
    task_kinds: tuple[str, ...] = ("binary",)
    """``binary`` (logit, BCE) or ``regression`` (value, MSE) per task."""
    hidden_dim: int = 64
    """Hidden width of the ranking MLP."""
    dropout: float = 0.1
    """Dropout inside the ranking MLP."""
    micro_batch: int = 256
    """M-FALCON: candidates per micro-batch at inference."""
    retrieval: bool = True
    """Whether the action-token outputs are trained for retrieval (unified) or not (ranking only)."""
    action_token: str = "item_and_feedback"
    """What an action token carries: ``item_and_feedback`` = its interaction's item embedding plus a
    feedback embedding, both at the item tokens' scale (init std 0.02, × √D), so the output that
    retrieves the next item starts from the current item, as an item-only retriever's does (the
    feedback's scale chosen on ML-100K validation among 1, 3 and √D); ``feedback`` = a linear map of
    the feedback alone (genrec's first design, kept for its checkpoints and as the ablation: it left
    unified retrieval at a third of a separate retriever's NDCG). Both in benchmarks/RESULTS.md."""
    feedback_shift: tuple[float, ...] = ()
    feedback_scale: tuple[float, ...] = ()
    """Per task, what the history's feedback is shifted by and divided by before an action token
    reads it: for a regression task the mean and standard deviation of its training labels (so a
    1-5 rating or a watch time enters at a binary label's scale), for a binary task 0 and 1. Filled
    by the training task; empty = read as given (checkpoints written before they existed)."""
    feedback_range: tuple[tuple[float, float], ...] = ()
    """Per task, (min, max) of its training labels (a rating given alone is checked against it;
    filled by the training task; empty = not checked, as in checkpoints written before it)."""

    def __post_init__(self) -> None:
        self.task_names, self.task_kinds = tuple(self.task_names), tuple(self.task_kinds)
        if len(rng := tuple((float(lo), float(hi)) for lo, hi in self.feedback_range)) not in (0, len(self.task_names)):
            raise ConfigError(f"ranking head: feedback_range {rng} needs one (min, max) per task ({len(self.task_names)})")
        self.feedback_range = rng
        self.feedback_shift, self.feedback_scale = tuple(map(float, self.feedback_shift)), tuple(map(float, self.feedback_scale))
        if (self.feedback_shift or self.feedback_scale) and not (
                len(self.feedback_shift) == len(self.feedback_scale) == len(self.task_names) and min(self.feedback_scale) > 0):
            raise ConfigError(f"ranking head: feedback_shift {self.feedback_shift} and feedback_scale {self.feedback_scale} need one "
                              f"value per task ({len(self.task_names)}), scales > 0")
        if len(self.task_names) != len(self.task_kinds) or not self.task_names:
            raise ConfigError(f"ranking head: {len(self.task_names)} task names vs {len(self.task_kinds)} kinds")
        bad = [k for k in self.task_kinds if k not in ("binary", "regression")]
        if bad:
            raise ConfigError(f"ranking head: task kinds {bad} are not 'binary' or 'regression'")
        if self.hidden_dim < 1 or self.micro_batch < 1:
            raise ConfigError("ranking head: hidden_dim and micro_batch must be >= 1")
        if self.action_token not in ("item_and_feedback", "feedback"):
            raise ConfigError(f"task.action_token={self.action_token!r} is not 'item_and_feedback' or 'feedback'")


@dataclass
class Interleaved:
    """An encoded interleaved history: outputs, cache and what candidates need to follow it."""

    hidden: torch.Tensor  # [B 2n D] backbone outputs at every token
    cache: KVCache
    lengths: torch.Tensor  # [B] interactions per row
    token_times: torch.Tensor | None  # [B 2n]
    request_time: torch.Tensor | None = None  # [B] the time a candidate after the history carries


def request_time(timestamps: torch.Tensor, lengths: torch.Tensor, query_time: torch.Tensor | None) -> torch.Tensor:
    """[B] the request time: ``query_time`` when given, else each row's last history time."""
    if query_time is not None:
        return query_time
    rows = torch.arange(timestamps.size(0), device=timestamps.device)
    return timestamps[rows, (lengths - 1).clamp(min=0)]


class InterleavedRanker(nn.Module, Ranker):
    """A backbone over interleaved item/action tokens plus a ranking head (M-FALCON inference)."""

    def __init__(self, backbone: SequentialRecommender, head: HeadConfig):
        super().__init__()
        self.backbone, self.head_config = backbone, head
        D, A = backbone.config.embedding_dim, len(head.task_names)
        self.action_proj = nn.Linear(A, D)
        if head.action_token == "item_and_feedback":  # the item table's init: std 0.02, × √D in tokens()
            nn.init.trunc_normal_(self.action_proj.weight, std=0.02)
            nn.init.trunc_normal_(self.action_proj.bias, std=0.02)
        self.ranking_head = nn.Sequential(
            nn.LayerNorm(D), nn.Linear(D, head.hidden_dim), nn.SiLU(), nn.Dropout(head.dropout), nn.Linear(head.hidden_dim, A)
        )
        shift, scale = (head.feedback_shift, head.feedback_scale) if head.feedback_shift else ((0.0,) * A, (1.0,) * A)
        self.register_buffer("feedback_shift", torch.tensor(shift), persistent=False)  # from head.json, not the state dict
        self.register_buffer("feedback_scale", torch.tensor(scale), persistent=False)  # 0 and 1: the identity, exactly

    @property
    def config(self):
        """The backbone's config (its ``max_seq_len`` counts tokens)."""
        return self.backbone.config

    @property
    def num_items(self) -> int:
        return self.backbone.num_items

    @property
    def max_history(self) -> int:
        return (self.config.max_seq_len - 1) // 2

    @property
    def uses_timestamps(self) -> bool:
        return self.backbone.uses_timestamps

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.head_config.task_names

    @property
    def task_kinds(self) -> tuple[str, ...]:
        return self.head_config.task_kinds

    def embedding_parameters(self) -> int:
        return self.backbone.embedding_parameters()

    def compile_backbone(self, compile_fn) -> bool:
        return self.backbone.compile_backbone(compile_fn)

    def shared_parameters(self, last: int = 4) -> list[nn.Parameter]:
        """The backbone's last ``last`` parameter tensors (GradNorm weighs gradients there)."""
        return list(self.backbone.parameters())[-last:]

    def trunk_parameters(self) -> list[nn.Parameter]:
        """Every trainable backbone parameter but the embedding tables: what both the retrieval
        and the ranking loss train (the gradient-guided weighter measures gradient norms there)."""
        tables = {id(p) for m in self.backbone.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        return [p for p in self.backbone.parameters() if p.requires_grad and id(p) not in tables]

    # ---- encoding -----------------------------------------------------------------------------
    def tokens(self, items: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """items [B, n], labels [B, n, A] -> interleaved token embeddings [B, 2n, D]."""
        B, n = items.shape
        it = self.backbone.embed_items(items)  # [B n D], × √D
        act = self.action_proj(((labels - self.feedback_shift) / self.feedback_scale).to(it.dtype))  # [B n D]
        if self.head_config.action_token == "item_and_feedback":
            act = it + act * math.sqrt(it.size(-1))
        return torch.stack([it, act], dim=2).reshape(B, 2 * n, -1)

    def encode_history(
        self, items: torch.Tensor, labels: torch.Tensor, timestamps: torch.Tensor | None = None, query_time: torch.Tensor | None = None
    ) -> Interleaved:
        """Run the backbone over the interleaved history (right-padded). ``query_time`` [B] is the
        "next" time of the last action token (the request time); default: the last item's time."""
        if labels is None:
            raise ValueError("this model reads feedback: pass the history's labels")
        lengths = (items != 0).sum(1)
        times = q_times = qt = None
        if self.uses_timestamps:
            if timestamps is None:
                raise ValueError("this model has a time bias: pass timestamps")
            times = timestamps.repeat_interleave(2, dim=1)  # [B 2n]
            qt = request_time(timestamps, lengths, query_time)
            q_times = next_timestamps(times, (2 * lengths).clamp(min=1), qt)
        ctx = Context.causal(2 * items.size(1), items.device, q_times, times)
        hidden, cache = self.backbone.transduce(self.tokens(items, labels), ctx)
        return Interleaved(hidden, cache, lengths, times, qt)

    def ranking_outputs(self, h: torch.Tensor) -> torch.Tensor:
        """Item-token outputs [..., D] -> per-task outputs [..., A] (logits for binary tasks)."""
        return self.ranking_head(h)

    # ---- ranking: M-FALCON ----------------------------------------------------------------------
    def candidates_after(self, enc: Interleaved, candidates: torch.Tensor, slots: torch.Tensor, visible: torch.Tensor, cand_time=None) -> torch.Tensor:
        """Run candidate item tokens against a cached history. candidates [B, m]; slots [B, m]
        token position of each; visible [B, m, Nh] which cached keys each may see (it also sees
        itself, never another candidate); cand_time [B, m] its time -> ranking outputs [B, m, A]."""
        ctx = self._candidate_context(enc, slots, visible, cand_time)
        h, _ = self.backbone.transduce(self.backbone.embed_items(candidates), ctx, enc.cache)
        return self.ranking_outputs(h)

    def _candidate_context(self, enc: Interleaved, slots: torch.Tensor, visible: torch.Tensor, cand_time=None,
                           reuse: bool = False) -> Context:
        """The attention context of :meth:`candidates_after` (it depends on where the candidates
        sit, not on which items they are, so one context serves every candidate set of those slots;
        ``reuse``: the caller runs several sets under it, see :attr:`Context.reuse`)."""
        B, m = slots.shape
        Nh = enc.hidden.size(1)
        hist_pos = torch.arange(Nh, device=slots.device).unsqueeze(0).expand(B, Nh)
        mask = torch.cat([visible, torch.eye(m, dtype=torch.bool, device=slots.device).expand(B, m, m)], dim=2)
        q_time = k_time = None
        if self.uses_timestamps:
            q_time = cand_time
            k_time = torch.cat([enc.token_times, cand_time], dim=1)
        return Context(mask, slots, torch.cat([hist_pos, slots], dim=1), q_time, k_time, reuse=reuse)

    def rank(
        self,
        items: torch.Tensor,
        labels: torch.Tensor,
        candidates: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        query_time: torch.Tensor | None = None,
        micro_batch: int | None = None,
    ) -> torch.Tensor:
        """M-FALCON. History [B, n] (+ labels [B, n, A], timestamps), candidates [B, C] -> ranking
        outputs [B, C, A]: each candidate as if it were the next item, independent of the others."""
        enc = self.encode_history(items, labels, timestamps, query_time)
        B, C = candidates.shape
        Nh = enc.hidden.size(1)
        slot = (2 * enc.lengths).unsqueeze(1)  # [B 1] the next item slot
        visible_row = torch.arange(Nh, device=items.device).unsqueeze(0) < slot  # [B Nh]
        qt = enc.request_time
        mb = micro_batch or self.head_config.micro_batch
        out = []
        for s in range(0, C, mb):
            c = candidates[:, s : s + mb]
            m = c.size(1)
            ct = None if qt is None else qt.unsqueeze(1).expand(B, m)
            out.append(self.candidates_after(enc, c, slot.expand(B, m), visible_row.unsqueeze(1).expand(B, m, Nh), ct))
        return torch.cat(out, dim=1)

    def rank_one_by_one(
        self,
        items: torch.Tensor,
        labels: torch.Tensor,
        candidates: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        query_time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reference for :meth:`rank`: one full causal pass per candidate (history + candidate)."""
        return torch.stack([self.rank_pass(items, labels, candidates[:, c], timestamps, query_time) for c in range(candidates.size(1))], 1)

    def rank_pass(
        self, items: torch.Tensor, labels: torch.Tensor, candidate: torch.Tensor, timestamps=None, query_time=None
    ) -> torch.Tensor:
        """One causal pass over history + one candidate per row. candidate [B] -> outputs [B, A]."""
        B, n = items.shape
        lengths = (items != 0).sum(1)
        rows = torch.arange(B, device=items.device)
        x = F.pad(self.tokens(items, labels), (0, 0, 0, 1))  # [B 2n+1 D]
        x[rows, 2 * lengths] = self.backbone.embed_items(candidate)
        times = q_times = None
        if self.uses_timestamps:
            qt = request_time(timestamps, lengths, query_time)
            times = F.pad(timestamps.repeat_interleave(2, dim=1), (0, 1))
            times[rows, 2 * lengths] = qt
            q_times = next_timestamps(times, 2 * lengths + 1, qt)
        h, _ = self.backbone.transduce(x, Context.causal(2 * n + 1, items.device, q_times, times))
        return self.ranking_outputs(h[rows, 2 * lengths])

    def next_slot_outputs(self, enc: Interleaved, candidates: torch.Tensor, item_times: torch.Tensor | None) -> torch.Tensor:
        """Training-time M-FALCON over positions: candidates [B, n-1, P] placed in item slot k+1
        (seeing tokens < 2(k+1) and themselves) -> ranking outputs [B, n-1, P, A]. Used by the
        ranking-driven enhancer to score retrieval negatives with the ranking head."""
        B, n1, P = candidates.shape
        Nh = enc.hidden.size(1)
        slots = 2 * torch.arange(1, n1 + 1, device=candidates.device).unsqueeze(0).expand(B, n1)  # [B n-1]
        keys = torch.arange(Nh, device=candidates.device)
        visible = (keys.view(1, 1, Nh) < slots.unsqueeze(2)) & (keys.view(1, 1, Nh) < 2 * enc.lengths.view(B, 1, 1))
        ct = None if item_times is None else item_times[:, 1 : n1 + 1]
        ctx = self._candidate_context(enc, slots, visible, ct, reuse=True)  # shared by the P passes (without autograd, its biases too)
        outs = [self.ranking_outputs(self.backbone.transduce(self.backbone.embed_items(candidates[:, :, p]), ctx, enc.cache)[0])
                for p in range(P)]
        return torch.stack(outs, dim=2)


class GenerativeRecommender(InterleavedRanker, Retriever):
    """UniGRF's one model: the interleaved ranker whose action-token outputs also retrieve the next
    item from the catalogue (scored against the backbone's own item table)."""

    def retrieval_vectors(self, h: torch.Tensor) -> torch.Tensor:
        """Action-token outputs [..., D] -> next-item query vectors (L2-normalised if configured)."""
        return self.backbone._normalize(h)

    # ---- retrieval contract (same as SequentialRecommender) ------------------------------------
    def user_vectors(
        self,
        items: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        query_time: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        behaviours: torch.Tensor | None = None,
        user_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """History [B, n] with labels [B, n, A] -> [B, D], the output at the last action token."""
        if behaviours is not None:
            raise ValueError("interleaved models read feedback labels, not behaviour ids (data.behaviour is for retrieval backbones)")
        if user_tokens is not None:
            raise ValueError("interleaved models read no user attributes (model.user_features is for retrieval backbones)")
        enc = self.encode_history(items, labels, timestamps, query_time)
        if bool((enc.lengths == 0).any()):
            raise ValueError("every history must contain at least one item")
        rows = torch.arange(items.size(0), device=items.device)
        return self.retrieval_vectors(enc.hidden[rows, 2 * enc.lengths - 1])

    def item_vectors(self, ids=None, start: int = 0, end: int | None = None) -> torch.Tensor:
        return self.backbone.item_vectors(ids, start, end)

    def score_items(self, user: torch.Tensor, start: int = 1, end: int | None = None) -> torch.Tensor:
        return self.backbone.score_items(user, start, end)

    def score_candidates(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.backbone.score_candidates(user, candidates)

    def topk(self, user: torch.Tensor, k: int, exclude: torch.Tensor | None = None, chunk_size: int = 65536,
             start: int = 1, end: int | None = None):
        return self.backbone.topk(user, k, exclude, chunk_size, start, end)
