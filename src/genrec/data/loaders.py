"""Readers for raw interaction logs, each in its real upstream format.

Every reader returns an Arrow table with columns ``user`` (string), ``item`` (string),
``timestamp`` (int64 seconds, null when the format has none) and ``rating`` (float64, nullable),
rows in file order; generic CSV/Parquet logs may add numeric action columns (``action.<name>``,
float64: clicks, likes, watch time, ...) named in ``data.action_columns``. Gzipped inputs (``*.gz``) are read directly. Parsing runs columnar (pyarrow);
when it fails, the file is re-scanned line by line to name the first bad line.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genrec.errors import DataFormatError

SCHEMA = pa.schema([("user", pa.string()), ("item", pa.string()), ("timestamp", pa.int64()), ("rating", pa.float64())])


def open_text(path: Path) -> io.TextIOBase:
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            yield lineno, line.rstrip("\r\n")


def _check_nonempty(path: Path) -> None:
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    with (gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")) as f:
        if not f.read(1):
            raise DataFormatError(f"{path}: file is empty (no interactions)")


def _locate(path: Path, check: Callable[[str], str | None], skip_header: bool, fallback: Exception) -> DataFormatError:
    """Scan lines with ``check`` (returns a reason or None) and build an error naming the first bad one."""
    for lineno, line in _lines(path):
        if (skip_header and lineno == 1) or not line.strip():
            continue
        reason = check(line)
        if reason:
            return DataFormatError(f"{path}:{lineno}: {reason}: {line[:200]!r}")
    return DataFormatError(f"{path}: {fallback}")


def _field_checker(sep: str, n_fields: int, names: list[str], numeric: dict[int, type]) -> Callable[[str], str | None]:
    def check(line: str) -> str | None:
        parts = line.split(sep)
        if len(parts) < n_fields:
            return f"expected {n_fields} fields ({', '.join(names)}) separated by {sep!r}, got {len(parts)}"
        for idx, kind in numeric.items():
            try:
                kind(parts[idx])
            except ValueError:
                return f"field {names[idx]!r} = {parts[idx]!r} is not a number"
        return None

    return check


ACTION_PREFIX = "action."


def _standardise(
    table: pa.Table, user: str, item: str, timestamp: str | None, rating: str | None, actions: dict[str, str] | None = None
) -> pa.Table:
    """Standard columns (+ ``action.<name>`` float64 for each ``actions`` name -> source column)."""
    n = table.num_rows
    ts = table[timestamp].cast(pa.int64()) if timestamp else pa.nulls(n, pa.int64())
    rt = table[rating].cast(pa.float64()) if rating else pa.nulls(n, pa.float64())
    out = pa.table([table[user].cast(pa.string()), table[item].cast(pa.string()), ts, rt], schema=SCHEMA)
    for name, col in (actions or {}).items():
        out = out.append_column(ACTION_PREFIX + name, table[col].cast(pa.float64()))
    return out


def _read_delimited(
    path: Path, sep: str, names: list[str], numeric: dict[int, type], header: bool, stride: int = 1, quoted: bool = False
) -> pa.Table:
    """Read a headerless (or header-skipped) delimited file whose fields are ``names``.
    ``stride`` > 1 reads multi-character separators such as ``::`` as runs of one character."""
    _check_nonempty(path)
    raw_names = [f"f{i}" for i in range((len(names) - 1) * stride + 1)]
    types = {f"f{i * stride}": (pa.string() if i not in numeric else (pa.int64() if numeric[i] is int else pa.float64())) for i in range(len(names))}
    try:
        table = pacsv.read_csv(
            pa.input_stream(str(path), compression="detect"),
            read_options=pacsv.ReadOptions(column_names=raw_names, skip_rows=1 if header else 0),
            parse_options=pacsv.ParseOptions(delimiter=sep[0], quote_char='"' if quoted else False),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(types)),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _locate(path, _field_checker(sep, len(names), names, numeric), header, exc) from None
    return table.rename_columns(names)


def read_movielens_100k(path: Path) -> pa.Table:
    """``u.data``: user TAB item TAB rating TAB unix-seconds."""
    t = _read_delimited(path, "\t", ["user", "item", "rating", "timestamp"], {2: float, 3: int}, header=False)
    return _standardise(t, "user", "item", "timestamp", "rating")


def read_movielens_1m(path: Path) -> pa.Table:
    """``ratings.dat``: UserID::MovieID::Rating::Timestamp."""
    t = _read_delimited(path, "::", ["user", "item", "rating", "timestamp"], {2: float, 3: int}, header=False, stride=2)
    return _standardise(t, "user", "item", "timestamp", "rating")


def read_movielens_20m(path: Path) -> pa.Table:
    """``ratings.csv``: header ``userId,movieId,rating,timestamp``."""
    t = _read_delimited(path, ",", ["user", "item", "rating", "timestamp"], {2: float, 3: int}, header=True)
    return _standardise(t, "user", "item", "timestamp", "rating")


def read_amazon_ratings_csv(path: Path) -> pa.Table:
    """Amazon 2014 ``ratings_<Category>.csv``: user,item,rating,unix-seconds (no header)."""
    t = _read_delimited(path, ",", ["user", "item", "rating", "timestamp"], {2: float, 3: int}, header=False)
    return _standardise(t, "user", "item", "timestamp", "rating")


def read_amazon_reviews_json(path: Path) -> pa.Table:
    """Amazon 2014 review JSON lines: ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``."""
    _check_nonempty(path)
    users, items, times, ratings = [], [], [], []
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            users.append(str(rec["reviewerID"]))
            items.append(str(rec["asin"]))
            times.append(int(rec["unixReviewTime"]))
            ratings.append(float(rec["overall"]) if rec.get("overall") is not None else None)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{lineno}: not valid JSON ({exc.msg}): {line[:200]!r}") from None
        except KeyError as exc:
            raise DataFormatError(f"{path}:{lineno}: missing field {exc.args[0]!r}: {line[:200]!r}") from None
        except (TypeError, ValueError):
            raise DataFormatError(f"{path}:{lineno}: non-numeric unixReviewTime or overall: {line[:200]!r}") from None
    return pa.table([users, items, times, ratings], schema=SCHEMA)


def read_sequence_file(path: Path) -> pa.Table:
    """S3-Rec style 5-core sequences: ``user item item ...`` per line, items in time order.
    No timestamps: order is the line's order (the table keeps it as file order)."""
    _check_nonempty(path)
    users: list[str] = []
    items: list[str] = []
    for lineno, line in _lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DataFormatError(f"{path}:{lineno}: expected 'user item [item ...]', got {line[:200]!r}")
        users.extend([parts[0]] * (len(parts) - 1))
        items.extend(parts[1:])
    n = len(users)
    return pa.table([users, items, pa.nulls(n, pa.int64()), pa.nulls(n, pa.float64())], schema=SCHEMA)


def read_generic(
    path: Path, columns: dict[str, str], delimiter: str = ",", has_header: bool = True, action_columns: list[str] | None = None
) -> pa.Table:
    """A CSV or Parquet log with a column mapping ``{user, item[, timestamp, rating]}`` -> names,
    plus numeric action columns (kept under their own names, as ``action.<name>``)."""
    for key in ("user", "item"):
        if key not in columns:
            raise DataFormatError(f"{path}: data.columns must map {key!r} to a column name")
    actions = {name: name for name in action_columns or []}
    if str(path).endswith(".parquet"):
        table = pq.read_table(path)
        missing = [c for c in [*columns.values(), *actions] if c not in table.column_names]
        if missing:
            raise DataFormatError(f"{path}: missing column(s) {missing}; has {table.column_names}")
        if table.num_rows == 0:
            raise DataFormatError(f"{path}: file is empty (no interactions)")
        ts = table[columns["timestamp"]] if "timestamp" in columns else None
        if ts is not None and not pa.types.is_integer(ts.type):
            if pa.types.is_timestamp(ts.type):
                table = table.set_column(table.column_names.index(columns["timestamp"]), columns["timestamp"], pc.cast(pc.cast(ts, pa.timestamp("s")), pa.int64()))
            else:
                raise DataFormatError(f"{path}: timestamp column {columns['timestamp']!r} has type {ts.type}, expected integer seconds")
        return _standardise(table, columns["user"], columns["item"], columns.get("timestamp"), columns.get("rating"), actions)
    _check_nonempty(path)
    with open_text(path) as f:
        first = f.readline().rstrip("\r\n").split(delimiter)
    if has_header:
        missing = [c for c in [*columns.values(), *actions] if c not in first]
        if missing:
            raise DataFormatError(f"{path}:1: missing column(s) {missing} in header {first}")
        idx = {key: first.index(col) for key, col in columns.items()}
        idx.update({ACTION_PREFIX + name: first.index(name) for name in actions})
    else:
        if actions:
            raise DataFormatError(f"{path}: data.action_columns needs a header line naming the columns")
        if not all(c.isdigit() for c in columns.values()):
            raise DataFormatError(f"{path}: without a header, data.columns must give column positions (0, 1, ...)")
        idx = {key: int(col) for key, col in columns.items()}
        if max(idx.values()) >= len(first):
            raise DataFormatError(f"{path}:1: column position {max(idx.values())} is beyond the {len(first)} fields of the first line")
    keys_by_pos = {i: key for key, i in idx.items()}
    names = [keys_by_pos.get(i, f"_unused{i}") for i in range(len(first))]
    numeric = {i: (int if key == "timestamp" else float) for key, i in idx.items() if key in ("timestamp", "rating") or key.startswith(ACTION_PREFIX)}
    table = _read_delimited(path, delimiter, names, numeric, has_header, quoted=True)
    acts = {name: ACTION_PREFIX + name for name in actions}
    return _standardise(table, "user", "item", "timestamp" if "timestamp" in idx else None, "rating" if "rating" in idx else None, acts)


FORMATS: dict[str, Callable[[Path], pa.Table]] = {
    "movielens-100k": read_movielens_100k,
    "movielens-1m": read_movielens_1m,
    "movielens-20m": read_movielens_20m,
    "amazon-ratings-csv": read_amazon_ratings_csv,
    "amazon-reviews-json": read_amazon_reviews_json,
    "sequences": read_sequence_file,
}
"""Formats with a fixed layout; ``csv`` and ``parquet`` (generic, with ``data.columns``) come on top."""


def read_interactions(
    path: Path, fmt: str, columns: dict[str, str] | None = None, delimiter: str = ",", has_header: bool = True,
    action_columns: list[str] | None = None,
) -> pa.Table:
    """Read ``path`` in format ``fmt`` into the standard interaction table."""
    path = Path(path)
    if fmt in ("csv", "parquet"):
        return read_generic(path, columns or {}, delimiter, has_header, action_columns)
    if action_columns:
        raise DataFormatError(f"data.action_columns applies to csv/parquet logs only, not format {fmt!r}")
    if fmt not in FORMATS:
        raise DataFormatError(f"unknown data.format {fmt!r}; known: {sorted(FORMATS) + ['csv', 'parquet']}")
    return FORMATS[fmt](path)
