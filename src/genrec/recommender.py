"""Python API over a trained checkpoint: ``Recommender.load(path).recommend(history, k)``.

Histories are raw item ids (as in the source data), oldest first. Histories longer than the
model's ``max_seq_len`` keep their most recent items; items already in the history are not
recommended unless ``exclude_history=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from genrec.errors import UnknownItemError
from genrec.models import SequentialRecommender
from genrec.training.checkpoint import load_model


class Recommender:
    def __init__(self, model: SequentialRecommender, item_ids: Sequence[str], experiment: dict | None = None):
        self.model = model.eval()
        self.item_ids = list(item_ids)
        self.index = {raw: i + 1 for i, raw in enumerate(self.item_ids)}
        self.experiment = experiment or {}

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Recommender":
        model, items, experiment = load_model(path, device)
        return cls(model, items, experiment)

    @property
    def device(self) -> torch.device:
        return self.model.item_embedding.weight.device

    def _encode_ids(self, history: Sequence, ignore_unknown: bool) -> tuple[list[int], list[int]]:
        """Raw ids -> (idx list, positions kept); raises on unknown ids unless told to drop them."""
        if len(history) == 0:
            raise ValueError("the history is empty: give at least one item id")
        idx, kept, unknown = [], [], []
        for pos, raw in enumerate(history):
            i = self.index.get(str(raw))
            if i is None:
                unknown.append(str(raw))
            else:
                idx.append(i)
                kept.append(pos)
        if unknown and not ignore_unknown:
            raise UnknownItemError(unknown)
        if not idx:
            raise ValueError(f"none of the history's item ids is in the catalogue ({len(unknown)} unknown)")
        return idx, kept

    def user_vector(
        self, history: Sequence, timestamps: Sequence[int] | None = None, query_time: int | None = None, ignore_unknown: bool = False
    ) -> tuple[torch.Tensor, list[int]]:
        """-> ([1, D] query vector, item idx of the whole known history)."""
        idx, kept = self._encode_ids(history, ignore_unknown)
        L = self.model.config.max_seq_len
        ts = None
        if self.model.uses_timestamps:
            if timestamps is None or len(timestamps) != len(history):
                raise ValueError("this model uses timestamps (time bias on): give one timestamp per history item")
            ts = torch.tensor([[int(timestamps[p]) for p in kept][-L:]], device=self.device)
        items = torch.tensor([idx[-L:]], device=self.device)
        qt = None if query_time is None else torch.tensor([int(query_time)], device=self.device)
        with torch.no_grad():
            return self.model.user_vectors(items, ts, qt), idx

    def recommend(
        self,
        history: Sequence,
        k: int = 10,
        timestamps: Sequence[int] | None = None,
        query_time: int | None = None,
        exclude_history: bool = True,
        ignore_unknown: bool = False,
    ) -> list[tuple[str, float]]:
        """Top-k (raw item id, score) over the whole catalogue, best first."""
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        user, idx = self.user_vector(history, timestamps, query_time, ignore_unknown)
        exclude = torch.tensor([idx], device=self.device) if exclude_history else None
        scores, ids = self.model.topk(user, k, exclude)
        return [(self.item_ids[i - 1], s) for s, i in zip(scores[0].tolist(), ids[0].tolist()) if s != float("-inf")]

    def score(
        self,
        history: Sequence,
        candidates: Sequence,
        timestamps: Sequence[int] | None = None,
        query_time: int | None = None,
        ignore_unknown: bool = False,
    ) -> list[float]:
        """Scores of the given candidate items (raw ids), in the order given."""
        user, _ = self.user_vector(history, timestamps, query_time, ignore_unknown)
        cand_idx = [self.index.get(str(c)) for c in candidates]
        unknown = [str(c) for c, i in zip(candidates, cand_idx) if i is None]
        if unknown:
            raise UnknownItemError(unknown)
        with torch.no_grad():
            return self.model.score_candidates(user, torch.tensor([cand_idx], device=self.device))[0].tolist()
