"""Raw log -> canonical on-disk form, and back into memory.

A prepared dataset is a folder holding

- ``interactions.parquet``: user_idx, item_idx, timestamp, rating (+ ``action.<name>`` columns) —
  sorted by user, then time; the sort is stable, so ties keep file order;
- ``sequences.parquet``: one row per user: user_idx, items, timestamps, ratings and action lists
  (timestamps/ratings/actions only where the source has them);
- ``users.parquet`` / ``items.parquet``: idx -> raw id (item idx 0 is padding, never stored);
- ``stats.json``: counts, filters applied, source file, whether timestamps exist, and what the
  input checks found (rows with an empty id, dropped; duplicate rows and out-of-order times, kept).

Folders are named ``<data>-<settings key>-<content key>``: the settings key hashes everything in
the data config that shapes the result; the content key is the registered file's published digest
(so its prepared copy is found without the raw file) or, for other files, their path, size and
mtime. When the raw file is gone, the newest copy under the settings key is used, so a checkpoint
evaluates without its raw data. Folders are written to a temporary name and renamed into place,
so an interrupted preparation never leaves a half-written dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.errors import DataFormatError
from genrec.data.download import DATASETS, DatasetSpec, cache_root, fetch, locate
from genrec.data.loaders import ACTION_PREFIX, read_interactions

if TYPE_CHECKING:
    from genrec.data.behaviours import Behaviours

PREPARE_VERSION = 3


@dataclass
class SequenceData:
    """Per-user time-ordered sequences as flat arrays: user u's items are
    ``items[offsets[u]:offsets[u+1]]`` (ids 1..num_items)."""

    offsets: np.ndarray  # [U+1] int64
    items: np.ndarray  # [T] int64
    timestamps: np.ndarray | None  # [T] int64, None when the source has no times
    item_ids: np.ndarray  # [I] raw id (str) of item idx 1..I
    user_ids: np.ndarray  # [U] raw id (str)
    stats: dict
    ratings: np.ndarray | None = None  # [T] float64 (NaN where a row has none), None when no row has one
    actions: np.ndarray | None = None  # [T, A] float32 action signals (clicks, likes, watch time, ...)
    action_names: tuple[str, ...] = ()  # the A action column names
    behaviours: Behaviours | None = None  # behaviour types, targets and reads (set in memory by genrec.data.behaviours)
    user_tokens: np.ndarray | None = None  # [U, M] attribute token ids per user, 0 = padding (set in memory by genrec.data.user_features)
    user_vocabulary: tuple[str, ...] = ()  # user attribute token id k -> user_vocabulary[k - 1]
    user_feature_stats: dict | None = None  # where the user attributes came from and how many users have any

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _filter_counts(table: pa.Table, min_user: int, min_item: int, iterative: bool) -> pa.Table:
    while True:
        before = table.num_rows
        for col, minimum in (("user", min_user), ("item", min_item)):
            if minimum > 1:
                counts = pc.value_counts(table[col]).flatten()  # struct -> values, counts
                keep_vals = pc.filter(counts[0], pc.greater_equal(counts[1], minimum))
                table = table.filter(pc.is_in(table[col], value_set=keep_vals))
        if not iterative or table.num_rows == before:
            return table


def _index(col: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    uniq = pc.unique(col)  # first-appearance order
    return pc.index_in(col, value_set=uniq).to_numpy().astype(np.int64), uniq


def _input_checks(table: pa.Table, has_ts: bool) -> dict:
    """What a log's rows say about its quality (rows with empty ids are already dropped):
    duplicate rows (every column equal; None without timestamps, where repeats are legitimate)
    and rows earlier than the same user's previous row in file order."""
    if not has_ts:
        return {"duplicate_rows": None, "out_of_order_timestamps": None}
    keys = [c for c in table.column_names if c != "row"]
    duplicates = table.num_rows - table.group_by(keys).aggregate([]).num_rows
    user = pc.dictionary_encode(table["user"]).combine_chunks().indices.to_numpy()
    order = np.argsort(user, kind="stable")  # each user's rows, in file order
    u, ts = user[order], table["timestamp"].to_numpy()[order]
    out_of_order = int(np.sum((u[1:] == u[:-1]) & (ts[1:] < ts[:-1])))
    return {"duplicate_rows": int(duplicates), "out_of_order_timestamps": out_of_order}


def build_sequences(table: pa.Table, min_user: int = 0, min_item: int = 0, kcore: bool = False, raw_integer_ids: bool = False, origin: str = "") -> tuple[pa.Table, SequenceData]:
    """Drop rows with an empty user or item id, filter, index and time-sort a standard interaction
    table. Returns (interactions, sequences)."""
    raw_rows = table.num_rows
    empty = pc.or_kleene(*(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(table[c]), ""), True) for c in ("user", "item")))
    table = table.filter(pc.invert(empty))
    if table.num_rows == 0:
        raise DataFormatError(f"{origin}: no interactions" + (f" ({raw_rows} rows, all with an empty user or item id)" if raw_rows else ""))
    n_ts_null = table["timestamp"].null_count
    if 0 < n_ts_null < table.num_rows:
        raise DataFormatError(f"{origin}: {n_ts_null} of {table.num_rows} rows have no timestamp")
    has_ts = n_ts_null == 0
    table = table.append_column("row", pa.array(np.arange(table.num_rows)))
    checks = {"empty_id_rows": raw_rows - table.num_rows, **_input_checks(table, has_ts)}
    table = _filter_counts(table, min_user, min_item, kcore)
    if table.num_rows == 0:
        raise DataFormatError(f"{origin}: no interactions left after filtering (min_user_count={min_user}, min_item_count={min_item})")
    user_idx, user_ids = _index(table["user"])
    if raw_integer_ids:
        try:
            item_idx = pc.cast(table["item"], pa.int64()).to_numpy()
        except pa.ArrowInvalid:
            raise DataFormatError(f"{origin}: data.raw_integer_ids needs integer item ids") from None
        if item_idx.min() < 1:
            raise DataFormatError(f"{origin}: data.raw_integer_ids needs item ids >= 1")
        item_ids = pa.array([str(i) for i in range(1, int(item_idx.max()) + 1)])
    else:
        idx, item_ids = _index(table["item"])
        item_idx = idx + 1  # 0 is padding
    ts = table["timestamp"].to_numpy(zero_copy_only=False) if has_ts else None
    order = np.lexsort((table["row"].to_numpy(), ts if has_ts else np.zeros(len(user_idx)), user_idx))
    user_idx, item_idx = user_idx[order], item_idx[order]
    ts = ts[order] if has_ts else None
    take = pa.array(order)
    rating = table["rating"].take(take)
    action_names = tuple(c[len(ACTION_PREFIX):] for c in table.column_names if c.startswith(ACTION_PREFIX))
    action_cols = {ACTION_PREFIX + a: table[ACTION_PREFIX + a].take(take) for a in action_names}
    for name, col in action_cols.items():
        if col.null_count:
            raise DataFormatError(f"{origin}: action column {name[len(ACTION_PREFIX):]!r} has {col.null_count} empty values")
    counts = np.bincount(user_idx, minlength=len(user_ids))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    interactions = pa.table({
        "user_idx": pa.array(user_idx), "item_idx": pa.array(item_idx),
        "timestamp": pa.array(ts, pa.int64()) if has_ts else pa.nulls(len(order), pa.int64()), "rating": rating,
        **action_cols,
    })
    lengths = counts
    stats = {
        "source": origin, "raw_interactions": raw_rows, "interactions": int(len(order)),
        "users": int(len(user_ids)), "items": int(len(item_ids)), "has_timestamps": has_ts,
        "filter": {"min_user_count": min_user, "min_item_count": min_item, "iterative_kcore": kcore},
        "raw_integer_ids": raw_integer_ids,
        "has_ratings": rating.null_count < len(order), "rows_without_rating": int(rating.null_count),
        "actions": list(action_names),
        "sequence_length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        **checks,
    }
    ratings = rating.to_numpy(zero_copy_only=False).astype(np.float64) if rating.null_count < len(order) else None
    actions = np.stack([c.to_numpy(zero_copy_only=False) for c in action_cols.values()], 1).astype(np.float32) if action_names else None
    data = SequenceData(
        offsets, item_idx, ts, np.asarray(item_ids.to_pylist(), dtype=object), np.asarray(user_ids.to_pylist(), dtype=object),
        stats, ratings, actions, action_names,
    )
    return interactions, data


def _write(folder: Path, interactions: pa.Table, data: SequenceData) -> None:
    pq.write_table(interactions, folder / "interactions.parquet")
    offs = pa.array(data.offsets.astype(np.int64))
    seq_cols = {"user_idx": pa.array(np.arange(data.num_users)), "items": pa.LargeListArray.from_arrays(offs, pa.array(data.items))}
    if data.timestamps is not None:
        seq_cols["timestamps"] = pa.LargeListArray.from_arrays(offs, pa.array(data.timestamps))
    if data.ratings is not None:
        seq_cols["ratings"] = pa.LargeListArray.from_arrays(offs, pa.array(data.ratings, from_pandas=True))
    for a, name in enumerate(data.action_names):
        seq_cols[ACTION_PREFIX + name] = pa.LargeListArray.from_arrays(offs, pa.array(data.actions[:, a]))
    pq.write_table(pa.table(seq_cols), folder / "sequences.parquet")
    pq.write_table(pa.table({"idx": np.arange(data.num_users), "raw_id": pa.array(list(data.user_ids), pa.string())}), folder / "users.parquet")
    pq.write_table(pa.table({"idx": np.arange(1, data.num_items + 1), "raw_id": pa.array(list(data.item_ids), pa.string())}), folder / "items.parquet")
    (folder / "stats.json").write_text(json.dumps(data.stats, indent=2))


def load_prepared(folder: str | Path) -> SequenceData:
    folder = Path(folder)
    seq = pq.read_table(folder / "sequences.parquet")
    items_col = seq["items"].combine_chunks()
    offsets = items_col.offsets.to_numpy().astype(np.int64)
    def flat(col: str) -> np.ndarray | None:
        return seq[col].combine_chunks().values.to_numpy(zero_copy_only=False) if col in seq.column_names else None

    ts = flat("timestamps")
    stats = json.loads((folder / "stats.json").read_text())
    names = tuple(stats.get("actions", []))
    ratings = flat("ratings")
    return SequenceData(
        offsets=offsets - offsets[0], items=items_col.values.to_numpy().astype(np.int64), timestamps=ts,
        item_ids=np.asarray(pq.read_table(folder / "items.parquet")["raw_id"].to_pylist(), dtype=object),
        user_ids=np.asarray(pq.read_table(folder / "users.parquet")["raw_id"].to_pylist(), dtype=object),
        stats=stats,
        ratings=None if ratings is None else ratings.astype(np.float64),
        actions=np.stack([flat(ACTION_PREFIX + n) for n in names], 1).astype(np.float32) if names else None,
        action_names=names,
    )


def resolve_spec(data_cfg) -> DatasetSpec | None:
    if data_cfg.dataset == "custom":
        return None
    if data_cfg.dataset not in DATASETS:
        raise DataFormatError(f"data.dataset={data_cfg.dataset!r} is not one of {sorted(DATASETS) + ['custom']}")
    return DATASETS[data_cfg.dataset]


def config_key(obj: object) -> str:
    """A short stable hash of a JSON-able object (names prepared folders)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _settings(data_cfg, spec: DatasetSpec | None) -> dict:
    """Everything in the data config that shapes the prepared data (the file aside)."""
    if spec is None:
        if not data_cfg.source:
            raise DataFormatError("data.dataset=custom needs data.source=PATH, e.g. genrec train configs/custom/hstu.yaml data.source=ratings.csv")
        fmt = data_cfg.format or ("parquet" if str(data_cfg.source).endswith(".parquet") else "csv")
        raw_ids, min_user, min_item = data_cfg.raw_integer_ids, data_cfg.min_user_count or 0, data_cfg.min_item_count or 0
    else:
        fmt = data_cfg.format or spec.format
        raw_ids = data_cfg.raw_integer_ids or spec.raw_integer_ids
        min_user = spec.min_user_count if data_cfg.min_user_count is None else data_cfg.min_user_count
        min_item = spec.min_item_count if data_cfg.min_item_count is None else data_cfg.min_item_count
    return dict(
        v=PREPARE_VERSION, data=spec.name if spec else str(Path(data_cfg.source).resolve()), fmt=fmt,
        columns=data_cfg.columns, actions=data_cfg.action_columns, delim=data_cfg.delimiter, header=data_cfg.has_header,
        min_user=min_user, min_item=min_item, kcore=data_cfg.kcore, raw_ids=raw_ids,
    )


def _custom_file(source: str) -> Path | None:
    path = Path(source)
    if path.is_dir():
        raise DataFormatError(f"data.source={source} is a folder; give the log file itself")
    return path if path.is_file() else None


def _newest(root: Path, stem: str) -> Path | None:
    done = [f.parent for f in root.glob(f"{stem}-*/stats.json")]
    return max(done, key=lambda f: (f / "stats.json").stat().st_mtime) if done else None


def prepare(data_cfg) -> Path:
    """Make sure the dataset described by a :class:`~genrec.config.DataConfig` is prepared; return
    its folder. A prepared copy is found by key (see the module docstring); the raw file is read
    only when there is none, and is not needed when there is one."""
    if data_cfg.domains:  # several logs joined into one (genrec.data.domains)
        from genrec.data.domains import prepare_domains

        return prepare_domains(data_cfg)
    spec = resolve_spec(data_cfg)
    settings = _settings(data_cfg, spec)
    root = cache_root(data_cfg.cache_dir) / "prepared"
    stem = f"{spec.name if spec else Path(data_cfg.source).stem.split('.')[0]}-{config_key(settings)}"
    pinned = spec is not None and data_cfg.verify_checksum and bool(spec.member_digests)
    if pinned and (root / f"{stem}-{config_key(spec.content_digests)}" / "stats.json").exists():
        return root / f"{stem}-{config_key(spec.content_digests)}"
    path = locate(spec, data_cfg.cache_dir, data_cfg.source) if spec else _custom_file(data_cfg.source)
    if path is None and (cached := _newest(root, stem)):
        print(f"genrec: {data_cfg.source or spec.name} is not on this machine; using its prepared copy {cached}", file=sys.stderr)
        return cached
    if spec is None and path is None:
        raise DataFormatError(f"data.source={data_cfg.source}: no such file, and no prepared copy of it in {root}; give your log's path: data.source=PATH")
    if spec is not None:  # verified (once per file), or downloaded when not on this machine
        path = fetch(spec, data_cfg.cache_dir, str(path) if path else None, check=data_cfg.verify_checksum)
    st = path.stat()
    content = spec.content_digests if pinned else {"path": str(path.resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}
    folder = root / f"{stem}-{config_key(content)}"
    if (folder / "stats.json").exists():
        return folder
    fmt = settings["fmt"]
    table = read_interactions(path, fmt, data_cfg.columns, data_cfg.delimiter, data_cfg.has_header, data_cfg.action_columns)
    interactions, data = build_sequences(table, settings["min_user"], settings["min_item"], data_cfg.kcore, settings["raw_ids"], origin=str(path))
    data.stats["format"] = fmt
    _report(data.stats)
    return write_prepared(folder, interactions, data)


def write_prepared(folder: Path, interactions: pa.Table, data: SequenceData) -> Path:
    """Write a prepared dataset folder atomically (a temporary name, renamed into place)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        _write(tmp, interactions, data)
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "stats.json").exists():  # lost a race with another process is fine
            raise
    return folder


def _report(stats: dict) -> None:
    """The input checks of ``stats`` as warnings on stderr (they are also kept in stats.json)."""
    notes = {
        "empty_id_rows": "row(s) with an empty user or item id dropped",
        "duplicate_rows": "duplicate row(s) (same user, item, time and values) kept",
        "out_of_order_timestamps": "row(s) earlier than the same user's previous row in the file "
        "(informational: each user's sequence is sorted by time)",
    }
    for key, text in notes.items():
        if stats.get(key):
            print(f"genrec: warning: {stats['source']}: {stats[key]:,} {text}", file=sys.stderr)
