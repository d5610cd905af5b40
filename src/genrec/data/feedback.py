"""Feedback labels for ranking and unified models (batched by :mod:`genrec.data.batches`).

A user's history becomes the token sequence ``item_0, action_0, item_1, action_1, ...`` (the
interleaving itself happens in the model, from the [B, N] items and [B, N, A] labels).
Sequences keep every interaction, negatives included (exposed-but-not-liked items).

Labels come from ratings (one binary task ``like`` = rating >= ``task.positive_rating``, and
optionally the rating itself as a regression task: ``task.regression_actions: [rating]``) or from
the log's action columns (``task.binary_actions``: value > 0 is positive; ``task.regression_actions``:
the value itself, e.g. watch time, trained with MSE).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.data.splits import evaluable, train_end
from genrec.data.prepare import SequenceData
from genrec.errors import DataFormatError


@dataclass(frozen=True)
class LabelSpec:
    """Names and kinds (``binary`` / ``regression``) of the ranking tasks, in label-column order."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    description: str = ""
    """Where the labels come from (for the protocol), e.g. ``like = rating >= 4.0``."""

    @property
    def num_tasks(self) -> int:
        return len(self.names)

    @property
    def binary(self) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k == "binary"]


def make_labels(data: SequenceData, task_cfg) -> tuple[np.ndarray, LabelSpec]:
    """-> (labels [T, A] float32 aligned with ``data.items``, their spec). Raises a clear error
    when the data lacks what the config asks for (missing ratings, unknown action columns)."""
    origin = data.stats.get("source", "the data")
    if task_cfg.labels == "rating":
        if data.ratings is None:
            raise DataFormatError(f"{origin}: task.labels=rating, but the data has no ratings (use action columns or another format)")
        missing = int(np.isnan(data.ratings).sum())
        if missing:
            raise DataFormatError(f"{origin}: {missing} of {len(data.ratings)} interactions have no rating; ranking labels need one per interaction")
        like = (data.ratings >= task_cfg.positive_rating).astype(np.float32)
        desc = f"like = rating >= {task_cfg.positive_rating}"
        if "rating" in task_cfg.regression_actions:  # the rating itself as a second task
            return (np.stack([like, data.ratings.astype(np.float32)], axis=1),
                    LabelSpec(("like", "rating"), ("binary", "regression"), desc + "; rating (regression, MSE)"))
        return like[:, None], LabelSpec(("like",), ("binary",), desc)
    wanted = [*task_cfg.binary_actions, *task_cfg.regression_actions]
    unknown = [a for a in wanted if a not in data.action_names]
    if unknown:
        raise DataFormatError(f"{origin}: action column(s) {unknown} not in the data (it has {list(data.action_names)}; see data.action_columns)")
    cols = [data.actions[:, data.action_names.index(a)] for a in wanted]
    binary = [(c > 0).astype(np.float32) for c in cols[: len(task_cfg.binary_actions)]]
    labels = np.stack(binary + cols[len(task_cfg.binary_actions):], axis=1).astype(np.float32)
    kinds = ("binary",) * len(task_cfg.binary_actions) + ("regression",) * len(task_cfg.regression_actions)
    desc = f"binary {list(task_cfg.binary_actions)} (value > 0), regression {list(task_cfg.regression_actions)}"
    return labels, LabelSpec(tuple(wanted), kinds, desc)


def _training_labels(data: SequenceData, labels: np.ndarray, holdout: int) -> np.ndarray:
    """The rows of ``labels`` [T, A] that are training interactions (held-out blocks left out)."""
    user = np.repeat(np.arange(data.num_users), data.lengths)
    return labels[np.arange(len(labels)) < train_end(data, holdout=holdout)[user]]


def feedback_normalisation(data: SequenceData, labels: np.ndarray, spec: LabelSpec, holdout: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(shift, scale) per task for the feedback an action token reads: each regression task's mean
    and standard deviation over the training interactions (the held-out blocks are not read; a
    constant column gets scale 1), binary tasks 0 and 1."""
    train = _training_labels(data, labels, holdout)
    shift, scale = [], []
    for a, kind in enumerate(spec.kinds):
        col = train[:, a].astype(np.float64)
        if kind == "regression" and len(col):
            std = float(col.std())
            shift.append(float(col.mean()))
            scale.append(std if std > 0 else 1.0)
        else:
            shift.append(0.0)
            scale.append(1.0)
    return tuple(shift), tuple(scale)


def feedback_range(data: SequenceData, labels: np.ndarray, holdout: int) -> tuple[tuple[float, float], ...]:
    """(min, max) per task of the training interactions' labels (held-out blocks not read): the
    scale a request's feedback is checked against where it may be given as one rating per item."""
    train = _training_labels(data, labels, holdout)
    if not len(train):
        return ()
    return tuple((float(lo), float(hi)) for lo, hi in zip(train.min(0), train.max(0)))


def label_stats(labels: np.ndarray, spec: LabelSpec, data: SequenceData, holdout: int) -> dict:
    """Positive rates per binary task, users with only negatives, evaluable users: for the protocol."""
    out = {}
    for i in spec.binary:
        col = labels[:, i]
        per_user_pos = np.add.reduceat(col, data.offsets[:-1]) if len(col) else np.zeros(0)
        out[spec.names[i]] = {
            "positive_rate": round(float(col.mean()), 4),
            "users_with_only_negatives": int((per_user_pos == 0).sum()),
        }
    out["evaluable_users"] = int(evaluable(data, holdout).sum())
    return out
