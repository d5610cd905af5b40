"""Python API over a trained checkpoint: ``Recommender.load(path).recommend(history, k)`` (top-k
over the catalogue) and ``.rank(history, candidates, feedback)`` (ranking-head scores).

Histories are raw item ids (as in the source data), oldest first. Histories longer than the
model's history limit keep their most recent items; items already in the history are not
recommended unless ``exclude_history=False``. Models over interleaved sequences (ranking,
unified) and DIN also read the feedback of each history item: one value per task per item.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from genrec.errors import GenrecError, UnknownItemError
from genrec.checkpoint import load_model


class Recommender:
    def __init__(self, model, item_ids: Sequence[str], experiment: dict | None = None):
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
        return next(self.model.parameters()).device

    @property
    def reads_feedback(self) -> bool:
        return hasattr(self.model, "rank")

    @property
    def task_names(self) -> list[str]:
        head = getattr(self.model, "head_config", None) or self.model.config
        return list(getattr(head, "task_names", ()))

    def _feedback(self, feedback, kept: list[int]) -> torch.Tensor | None:
        """Per-history-item feedback (scalars or per-task lists) -> [1, n, A] for the kept items."""
        if not self.reads_feedback:
            return None
        A = len(self.task_names)
        if feedback is None:
            raise ValueError(f"this model reads feedback: give one value per history item for tasks {self.task_names}")
        rows = [[float(v)] if not isinstance(v, (list, tuple)) else [float(x) for x in v] for v in feedback]
        if len(rows) != self._history_len or any(len(r) != A for r in rows):
            raise ValueError(f"feedback needs {self._history_len} entries (one per history item) of {A} value(s) each")
        return torch.tensor([[rows[p] for p in kept]], dtype=torch.float32, device=self.device)

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

    def _inputs(self, history, timestamps, query_time, ignore_unknown, feedback):
        """-> (items [1, n], timestamps, query time, labels, item idx of the whole known history)."""
        self._history_len = len(history)
        idx, kept = self._encode_ids(history, ignore_unknown)
        L = self.model.max_history
        labels = self._feedback(feedback, kept)
        labels = None if labels is None else labels[:, -L:]
        ts = None
        if self.model.uses_timestamps:
            if timestamps is None or len(timestamps) != len(history):
                raise ValueError("this model uses timestamps (time bias on): give one timestamp per history item")
            ts = torch.tensor([[int(timestamps[p]) for p in kept][-L:]], device=self.device)
        items = torch.tensor([idx[-L:]], device=self.device)
        qt = None if query_time is None else torch.tensor([int(query_time)], device=self.device)
        return items, ts, qt, labels, idx

    def user_vector(
        self, history: Sequence, timestamps: Sequence[int] | None = None, query_time: int | None = None,
        ignore_unknown: bool = False, feedback: Sequence | None = None,
    ) -> tuple[torch.Tensor, list[int]]:
        """-> ([1, D] query vector, item idx of the whole known history)."""
        if not hasattr(self.model, "user_vectors"):
            raise ValueError(f"this {self.model.config.name} model ranks only; it has no retrieval side")
        items, ts, qt, labels, idx = self._inputs(history, timestamps, query_time, ignore_unknown, feedback)
        with torch.no_grad():
            user = self.model.user_vectors(items, ts, qt, labels)
        _check_finite(user, "query vector")
        return user, idx

    def recommend(
        self,
        history: Sequence,
        k: int = 10,
        timestamps: Sequence[int] | None = None,
        query_time: int | None = None,
        exclude_history: bool = True,
        ignore_unknown: bool = False,
        feedback: Sequence | None = None,
    ) -> list[tuple[str, float]]:
        """Top-k (raw item id, score) over the whole catalogue, best first."""
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        user, idx = self.user_vector(history, timestamps, query_time, ignore_unknown, feedback)
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
        """Retrieval scores (similarity to the next-item query) of the given candidates, in order."""
        user, _ = self.user_vector(history, timestamps, query_time, ignore_unknown)
        with torch.no_grad():
            return self.model.score_candidates(user, self._candidates(candidates))[0].tolist()

    def _candidates(self, candidates: Sequence) -> torch.Tensor:
        if len(candidates) == 0:
            raise ValueError("no candidates given")
        cand_idx = [self.index.get(str(c)) for c in candidates]
        unknown = [str(c) for c, i in zip(candidates, cand_idx) if i is None]
        if unknown:
            raise UnknownItemError(unknown)
        return torch.tensor([cand_idx], device=self.device)

    def rank(
        self,
        history: Sequence,
        candidates: Sequence,
        feedback: Sequence | None = None,
        timestamps: Sequence[int] | None = None,
        query_time: int | None = None,
        ignore_unknown: bool = False,
    ) -> list[dict[str, float]]:
        """Ranking-head outputs per candidate (raw ids), in the order given: {task: probability
        for binary tasks, predicted value for regression tasks}. All candidates in one M-FALCON pass."""
        if not self.reads_feedback:
            raise ValueError("this checkpoint is a retrieval model with no ranking head; use score() or a ranking/unified checkpoint")
        items, ts, qt, labels, _ = self._inputs(history, timestamps, query_time, ignore_unknown, feedback)
        with torch.no_grad():
            out = self.model.rank(items, labels, self._candidates(candidates), ts, qt)[0].float()  # [C A]
        _check_finite(out, "ranking outputs")
        head = getattr(self.model, "head_config", None) or self.model.config
        probs = torch.where(torch.tensor([k == "binary" for k in head.task_kinds]), torch.sigmoid(out), out)
        return [{name: round(float(v), 6) for name, v in zip(head.task_names, row)} for row in probs]


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise GenrecError(f"the model produced non-finite {what} (NaN/inf): its weights are corrupted or training diverged")
