"""Leave-one-out splits and padded batches.

Per user with n >= 3 interactions: items 0..n-3 train, item n-2 is the validation target (history
0..n-3), item n-1 the test target (history 0..n-2). Users with fewer than 3 interactions only
train (as SASRec's reference split). Model selection only ever sees validation targets.

Training windows take each user's last ``max_seq_len + 1`` training items: inputs are all but the
last, targets all but the first (a loss at every position). Batches are right-padded with 0 to the
longest row of the batch; the models' outputs do not depend on that padding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from genrec.data.prepare import SequenceData


@dataclass
class TrainBatch:
    items: torch.Tensor  # [B N] inputs, 0 = padding
    targets: torch.Tensor  # [B N] next item per position, 0 = none
    timestamps: torch.Tensor | None  # [B N]
    query_timestamps: torch.Tensor | None  # [B N] time of the target at each position

    def to(self, device: torch.device) -> "TrainBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return TrainBatch(move(self.items), move(self.targets), move(self.timestamps), move(self.query_timestamps))


@dataclass
class EvalBatch:
    users: torch.Tensor  # [B] user idx
    items: torch.Tensor  # [B N] history (last max_seq_len items)
    timestamps: torch.Tensor | None  # [B N]
    query_time: torch.Tensor | None  # [B] time used as the last position's "next" time
    targets: torch.Tensor  # [B]
    exclude: torch.Tensor  # [B E] item ids not ranked (0 = padding)


def train_end(data: SequenceData, include_valid: bool = False) -> np.ndarray:
    """[U] end offset (exclusive) of each user's training items; ``include_valid`` also trains
    on the validation item (for a refit after model selection; the test item stays out)."""
    ends = data.offsets[1:].copy()
    ends[data.lengths >= 3] -= 1 if include_valid else 2
    return ends


def _pad_rows(flat: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(starts), width), dtype=np.int64)
    for r, (s, e) in enumerate(zip(starts, ends)):
        out[r, : e - s] = flat[s:e]
    return out


class TrainBatches:
    """Shuffled training batches, reproducible from (seed, epoch)."""

    def __init__(self, data: SequenceData, max_seq_len: int, batch_size: int, bucket_by_length: bool = False, include_valid: bool = False):
        ends = train_end(data, include_valid)
        starts = np.maximum(data.offsets[:-1], ends - (max_seq_len + 1))
        keep = ends - starts >= 2  # need one input and one target
        self.starts, self.ends = starts[keep], ends[keep]
        self.data, self.batch_size, self.bucket = data, batch_size, bucket_by_length

    @property
    def num_users(self) -> int:
        return len(self.starts)

    @property
    def num_tokens(self) -> int:
        """Training targets per epoch."""
        return int((self.ends - self.starts - 1).sum())

    def __len__(self) -> int:
        return -(-self.num_users // self.batch_size)

    def epoch(self, seed: int, epoch: int) -> Iterator[TrainBatch]:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(self.num_users, generator=gen).numpy()
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.bucket:  # sort within pools of 64 batches by length, then shuffle the batches
            pool = 64 * self.batch_size
            lens = self.ends - self.starts
            chunks = [order[i : i + pool] for i in range(0, len(order), pool)]
            order = np.concatenate([c[np.argsort(lens[c], kind="stable")] for c in chunks])
            batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        for rows in batches:
            yield self._batch(rows)

    def _batch(self, rows: np.ndarray) -> TrainBatch:
        s, e = self.starts[rows], self.ends[rows]
        N = int((e - s).max()) - 1
        items = _pad_rows(self.data.items, s, e - 1, N)
        targets = _pad_rows(self.data.items, s + 1, e, N)
        ts = qts = None
        if self.data.timestamps is not None:
            ts = torch.from_numpy(_pad_rows(self.data.timestamps, s, e - 1, N))
            qts = torch.from_numpy(_pad_rows(self.data.timestamps, s + 1, e, N))
        return TrainBatch(torch.from_numpy(items), torch.from_numpy(targets), ts, qts)


def eval_batches(
    data: SequenceData,
    split: str,
    max_seq_len: int,
    batch_size: int,
    exclude_history: str = "full",
    query_time: str = "target",
) -> Iterator[EvalBatch]:
    """Batches for ``split`` in {"valid", "test"} over users with >= 3 interactions."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    users = np.flatnonzero(data.lengths >= 3)
    # shortest histories first: batches pad to their longest row, so similar lengths waste less
    users = users[np.argsort(np.minimum(data.lengths[users], max_seq_len + 2), kind="stable")]
    target_pos = data.offsets[1:][users] - (2 if split == "valid" else 1)
    first = data.offsets[:-1][users]
    for i in range(0, len(users), batch_size):
        u, t, f = users[i : i + batch_size], target_pos[i : i + batch_size], first[i : i + batch_size]
        s = np.maximum(f, t - max_seq_len)
        items = _pad_rows(data.items, s, t, int((t - s).max()))
        ex_start = {"full": f, "input": s, "none": t}[exclude_history]
        exclude = _pad_rows(data.items, ex_start, t, max(int((t - ex_start).max()), 1))
        ts = qt = None
        if data.timestamps is not None:
            ts = torch.from_numpy(_pad_rows(data.timestamps, s, t, items.shape[1]))
            qt = torch.from_numpy(data.timestamps[t] if query_time == "target" else data.timestamps[t - 1])
        yield EvalBatch(
            torch.from_numpy(u), torch.from_numpy(items), ts, qt, torch.from_numpy(data.items[t]), torch.from_numpy(exclude)
        )


def split_counts(data: SequenceData) -> dict[str, int]:
    evaluable = int((data.lengths >= 3).sum())
    return {"eval_users": evaluable, "train_only_users": data.num_users - evaluable}
