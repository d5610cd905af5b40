"""Multi-domain data: several logs trained as one model (``data.domains: [beauty-p5, toys-p5]``).

Each domain is prepared on its own (a registered dataset or a log file), then joined:

- users are joined by their raw id (the P5 Amazon files map ids back to reviewer ids, so the
  2,073 users who reviewed both Beauty and Toys meet); items are kept apart: domain d's items
  get the ids after domain d-1's (raw id ``<domain>:<item>``), so each domain is one id range.
  Items whose raw ids match across domains are *not* joined (a shared item would belong to two
  domains' catalogues, which one id range per domain cannot express); how many raw ids match is
  counted in the stats (``shared_raw_item_ids``) and warned about. Beauty and Toys share none of
  their 24,025 ASINs;
- the joint data has one row per (user, domain): the user's interactions in that domain, which
  are the row's retrieval targets, plus as context the user's *training* interactions in every
  other domain (all but the two held out there, so no row ever reads another domain's validation
  or test item). With timestamps in every domain the row is sorted by time; without (the P5
  files have none) the context comes first, in the listed domain order, as its true order
  relative to the row's own items is unknown;
- each interaction carries a domain code (own domain ``d`` or context from domain ``e``: ``D + e``)
  that :func:`domain_behaviours` turns into target behaviours (the row's own domain) and into the
  behaviour ids a model with ``model.behaviour_embedding`` embeds (the domain token);
- evaluation (:mod:`genrec.evaluation.evaluator`) ranks each row's target over its own domain's
  catalogue only, and reports every metric per domain as well.

Cold-domain checks cut a row's own history to its last items (:func:`cold_rows`; a simulation:
the model was trained on those users' earlier items), see ``benchmarks/domains.py``.
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

from genrec.data.download import DATASETS, cache_root
from genrec.data.prepare import SequenceData, config_key, load_prepared, prepare, write_prepared
from genrec.errors import ConfigError

CODE = "domain"
"""The action column holding each interaction's domain code."""


def domain_name(entry: str) -> str:
    """A registered dataset's name, or a log file's stem."""
    return Path(entry).name.removesuffix(".gz").split(".")[0] if ("/" in entry or "." in entry) else entry


def raw_user_ids(data: SequenceData) -> list[str]:
    """Each row's raw user id: merged multi-domain data names its rows ``<domain>:<user>`` (one
    row per user and domain), the user is the part after the domain; other data, the id itself."""
    names = [d["name"] for d in data.stats.get("domains") or []]
    if not names:
        return [str(u) for u in data.user_ids]
    out = []
    for u in map(str, data.user_ids):
        name = u.split(":", 1)[0]
        if name not in names:
            raise ValueError(f"multi-domain data: row {u!r} does not start with a domain name ({names})")
        out.append(u[len(name) + 1 :])
    return out


MERGE_VERSION = 2  # 2: stats count the raw item ids shared across domains


def domain_config(data_cfg, entry: str):
    """The :class:`~genrec.config.DataConfig` of one domain: a registered dataset by name, else a
    log file (columns recognised from its header), with the joint config's cache and checks."""
    from genrec.config import DataConfig

    common = {"cache_dir": data_cfg.cache_dir, "verify_checksum": data_cfg.verify_checksum}
    if entry in DATASETS:
        return DataConfig(dataset=entry, **common)
    return DataConfig(dataset="custom", source=entry, **common)


def prepare_domains(data_cfg) -> Path:
    """Prepare every domain of ``data.domains``, then their join (cached under a key of the
    domains' own prepared folders, so a changed domain makes a new join)."""
    folders = [prepare(domain_config(data_cfg, entry)) for entry in data_cfg.domains]
    names = [domain_name(entry) for entry in data_cfg.domains]
    key = config_key({"v": MERGE_VERSION, "parts": [f.name for f in folders]})
    folder = cache_root(data_cfg.cache_dir) / "prepared" / f"domains-{'+'.join(names)}-{key}"
    if (folder / "stats.json").exists():
        return folder
    data = merge_domains([(name, load_prepared(f)) for name, f in zip(names, folders)])
    return write_prepared(folder, interactions_table(data), data)


def _train_slice(data: SequenceData) -> np.ndarray:
    """[U] end (exclusive) of each user's training interactions (leave-one-out: all but the last
    two for users with >= 3, everything for the others)."""
    ends = data.offsets[1:].copy()
    ends[data.lengths >= 3] -= 2
    return ends


def _pieces(data: SequenceData, u: int, start: int, end: int, base: int, code: int, timed: bool) -> tuple:
    """(items with global ids, codes, timestamps or None) of user ``u``'s interactions [start, end)."""
    ts = data.timestamps[start:end] if timed else None
    return data.items[start:end] + base, np.full(end - start, code), ts


def _row(pieces: list[tuple], timed: bool) -> tuple:
    """One row from its pieces (context first, own last): concatenated, sorted by time when timed
    (stable: at equal times context comes before own)."""
    items, codes = np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])
    if not timed:
        return items, codes, None
    ts = np.concatenate([p[2] for p in pieces])
    order = np.argsort(ts, kind="stable")
    return items[order], codes[order], ts[order]


def merge_domains(parts: list[tuple[str, SequenceData]]) -> SequenceData:
    """One row per (user, domain) over domains ``parts`` [(name, data)] (see the module docstring)."""
    names = [n for n, _ in parts]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.domains names a domain twice: {names}")
    D = len(parts)
    item_base = np.cumsum([0] + [d.num_items for _, d in parts])  # domain d's item idx i -> item_base[d] + i
    timed = all(d.timestamps is not None for _, d in parts)
    where: dict[str, list[tuple[int, int]]] = {}  # raw user -> [(domain, user idx)]
    for d, (_, data) in enumerate(parts):
        for u, raw in enumerate(data.user_ids):
            where.setdefault(str(raw), []).append((d, u))
    train_end = [_train_slice(data) for _, data in parts]
    rows, user_ids, overlap = [], [], [0] * D
    for d, (name, data) in enumerate(parts):
        for u, raw in enumerate(data.user_ids):
            context = [_pieces(parts[o][1], v, parts[o][1].offsets[v], train_end[o][v], item_base[o], D + o, timed)
                       for o, v in where[str(raw)] if o != d]
            overlap[d] += bool(context)
            rows.append(_row([*context, _pieces(data, u, data.offsets[u], data.offsets[u + 1], item_base[d], d, timed)], timed))
            user_ids.append(f"{name}:{raw}")
    lengths = [len(r[0]) for r in rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    item_ids = np.asarray([f"{name}:{raw}" for name, data in parts for raw in data.item_ids], dtype=object)
    domains_of = collections.Counter(raw for _, data in parts for raw in set(map(str, data.item_ids)))
    shared = sum(n > 1 for n in domains_of.values())
    if shared:
        warnings.warn(f"data.domains {names}: {shared} raw item id(s) occur in more than one domain; they are kept as "
                      f"separate items, one per domain (items are never joined across domains)", stacklevel=2)
    stats = {
        "source": "domains " + " + ".join(names),
        "domains": [
            {"name": name, "first_item": int(item_base[d] + 1), "end_item": int(item_base[d + 1] + 1), "users": int(data.num_users),
             "interactions": int(len(data.items)), "users_in_other_domains": overlap[d], "source": data.stats.get("source")}
            for d, (name, data) in enumerate(parts)
        ],
        "shared_raw_item_ids": shared, "actions": [CODE], "users": len(user_ids), "items": int(item_base[-1]), "interactions": int(offsets[-1]), "has_timestamps": timed,
        "context_order": "by time" if timed else "other domains' training interactions first (no timestamps)",
        "sequence_length": {"min": int(min(lengths)), "mean": float(np.mean(lengths)), "max": int(max(lengths))},
    }
    return SequenceData(
        offsets, np.concatenate([r[0] for r in rows]).astype(np.int64),
        np.concatenate([r[2] for r in rows]).astype(np.int64) if timed else None, item_ids, np.asarray(user_ids, dtype=object),
        stats, actions=np.concatenate([r[1] for r in rows]).astype(np.float32)[:, None], action_names=(CODE,),
    )


def interactions_table(data: SequenceData) -> pa.Table:
    """The canonical interaction table of merged data (what a prepared folder stores beside it)."""
    user = np.repeat(np.arange(data.num_users), data.lengths)
    ts = pa.array(data.timestamps, pa.int64()) if data.timestamps is not None else pa.nulls(len(user), pa.int64())
    return pa.table({"user_idx": pa.array(user), "item_idx": pa.array(data.items), "timestamp": ts,
                     "rating": pa.nulls(len(user), pa.float64()), f"action.{CODE}": pa.array(data.actions[:, 0])})


def domain_codes(data: SequenceData) -> np.ndarray:
    """[T] int domain code of each interaction of merged data (own domain d, context D + e)."""
    if "domains" not in data.stats or CODE not in data.action_names:
        raise ConfigError("this data is not multi-domain (data.domains)")
    return data.actions[:, data.action_names.index(CODE)].astype(np.int64)


def domain_behaviours(data: SequenceData):
    """Target behaviours of merged data: a row's own-domain interactions are its targets; the
    behaviour id (own or context x domain) is what ``model.behaviour_embedding`` embeds."""
    from genrec.data.behaviours import Behaviours

    codes = domain_codes(data)
    D = len(data.stats["domains"])
    names = [d["name"] for d in data.stats["domains"]]
    desc = (f"domains {names}: one row per (user, domain), targets = the row's own domain, context = the user's training "
            f"interactions in the other domains ({data.stats['context_order']}); behaviour id = own/context x domain ({2 * D})")
    return Behaviours(codes + 1, 2 * D, codes < D, None, desc)


def rows_with_context(data: SequenceData) -> np.ndarray:
    """[U] bool: rows of merged data whose user is in another domain too (the row reads context)."""
    codes = domain_codes(data)
    context = np.concatenate([[0], np.cumsum(codes >= len(data.stats["domains"]))])
    return context[data.offsets[1:]] > context[data.offsets[:-1]]


def cold_rows(data: SequenceData, keep: int = 2, rows: np.ndarray | None = None, context: bool = True) -> SequenceData:
    """The ``rows`` [U] bool of merged data (default: those with context), cut to a short history
    in the row's domain: the context (unless ``context=False``), the row's last ``keep`` own
    interactions before its test target, and the test target (so the test split asks for the next
    item after ``keep``). A simulation of a user new to the domain, not true cold start: the model
    was trained on these users' earlier items in the domain. The validation split of the result is
    not meaningful; evaluate ``test`` only."""
    if keep < 2:
        raise ValueError(f"cold_rows keep={keep}: a row needs 2 own items before its test target to have a validation one")
    note = f"users in several domains, own history cut to the last {keep}" + ("" if context else ", context dropped")
    return _cut(data, rows, keep, context, ("cold_rows", note))


def without_context(data: SequenceData, rows: np.ndarray | None = None) -> SequenceData:
    """The ``rows`` [U] bool of merged data (default: those with context) with their context
    dropped: each row's own-domain interactions only, as a single-domain model reads them. A
    diagnostic: a joint model evaluated on both shows what reading the other domains adds."""
    return _cut(data, rows, None, False, ("without_context", "users in several domains, context dropped"))


def _cut(data: SequenceData, rows: np.ndarray | None, keep: int | None, context: bool, note: tuple[str, str]) -> SequenceData:
    """Rows ``rows`` (default: those with context) keeping their context when ``context``, and
    their last ``keep`` own interactions before the test target plus that target (rows with fewer
    than ``keep`` + 1 own items are left out), or every own interaction when ``keep`` is None.
    ``note`` = (stats key, what was done)."""
    codes = domain_codes(data)
    D = len(data.stats["domains"])
    own = codes < D
    chosen = rows_with_context(data) if rows is None else rows
    keep_mask = np.zeros(len(data.items), dtype=bool)
    picked = []
    for u in np.flatnonzero(chosen):
        s, e = data.offsets[u], data.offsets[u + 1]
        own_pos = s + np.flatnonzero(own[s:e])
        if keep is not None and len(own_pos) < keep + 1:
            continue
        last = own_pos[-1]
        keep_mask[s:e] = ~own[s:e] if context else False
        keep_mask[own_pos if keep is None else own_pos[-(keep + 1):]] = True
        keep_mask[last + 1 : e] = False  # nothing after the test target
        picked.append(u)
    rows = np.asarray(picked, dtype=np.int64)
    lengths = np.asarray([keep_mask[data.offsets[u] : data.offsets[u + 1]].sum() for u in rows], dtype=np.int64)
    take = np.concatenate([np.arange(data.offsets[u], data.offsets[u + 1])[keep_mask[data.offsets[u] : data.offsets[u + 1]]]
                           for u in rows]) if len(rows) else np.zeros(0, dtype=np.int64)
    pick = lambda a: None if a is None else a[take]  # noqa: E731
    return dataclasses.replace(
        data, offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), items=data.items[take],
        timestamps=pick(data.timestamps), user_ids=data.user_ids[rows], ratings=pick(data.ratings), actions=pick(data.actions),
        behaviours=None, stats={**data.stats, note[0]: note[1]},
    )
