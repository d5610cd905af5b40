"""Feedback labels and interleaved item/action batches for ranking and unified models.

A user's history becomes the token sequence ``item_0, action_0, item_1, action_1, ...`` (the
interleaving itself happens in the model, from the [B, N] items and [B, N, A] labels built here).
Sequences keep every interaction, negatives included (exposed-but-not-liked items).

Labels come from ratings (one binary task ``like`` = rating >= ``task.positive_rating``) or from
the log's action columns (``task.binary_actions``: value > 0 is positive; ``task.regression_actions``:
the value itself, e.g. watch time, trained with MSE).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from genrec.data.batches import shard_rows, _pad_rows, evaluable, pad_rows_2d, split_block, train_end
from genrec.data.prepare import SequenceData
from genrec.errors import DataFormatError


@dataclass(frozen=True)
class LabelSpec:
    """Names and kinds (``binary`` / ``regression``) of the ranking tasks, in label-column order."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]

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
        return like[:, None], LabelSpec(("like",), ("binary",))
    wanted = [*task_cfg.binary_actions, *task_cfg.regression_actions]
    unknown = [a for a in wanted if a not in data.action_names]
    if unknown:
        raise DataFormatError(f"{origin}: action column(s) {unknown} not in the data (it has {list(data.action_names)}; see data.action_columns)")
    cols = [data.actions[:, data.action_names.index(a)] for a in wanted]
    binary = [(c > 0).astype(np.float32) for c in cols[: len(task_cfg.binary_actions)]]
    labels = np.stack(binary + cols[len(task_cfg.binary_actions):], axis=1).astype(np.float32)
    kinds = ("binary",) * len(task_cfg.binary_actions) + ("regression",) * len(task_cfg.regression_actions)
    return labels, LabelSpec(tuple(wanted), kinds)


@dataclass
class FeedbackBatch:
    """Training batch of interaction windows (right-padded)."""

    items: torch.Tensor  # [B N] item ids, 0 = padding
    labels: torch.Tensor  # [B N A] feedback of each item
    timestamps: torch.Tensor | None  # [B N]

    def to(self, device: torch.device) -> "FeedbackBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return FeedbackBatch(move(self.items), move(self.labels), move(self.timestamps))

    @property
    def num_targets(self) -> int:
        return int((self.items != 0).sum())


@dataclass
class ImpressionBatch:
    """Held-out impressions: each user's history and the K items of the split's block."""

    users: torch.Tensor  # [B]
    items: torch.Tensor  # [B N] history
    labels: torch.Tensor  # [B N A] history feedback
    timestamps: torch.Tensor | None  # [B N]
    query_time: torch.Tensor | None  # [B] request time (first held-out item's, or the last history item's)
    candidates: torch.Tensor  # [B K] held-out items
    candidate_labels: torch.Tensor  # [B K A]

    def to(self, device: torch.device) -> "ImpressionBatch":
        return ImpressionBatch(*(None if t is None else t.to(device) for t in vars(self).values()))


class FeedbackBatches:
    """Shuffled windows of each user's last ``window`` training interactions, reproducible from (seed, epoch)."""

    def __init__(self, data: SequenceData, labels: np.ndarray, window: int, batch_size: int, include_valid: bool = False, holdout: int = 1):
        ends = train_end(data, include_valid, holdout)
        starts = np.maximum(data.offsets[:-1], ends - window)
        keep = ends - starts >= 1
        self.starts, self.ends = starts[keep], ends[keep]
        self.data, self.labels, self.batch_size = data, labels, batch_size

    @property
    def num_tokens(self) -> int:
        """Interactions per epoch (each gives one item and one action token)."""
        return int((self.ends - self.starts).sum())

    def __len__(self) -> int:
        return -(-len(self.starts) // self.batch_size)

    def epoch(self, seed: int, epoch: int, shard: tuple[int, int] = (0, 1)) -> Iterator[FeedbackBatch]:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(self.starts), generator=gen).numpy()
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for rows in shard_rows(batches, *shard):
            s, e = self.starts[rows], self.ends[rows]
            N = int((e - s).max())
            ts = None if self.data.timestamps is None else torch.from_numpy(_pad_rows(self.data.timestamps, s, e, N))
            yield FeedbackBatch(
                torch.from_numpy(_pad_rows(self.data.items, s, e, N)), torch.from_numpy(pad_rows_2d(self.labels, s, e, N)), ts
            )


def impression_batches(
    data: SequenceData, labels: np.ndarray, split: str, max_history: int, batch_size: int, holdout: int = 1, query_time: str = "target"
) -> Iterator[ImpressionBatch]:
    """Batches of (history, held-out block) for ``split`` over evaluable users, shortest first."""
    users, first = split_block(data, split, holdout)
    order = np.argsort(np.minimum(data.lengths[users], max_history + 2 * holdout), kind="stable")
    users, first = users[order], first[order]
    for i in range(0, len(users), batch_size):
        u, t = users[i : i + batch_size], first[i : i + batch_size]
        s = np.maximum(data.offsets[:-1][u], t - max_history)
        N = int((t - s).max())
        ts = qt = None
        if data.timestamps is not None:
            ts = torch.from_numpy(_pad_rows(data.timestamps, s, t, N))
            qt = torch.from_numpy(data.timestamps[t] if query_time == "target" else data.timestamps[t - 1])
        yield ImpressionBatch(
            torch.from_numpy(u), torch.from_numpy(_pad_rows(data.items, s, t, N)), torch.from_numpy(pad_rows_2d(labels, s, t, N)),
            ts, qt, torch.from_numpy(_pad_rows(data.items, t, t + holdout, holdout)),
            torch.from_numpy(pad_rows_2d(labels, t, t + holdout, holdout)),
        )


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
