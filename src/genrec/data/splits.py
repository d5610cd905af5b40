"""Leave-one-out splits, the view of what a model reads, and multi-domain item ranges.

Per user with n >= 3 interactions: items 0..n-3 train, item n-2 is the validation target (history
0..n-3), item n-1 the test target (history 0..n-2). Users with fewer than 3 interactions only
train (as SASRec's reference split). Model selection only ever sees validation targets.

``holdout`` = K > 1 generalises this to blocks (for ranking, where a user needs several held-out
impressions for GAUC): users with n >= 2K + 1 interactions hold out their last K for test and the K
before for validation; the retrieval target of a block is its first item (the next item after the
history), the ranking impressions are all K. K = 1 is exactly the leave-one-out split above.

With target behaviours (multi-behaviour data, :mod:`genrec.data.behaviours`) the held-out items
are each user's last two *target* interactions, a training position has a target only when the
next interaction is one (:func:`target_items`), and the model may read only some interactions
(:func:`read_view`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.data.prepare import SequenceData


def _target_mask(data: SequenceData) -> np.ndarray | None:
    """[T] bool: interactions that may be retrieval targets (None: all; see genrec.data.behaviours)."""
    return None if data.behaviours is None else data.behaviours.targets


def _counts(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """[U+1] running count of ``mask`` at each user's first offset (cumulative, 0-prefixed)."""
    return np.concatenate([[0], np.cumsum(mask)])[offsets]


def evaluable(data: SequenceData, holdout: int = 1) -> np.ndarray:
    """[U] bool: users long enough to hold out a validation and a test block of ``holdout`` items
    (with target behaviours: users with at least three target interactions)."""
    mask = _target_mask(data)
    if mask is None:
        return data.lengths >= 2 * holdout + 1
    if holdout != 1:
        raise ValueError(f"target behaviours hold out one interaction per split (eval.holdout=1), not {holdout}")
    return np.diff(_counts(mask, data.offsets)) >= 3


def _block_start(data: SequenceData, split: str, holdout: int, users: np.ndarray) -> np.ndarray:
    """Offset of the first item of each of ``users``' ``split`` block: the last ``holdout`` items
    (test) and the ``holdout`` before them (valid), or, with target behaviours, the user's last
    (test) and second-to-last (valid) target interaction."""
    back = 2 if split == "valid" else 1
    mask = _target_mask(data)
    if mask is None:
        return data.offsets[1:][users] - holdout * back
    positions = np.flatnonzero(mask)
    return positions[_counts(mask, data.offsets)[1:][users] - back]


def train_end(data: SequenceData, include_valid: bool = False, holdout: int = 1) -> np.ndarray:
    """[U] end offset (exclusive) of each user's training items; ``include_valid`` also trains
    on the validation block (for a refit after model selection; the test block stays out)."""
    ends = data.offsets[1:].copy()
    users = np.flatnonzero(evaluable(data, holdout))
    ends[users] = _block_start(data, "test" if include_valid else "valid", holdout, users)
    return ends


def split_block(data: SequenceData, split: str, holdout: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(evaluated users, offset of the first item of each one's ``split`` block)."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    users = np.flatnonzero(evaluable(data, holdout))
    return users, _block_start(data, split, holdout, users)


@dataclass
class ReadView:
    """The interactions a model reads, as flat arrays with per-user ``offsets`` (every interaction,
    or with ``data.read_behaviours: targets`` only those with a target behaviour). ``at[p]`` is the
    read position of the interaction at data position p (reads before p), so a data range
    [a, b) reads ``items[at[a]:at[b]]``."""

    offsets: np.ndarray  # [U+1]
    items: np.ndarray  # [R]
    targets: np.ndarray  # [R] the item, or 0 where it may not be a retrieval target
    timestamps: np.ndarray | None  # [R]
    behaviours: np.ndarray | None  # [R] behaviour ids
    at: np.ndarray  # [T+1]


def cold_item_ids(num_items: int, fraction: float) -> np.ndarray:
    """The ``data.cold_items`` draw: ``round(fraction x num_items)`` item ids out of 1..num_items,
    sorted; a fixed seed, so every run on one catalogue holds out the same items."""
    count = round(fraction * num_items)
    return np.sort(np.random.default_rng(0).choice(np.arange(1, num_items + 1), size=count, replace=False))


def read_view(data: SequenceData, skip_items: np.ndarray | None = None) -> ReadView:
    """What the model reads of ``data`` (all of it, unless behaviours say otherwise), without the
    interactions with ``skip_items`` (the cold-item check's held-out items, training only)."""
    beh = data.behaviours
    T = len(data.items)
    tgt = target_items(data)
    ids = None if beh is None else beh.ids
    keep = None if beh is None else beh.reads
    if skip_items is not None and len(skip_items):
        kept = ~np.isin(data.items, skip_items)
        keep = kept if keep is None else keep & kept
    if keep is None:
        return ReadView(data.offsets, data.items, tgt, data.timestamps, ids, np.arange(T + 1))
    at = np.concatenate([[0], np.cumsum(keep)])
    pick = lambda a: None if a is None else a[keep]  # noqa: E731
    return ReadView(at[data.offsets], data.items[keep], tgt[keep], pick(data.timestamps), pick(ids), at)


def item_ranges(data: SequenceData, targets: np.ndarray) -> np.ndarray | None:
    """[B, 2] id range [first, end) of the domain of each target item of multi-domain data
    (:mod:`genrec.data.domains`; its catalogue for ranking), or None for single-domain data."""
    if not data.stats.get("domains"):
        return None
    bounds = np.asarray([[d["first_item"], d["end_item"]] for d in data.stats["domains"]])  # [D 2]
    return bounds[domain_of_items(data, targets)]


def domain_of_items(data: SequenceData, items: np.ndarray) -> np.ndarray:
    """[N] domain index of each item id of multi-domain data."""
    ends = np.asarray([d["end_item"] for d in data.stats["domains"]])
    return np.searchsorted(ends, items, side="right")


def target_items(data: SequenceData) -> np.ndarray:
    """[T] each interaction's item where it has a target behaviour, else 0 (data positions)."""
    mask = _target_mask(data)
    return data.items if mask is None else np.where(mask, data.items, 0)


def split_counts(data: SequenceData, holdout: int = 1) -> dict[str, int]:
    n = int(evaluable(data, holdout).sum())
    return {"eval_users": n, "train_only_users": data.num_users - n}
