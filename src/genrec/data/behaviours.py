"""Multi-behaviour sequences: each interaction's behaviour type, which ones are retrieval targets,
and which ones the model reads.

A behaviour is any categorical per-interaction value of the log: the rating level
(``data.behaviour: rating``) or an action column (``data.behaviour: <name>``, e.g. a 0/1/2
click/cart/buy code). ``data.behaviour_values`` lists the vocabulary in order (behaviour ids
1..B; 0 is padding), so a checkpoint maps a request's values the same way training did.

- Models with ``model.behaviour_embedding`` add a learned embedding of the behaviour to each
  history token (the behaviour of an interaction is known once it happened, so position i reads
  behaviours 0..i, never the target's).
- ``data.target_behaviours`` restricts retrieval to those behaviours (HSTU's "next positively
  engaged item"): a training position has a target only when the next interaction has a target
  behaviour, and each user's validation and test targets are their last two such interactions
  (:mod:`genrec.data.splits`); users need three of them to be evaluated.
- ``data.read_behaviours: targets`` makes the model read only the target-behaviour interactions
  (the positives-only baseline). The evaluated users, their targets and the items excluded from
  the ranking (``eval.exclude_history`` full or targets: read or not) do not change, so the two
  are compared on exactly the same ranking problem.

Nothing here changes the prepared data on disk: behaviours are derived in memory from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from genrec.data.prepare import SequenceData
from genrec.errors import DataFormatError


@dataclass(frozen=True)
class Behaviours:
    """Per-interaction behaviour facts, aligned with ``SequenceData.items`` [T]."""

    ids: np.ndarray
    """[T] int64 behaviour id 1..num of each interaction."""
    num: int
    """B, the size of the behaviour vocabulary."""
    targets: np.ndarray | None
    """[T] bool: the interaction may be a retrieval target (None: every one may)."""
    reads: np.ndarray | None
    """[T] bool: the model reads the interaction (None: it reads every one)."""
    description: str
    """For the protocol, e.g. ``behaviour = rating in [1, 2, 3, 4, 5]; targets: rating in [4, 5]``."""


def behaviour_values(data: SequenceData, column: str) -> np.ndarray:
    """[T] the raw behaviour value of each interaction (rating or an action column's value)."""
    origin = data.stats.get("source", "the data")
    if column == "rating":
        if data.ratings is None:
            raise DataFormatError(f"{origin}: data.behaviour=rating, but the data has no ratings")
        if np.isnan(data.ratings).any():
            raise DataFormatError(f"{origin}: {int(np.isnan(data.ratings).sum())} interactions have no rating; "
                                  "data.behaviour=rating needs one per interaction")
        return data.ratings
    if column not in data.action_names:
        raise DataFormatError(f"{origin}: data.behaviour={column!r} is neither 'rating' nor an action column of the data "
                              f"(it has {list(data.action_names)}; see data.action_columns)")
    return data.actions[:, data.action_names.index(column)]


def with_behaviours(data: SequenceData, data_cfg) -> SequenceData:
    """``data`` with its :class:`Behaviours` set from ``data_cfg`` (unchanged when
    ``data.behaviour`` is empty, or when they are already set)."""
    if data.behaviours is not None:
        return data
    if data_cfg.domains:  # the row's own domain is its target behaviour (genrec.data.domains)
        from genrec.data.domains import domain_behaviours

        return dataclasses.replace(data, behaviours=domain_behaviours(data))
    if not data_cfg.behaviour:
        return data
    # compared as float32, the precision action columns are stored in (0.1 in YAML is 0.1 in the file)
    values = behaviour_values(data, data_cfg.behaviour).astype(np.float32)
    vocab = np.asarray(data_cfg.behaviour_values, dtype=np.float32)
    order = np.argsort(vocab, kind="stable")
    pos = np.clip(np.searchsorted(vocab[order], values), 0, len(vocab) - 1)
    known = vocab[order][pos] == values
    if not known.all():
        unknown = sorted(set(values[~known].tolist()))
        raise DataFormatError(f"{data.stats.get('source', 'the data')}: {int((~known).sum())} interactions have a "
                              f"{data_cfg.behaviour} value outside data.behaviour_values={list(data_cfg.behaviour_values)}: "
                              f"{unknown[:10]}")
    ids = order[pos].astype(np.int64) + 1  # [T] 1..B in the listed order
    targets = np.isin(values, np.asarray(data_cfg.target_behaviours, dtype=np.float32)) if data_cfg.target_behaviours else None
    reads = targets if data_cfg.read_behaviours == "targets" else None
    desc = f"behaviour = {data_cfg.behaviour} in {list(data_cfg.behaviour_values)}"
    if targets is not None:
        desc += f"; retrieval targets: {data_cfg.behaviour} in {list(data_cfg.target_behaviours)} ({targets.mean():.1%} of interactions)"
    desc += "; the model reads " + ("target-behaviour interactions only" if reads is not None else "every interaction")
    return dataclasses.replace(data, behaviours=Behaviours(ids, len(vocab), targets, reads, desc))

