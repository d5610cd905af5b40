"""Leave-one-out splits and padded batches: the one batching path of every task.

Per user with n >= 3 interactions: items 0..n-3 train, item n-2 is the validation target (history
0..n-3), item n-1 the test target (history 0..n-2). Users with fewer than 3 interactions only
train (as SASRec's reference split). Model selection only ever sees validation targets.

``holdout`` = K > 1 generalises this to blocks (for ranking, where a user needs several held-out
impressions for GAUC): users with n >= 2K + 1 interactions hold out their last K for test and the K
before for validation; the retrieval target of a block is its first item (the next item after the
history), the ranking impressions are all K. K = 1 is exactly the leave-one-out split above.

Training windows (:class:`TrainBatches`) take each user's last ``max_seq_len + 1`` training items:
inputs are all but the last, targets all but the first (a loss at every position). With ``labels``
(ranking and unified tasks) a window is the user's last ``max_seq_len`` interactions with their
feedback instead (:class:`FeedbackBatch`; the model interleaves item and action tokens).
Evaluation batches (:func:`eval_batches`) carry each evaluated user's history, the split's
retrieval target, the excluded items, and the whole held-out block with its feedback (the
ranking impressions). Batches are right-padded with 0 to the
longest row of the batch; the models' outputs do not depend on that padding. With ``pack`` the
same users' windows are instead packed into as few rows as fit (first-fit decreasing, row length =
the batch's longest window) with a segment id per token, so compute follows real tokens: the step
sees exactly the same users and targets as the padded batch.
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
    segments: torch.Tensor | None = None  # [B N] packed rows: sequence id of each token (0 = padding)

    def to(self, device: torch.device) -> "TrainBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return TrainBatch(move(self.items), move(self.targets), move(self.timestamps), move(self.query_timestamps), move(self.segments))

    @property
    def num_targets(self) -> int:
        return int((self.targets != 0).sum())

    @property
    def padding_fraction(self) -> float:
        """Share of the [B, N] token slots that hold no real input."""
        return 1.0 - float((self.items != 0).sum()) / max(self.items.numel(), 1)


@dataclass
class FeedbackBatch:
    """Training batch of interaction windows with their feedback (right-padded)."""

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
class EvalBatch:
    users: torch.Tensor  # [B] user idx
    items: torch.Tensor  # [B N] history (last max_seq_len items)
    timestamps: torch.Tensor | None  # [B N]
    query_time: torch.Tensor | None  # [B] time used as the last position's "next" time
    targets: torch.Tensor  # [B] retrieval target: the first item of the held-out block
    exclude: torch.Tensor  # [B E] item ids not ranked (0 = padding)
    labels: torch.Tensor | None = None  # [B N A] feedback of the history items (interleaved models)
    candidates: torch.Tensor | None = None  # [B K] the held-out block (ranking impressions)
    candidate_labels: torch.Tensor | None = None  # [B K A] their feedback

    def to(self, device: torch.device | str) -> "EvalBatch":
        return EvalBatch(*(None if t is None else t.to(device) for t in vars(self).values()))


def evaluable(data: SequenceData, holdout: int = 1) -> np.ndarray:
    """[U] bool: users long enough to hold out a validation and a test block of ``holdout`` items."""
    return data.lengths >= 2 * holdout + 1


def train_end(data: SequenceData, include_valid: bool = False, holdout: int = 1) -> np.ndarray:
    """[U] end offset (exclusive) of each user's training items; ``include_valid`` also trains
    on the validation block (for a refit after model selection; the test block stays out)."""
    ends = data.offsets[1:].copy()
    ends[evaluable(data, holdout)] -= holdout * (1 if include_valid else 2)
    return ends


def split_block(data: SequenceData, split: str, holdout: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(evaluated users, offset of the first item of each one's ``split`` block)."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    users = np.flatnonzero(evaluable(data, holdout))
    return users, data.offsets[1:][users] - holdout * (2 if split == "valid" else 1)


def shard_rows(batches: list[np.ndarray], rank: int, world: int) -> Iterator[np.ndarray]:
    """Rank ``rank``'s rows of each global batch (every ``world``-th). A final batch with fewer
    rows than ranks is dropped on every rank, so all ranks take the same number of steps."""
    for rows in batches:
        if world == 1:
            yield rows
        elif len(rows) >= world:
            yield rows[rank::world]


def pack_rows(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """First-fit decreasing: group indices of ``lengths`` into rows whose lengths sum to <= capacity."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in np.argsort(-lengths, kind="stable"):
        n = int(lengths[i])
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(int(i))
                free[r] -= n
                break
        else:
            rows.append([int(i)])
            free.append(capacity - n)
    return rows


def _pad_rows(flat: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(starts), width), dtype=np.int64)
    for r, (s, e) in enumerate(zip(starts, ends)):
        out[r, : e - s] = flat[s:e]
    return out


def pad_rows_2d(flat: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """Rows of a [T, A] array -> [B, width, A] zero-padded."""
    out = np.zeros((len(starts), width, flat.shape[1]), dtype=flat.dtype)
    for r, (s, e) in enumerate(zip(starts, ends)):
        out[r, : e - s] = flat[s:e]
    return out


class TrainBatches:
    """Shuffled training batches, reproducible from (seed, epoch): :class:`TrainBatch` (next item
    at every position), or :class:`FeedbackBatch` when ``labels`` [T, A] are given (interleaved
    ranking/unified training; no packing, bucketing or data fraction there)."""

    def __init__(
        self, data: SequenceData, max_seq_len: int, batch_size: int, bucket_by_length: bool = False,
        include_valid: bool = False, holdout: int = 1, pack: bool = False, fraction: float = 1.0, seed: int = 0,
        labels: np.ndarray | None = None,
    ):
        if labels is not None and (pack or bucket_by_length or fraction < 1.0):
            raise ValueError("feedback windows support neither packing, length bucketing nor a data fraction")
        ends = train_end(data, include_valid, holdout)
        # retrieval: inputs + one more item for the last target; feedback: the interactions themselves
        window, shortest = (max_seq_len + 1, 2) if labels is None else (max_seq_len, 1)
        starts = np.maximum(data.offsets[:-1], ends - window)
        keep = ends - starts >= shortest
        if fraction < 1.0:  # a fixed subset of users, the same for every epoch and on resume
            chosen = np.random.default_rng(seed).permutation(data.num_users)[: max(1, round(fraction * data.num_users))]
            keep &= np.isin(np.arange(data.num_users), chosen)
        self.starts, self.ends = starts[keep], ends[keep]
        self.data, self.batch_size, self.bucket, self.pack = data, batch_size, bucket_by_length, pack
        self.labels = labels

    @property
    def num_users(self) -> int:
        return len(self.starts)

    @property
    def num_tokens(self) -> int:
        """Training targets per epoch (retrieval), or interactions per epoch (feedback windows:
        each gives one item and one action token)."""
        return int((self.ends - self.starts - (1 if self.labels is None else 0)).sum())

    def __len__(self) -> int:
        return -(-self.num_users // self.batch_size)

    def epoch(self, seed: int, epoch: int, shard: tuple[int, int] = (0, 1)) -> Iterator[TrainBatch]:
        """Batches of one epoch; ``shard`` = (rank, world size) yields this rank's share of each
        global batch (see :func:`shard_rows`)."""
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
        for rows in shard_rows(batches, *shard):
            if self.labels is not None:
                yield self._feedback(rows)
            else:
                yield self._packed(rows) if self.pack else self._batch(rows)

    def _feedback(self, rows: np.ndarray) -> FeedbackBatch:
        s, e = self.starts[rows], self.ends[rows]
        N = int((e - s).max())
        ts = None if self.data.timestamps is None else torch.from_numpy(_pad_rows(self.data.timestamps, s, e, N))
        items = torch.from_numpy(_pad_rows(self.data.items, s, e, N))
        return FeedbackBatch(items, torch.from_numpy(pad_rows_2d(self.labels, s, e, N)), ts)

    def _packed(self, rows: np.ndarray) -> TrainBatch:
        """The same users as :meth:`_batch`, several per row."""
        s, e = self.starts[rows], self.ends[rows]
        n = e - s - 1  # inputs per window
        groups = pack_rows(n, int(n.max()))
        N = int(n.max())
        items, targets, segments = (np.zeros((len(groups), N), dtype=np.int64) for _ in range(3))
        has_ts = self.data.timestamps is not None
        ts, qts = (np.zeros((len(groups), N), dtype=np.int64) for _ in range(2))
        for r, group in enumerate(groups):
            col = 0
            for seg, i in enumerate(group, start=1):
                a, b, k = s[i], e[i], n[i]
                items[r, col : col + k], targets[r, col : col + k] = self.data.items[a : b - 1], self.data.items[a + 1 : b]
                if has_ts:
                    ts[r, col : col + k], qts[r, col : col + k] = self.data.timestamps[a : b - 1], self.data.timestamps[a + 1 : b]
                segments[r, col : col + k] = seg
                col += k
        t = (torch.from_numpy(ts), torch.from_numpy(qts)) if has_ts else (None, None)
        return TrainBatch(torch.from_numpy(items), torch.from_numpy(targets), *t, torch.from_numpy(segments))

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
    holdout: int = 1,
    labels: np.ndarray | None = None,
) -> Iterator[EvalBatch]:
    """Batches for ``split`` in {"valid", "test"} over evaluable users (see :func:`evaluable`).
    ``labels`` [T, A]: feedback per interaction, for the history (models that read it) and the
    held-out block (ranking impressions)."""
    users, target_pos = split_block(data, split, holdout)
    # shortest histories first: batches pad to their longest row, so similar lengths waste less
    order = np.argsort(np.minimum(data.lengths[users], max_seq_len + 2 * holdout), kind="stable")
    users, target_pos = users[order], target_pos[order]
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
        lab = cand_lab = None
        if labels is not None:
            lab = torch.from_numpy(pad_rows_2d(labels, s, t, items.shape[1]))
            cand_lab = torch.from_numpy(pad_rows_2d(labels, t, t + holdout, holdout))
        yield EvalBatch(
            torch.from_numpy(u), torch.from_numpy(items), ts, qt, torch.from_numpy(data.items[t]), torch.from_numpy(exclude), lab,
            torch.from_numpy(_pad_rows(data.items, t, t + holdout, holdout)), cand_lab,
        )


def split_counts(data: SequenceData, holdout: int = 1) -> dict[str, int]:
    n = int(evaluable(data, holdout).sum())
    return {"eval_users": n, "train_only_users": data.num_users - n}
