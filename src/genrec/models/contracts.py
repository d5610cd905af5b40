"""What callers may ask of a model: the contracts, written down.

Every model declares what it is by inheriting one or both contracts, and callers (trainer,
evaluator, CLI, inference layer, server) test ``isinstance(model, Retriever)`` /
``isinstance(model, Ranker)``; nothing outside a model's own module probes its attributes.

- :class:`Retriever` — next item out of the whole catalogue: encode a history into a query vector,
  score all items (chunked) or given candidates, top-k with exclusions, the item vectors an ANN
  index is built from.
- :class:`Ranker` — how the user will react to given candidates: per-task outputs for candidates
  after a history with its feedback (M-FALCON for the generative models).

Shapes: histories are right-padded item ids [B, N] (0 = padding, real items 1..num_items), oldest
first; ``labels`` [B, N, A] is the feedback of each history item (A ranking tasks); timestamps are
unix seconds [B, N]; ``query_time`` [B] is the request time.

:class:`ItemTable` is the one item-embedding module every model uses (DIN included), so a
sharded table, an ANN index or side-information fusion has one thing to replace or read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Model(ABC):
    """What every genrec model offers, whatever it is for."""

    reads_feedback: bool = False
    """Whether the model reads the feedback (labels) of each history item."""
    reads_behaviours: bool = False
    """Whether the model reads the behaviour type of each history item (multi-behaviour data)."""
    reads_user_attributes: bool = False
    """Whether the model reads the user's attribute tokens (user side information)."""

    @property
    @abstractmethod
    def num_items(self) -> int:
        """Catalogue size: item ids are 1..num_items."""

    @property
    @abstractmethod
    def max_history(self) -> int:
        """Most history interactions the model reads; longer histories keep their newest."""

    @property
    @abstractmethod
    def uses_timestamps(self) -> bool:
        """Whether timestamps are required (a time bias is on)."""

    @abstractmethod
    def embedding_parameters(self) -> int:
        """Parameters in embedding tables (items, positions): the "non-embedding" count of the
        scaling study is the total minus this."""

    def compile_backbone(self, compile_fn) -> bool:
        """Route the sequence backbone through ``compile_fn`` (wrapping its ``transduce``);
        False when the model has no sequence backbone to compile."""
        return False


class Retriever(Model):
    """Retrieval contract: the next item out of the whole catalogue."""

    @abstractmethod
    def user_vectors(
        self, items: torch.Tensor, timestamps: torch.Tensor | None = None, query_time: torch.Tensor | None = None,
        labels: torch.Tensor | None = None, behaviours: torch.Tensor | None = None, user_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """History [B, N] (+ timestamps, request time, feedback when ``reads_feedback``, behaviour
        ids [B, N] when ``reads_behaviours``, the user's attribute ids [B, 1, M] when
        ``reads_user_attributes``) -> [B, D]."""

    @abstractmethod
    def item_vectors(self, ids: torch.Tensor | None = None, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Output-side item vectors of ``ids`` [...] -> [..., D], or of rows start..end-1."""

    @abstractmethod
    def score_items(self, user: torch.Tensor, start: int = 1, end: int | None = None) -> torch.Tensor:
        """user [B, D] -> scores [B, end - start] of item ids start..end-1."""

    @abstractmethod
    def score_candidates(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """user [B, D], candidates [B, C] -> scores [B, C]."""

    @abstractmethod
    def topk(
        self, user: torch.Tensor, k: int, exclude: torch.Tensor | None = None, chunk_size: int = 65536,
        start: int = 1, end: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (scores [B, k'], ids [B, k']) over the catalogue, or over item ids start..end-1
        only (a multi-domain model's domain), never an id of ``exclude`` [B, E]."""


class Ranker(Model):
    """Ranking contract: per-task outputs for candidates after a history with its feedback."""

    reads_feedback = True

    @property
    @abstractmethod
    def task_names(self) -> tuple[str, ...]:
        """Ranking tasks, in label-column order."""

    @property
    @abstractmethod
    def task_kinds(self) -> tuple[str, ...]:
        """``binary`` (output is a logit) or ``regression`` (output is the value), per task."""

    @abstractmethod
    def rank(
        self, items: torch.Tensor, labels: torch.Tensor, candidates: torch.Tensor, timestamps: torch.Tensor | None = None,
        query_time: torch.Tensor | None = None, micro_batch: int | None = None,
    ) -> torch.Tensor:
        """History [B, n] + feedback [B, n, A], candidates [B, C] -> outputs [B, C, A]; each
        candidate scored as the next item, independently of the others."""


class ItemTable(nn.Embedding):
    """The item embedding table: row 0 is padding, rows 1..num_items the catalogue. An
    ``nn.Embedding`` (checkpoint key ``item_embedding.weight`` unchanged) with genrec's init:
    ``trunc_normal`` (std 0.02, padding row zeroed; the sequence models) or ``normal`` (std 0.02
    over every row, as DIN's reference; the padding row never gets a gradient)."""

    def __init__(self, num_items: int, dim: int, init: str = "trunc_normal", std: float = 0.02):
        super().__init__(num_items + 1, dim, padding_idx=0)
        if init == "trunc_normal":
            nn.init.trunc_normal_(self.weight, std=std)
            with torch.no_grad():
                self.weight[0].zero_()
        elif init == "normal":
            nn.init.normal_(self.weight, std=std)
        else:
            raise ValueError(f"ItemTable init={init!r} is not 'trunc_normal' or 'normal'")

    @property
    def num_items(self) -> int:
        return self.num_embeddings - 1
