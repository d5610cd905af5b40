"""Padded batches: the one batching path of every task (the splits are :mod:`genrec.data.splits`).

Training windows (:class:`TrainBatches`) take each user's last ``max_seq_len + 1`` training items:
inputs are all but the last, targets all but the first (a loss at every position; with target
behaviours, only where the next interaction has one). With ``labels`` (ranking and unified tasks) a
window is the user's last ``max_seq_len`` interactions with their feedback instead
(:class:`FeedbackBatch`; the model interleaves item and action tokens). Evaluation batches
(:func:`eval_batches`) carry each evaluated user's history (what the model reads,
:func:`~genrec.data.splits.read_view`), the split's retrieval target, the excluded items, and the
whole held-out block with its feedback (the ranking impressions). Batches are right-padded with 0
to the longest row of the batch; the models' outputs do not depend on that padding. With ``pack``
the same users' windows are instead packed into as few rows as fit (first-fit decreasing, row
length = the batch's longest window) with a segment id per token, so compute follows real tokens:
the step sees exactly the same users and targets as the padded batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from genrec.data.prepare import SequenceData
from genrec.data.splits import ReadView, item_ranges, read_view, split_block, target_items, train_end


@dataclass
class TrainBatch:
    items: torch.Tensor  # [B N] inputs, 0 = padding
    targets: torch.Tensor  # [B N] next item per position, 0 = none
    timestamps: torch.Tensor | None  # [B N]
    query_timestamps: torch.Tensor | None  # [B N] time of the target at each position
    segments: torch.Tensor | None = None  # [B N] packed rows: sequence id of each token (0 = padding)
    behaviours: torch.Tensor | None = None  # [B N] behaviour id of each input (multi-behaviour data), 0 = padding
    user_tokens: torch.Tensor | None = None  # [B 1 M] (packed rows: [B N M]) the user's attribute ids (user side information)

    def to(self, device: torch.device) -> "TrainBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return TrainBatch(*(move(t) for t in vars(self).values()))

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
    behaviours: torch.Tensor | None = None  # [B N] behaviour id of each history item (multi-behaviour data)
    item_range: torch.Tensor | None = None  # [B 2] multi-domain: ids [first, end) of the target's domain, the items ranked
    user_tokens: torch.Tensor | None = None  # [B 1 M] the user's attribute ids (user side information)

    def to(self, device: torch.device | str) -> "EvalBatch":
        return EvalBatch(*(None if t is None else t.to(device) for t in vars(self).values()))


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
        labels: np.ndarray | None = None, skip_items: np.ndarray | None = None,
    ):
        if labels is not None and (pack or bucket_by_length or fraction < 1.0):
            raise ValueError("feedback windows support neither packing, length bucketing nor a data fraction")
        if labels is not None and data.behaviours is not None:
            raise ValueError("feedback windows do not read multi-behaviour data (data.behaviour is for retrieval)")
        if labels is not None and skip_items is not None:
            raise ValueError("feedback windows cannot skip items")
        self.view = r = read_view(data, skip_items)
        ends = r.at[train_end(data, include_valid, holdout)]  # in read positions
        # retrieval: inputs + one more item for the last target; feedback: the interactions themselves
        window, shortest = (max_seq_len + 1, 2) if labels is None else (max_seq_len, 1)
        starts = np.maximum(r.offsets[:-1], ends - window)
        keep = ends - starts >= shortest
        # targets per window (positions 1.. of the window; fewer than its length with target behaviours)
        has_target = np.concatenate([[0], np.cumsum(r.targets != 0)])
        self._window_targets = np.maximum(has_target[ends] - has_target[np.minimum(starts + 1, ends)], 0)
        if labels is None:
            keep &= self._window_targets > 0  # a window without any target trains nothing
        if fraction < 1.0:  # a fixed subset of users, the same for every epoch and on resume
            chosen = np.random.default_rng(seed).permutation(data.num_users)[: max(1, round(fraction * data.num_users))]
            keep &= np.isin(np.arange(data.num_users), chosen)
        self.starts, self.ends, self._window_targets = starts[keep], ends[keep], self._window_targets[keep]
        self.users = np.flatnonzero(keep)  # the user of each window
        self.data, self.batch_size, self.bucket, self.pack = data, batch_size, bucket_by_length, pack
        self.labels = labels

    @property
    def num_users(self) -> int:
        return len(self.starts)

    @property
    def num_tokens(self) -> int:
        """Training targets per epoch (retrieval), or interactions per epoch (feedback windows:
        each gives one item and one action token)."""
        return int((self.ends - self.starts).sum() if self.labels is not None else self._window_targets.sum())

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
        r = self.view
        items, targets, segments, beh = (np.zeros((len(groups), N), dtype=np.int64) for _ in range(4))
        ut = self.data.user_tokens
        users = None if ut is None else np.zeros((len(groups), N, ut.shape[1]), dtype=np.int64)
        has_ts = r.timestamps is not None
        ts, qts = (np.zeros((len(groups), N), dtype=np.int64) for _ in range(2))
        for row, group in enumerate(groups):
            col = 0
            for seg, i in enumerate(group, start=1):
                a, b, k = s[i], e[i], n[i]
                items[row, col : col + k], targets[row, col : col + k] = r.items[a : b - 1], r.targets[a + 1 : b]
                if has_ts:
                    ts[row, col : col + k], qts[row, col : col + k] = r.timestamps[a : b - 1], r.timestamps[a + 1 : b]
                if r.behaviours is not None:
                    beh[row, col : col + k] = r.behaviours[a : b - 1]
                if users is not None:
                    users[row, col : col + k] = ut[self.users[rows[i]]]
                segments[row, col : col + k] = seg
                col += k
        t = (torch.from_numpy(ts), torch.from_numpy(qts)) if has_ts else (None, None)
        return TrainBatch(torch.from_numpy(items), torch.from_numpy(targets), *t, torch.from_numpy(segments),
                          None if r.behaviours is None else torch.from_numpy(beh), None if users is None else torch.from_numpy(users))

    def _batch(self, rows: np.ndarray) -> TrainBatch:
        s, e = self.starts[rows], self.ends[rows]
        N = int((e - s).max()) - 1
        r = self.view
        items = _pad_rows(r.items, s, e - 1, N)
        targets = _pad_rows(r.targets, s + 1, e, N)
        ts = qts = beh = None
        if r.timestamps is not None:
            ts = torch.from_numpy(_pad_rows(r.timestamps, s, e - 1, N))
            qts = torch.from_numpy(_pad_rows(r.timestamps, s + 1, e, N))
        if r.behaviours is not None:
            beh = torch.from_numpy(_pad_rows(r.behaviours, s, e - 1, N))
        return TrainBatch(torch.from_numpy(items), torch.from_numpy(targets), ts, qts, None, beh, _user_tokens(self.data, self.users[rows]))


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
    """Batches for ``split`` in {"valid", "test"} over evaluable users (see :func:`~genrec.data.splits.evaluable`).
    ``labels`` [T, A]: feedback per interaction, for the history (models that read it) and the
    held-out block (ranking impressions)."""
    if labels is not None and data.behaviours is not None:
        raise ValueError("feedback labels and multi-behaviour data do not go together (data.behaviour is for retrieval)")
    users, target_pos = split_block(data, split, holdout)
    # shortest histories first: batches pad to their longest row, so similar lengths waste less
    order = np.argsort(np.minimum(data.lengths[users], max_seq_len + 2 * holdout), kind="stable")
    users, target_pos = users[order], target_pos[order]
    first = data.offsets[:-1][users]
    r = read_view(data)  # the history is what the model reads; exclusions and targets are data positions
    for i in range(0, len(users), batch_size):
        u, t, f = users[i : i + batch_size], target_pos[i : i + batch_size], first[i : i + batch_size]
        e = r.at[t]  # the read history ends just before the target
        s = np.maximum(r.offsets[u], e - max_seq_len)
        items = _pad_rows(r.items, s, e, int((e - s).max()))
        exclude = _excluded(data, r, exclude_history, f, t, s, e)
        ts = qt = beh = None
        if data.timestamps is not None:
            ts = torch.from_numpy(_pad_rows(r.timestamps, s, e, items.shape[1]))
            qt = torch.from_numpy(data.timestamps[t] if query_time == "target" else r.timestamps[e - 1])
        if r.behaviours is not None:
            beh = torch.from_numpy(_pad_rows(r.behaviours, s, e, items.shape[1]))
        lab = cand_lab = None
        if labels is not None:
            lab = torch.from_numpy(pad_rows_2d(labels, s, t, items.shape[1]))
            cand_lab = torch.from_numpy(pad_rows_2d(labels, t, t + holdout, holdout))
        yield EvalBatch(
            torch.from_numpy(u), torch.from_numpy(items), ts, qt, torch.from_numpy(data.items[t]), torch.from_numpy(exclude), lab,
            torch.from_numpy(_pad_rows(data.items, t, t + holdout, holdout)), cand_lab, beh,
            None if (ranges := item_ranges(data, data.items[t])) is None else torch.from_numpy(ranges), _user_tokens(data, u),
        )


def _user_tokens(data: SequenceData, users: np.ndarray) -> torch.Tensor | None:
    """[B, 1, M] attribute token ids of ``users`` (None when the data has no user attributes)."""
    return None if data.user_tokens is None else torch.from_numpy(data.user_tokens[users][:, None, :])


def _excluded(data: SequenceData, r: ReadView, how: str, f, t, s, e) -> np.ndarray:
    """[B E] item ids not ranked (0 = padding) for users whose data rows start at ``f`` with
    targets at ``t``, reading [s, e) of the view: ``full`` every earlier interaction (read or not),
    ``targets`` the earlier target-behaviour ones (an item clicked before may be the one bought
    next), ``input`` the items read, ``none`` nothing."""
    if how == "input":
        return _pad_rows(r.items, s, e, max(int((e - s).max()), 1))
    flat = target_items(data) if how == "targets" else data.items
    start = f if how in ("full", "targets") else t
    return _pad_rows(flat, start, t, max(int((t - start).max()), 1))
