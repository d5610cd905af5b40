"""The columns of a generic CSV/Parquet log: which column is which (recognised by common names
when ``data.columns`` does not say), and what their cells mean: times (unix seconds or ISO-8601),
numbers, and the tokens read as missing. Every conversion error names the first bad row, which
the reader turns into a line number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from genrec.errors import DataFormatError

SCHEMA = pa.schema([("user", pa.string()), ("item", pa.string()), ("timestamp", pa.int64()), ("rating", pa.float64())])
"""The standard interaction table every reader returns (plus ``action.<name>`` float64 columns)."""
ACTION_PREFIX = "action."

COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "user": ("userId", "user_id", "user", "userid", "uid", "reviewerID", "customer_id"),
    "item": ("itemId", "item_id", "item", "movieId", "movie_id", "asin", "product_id", "iid"),
    "timestamp": ("timestamp", "ts", "time", "datetime", "date", "unixReviewTime"),
    "rating": ("rating", "ratings", "score", "stars", "overall"),
}
"""Column names recognised (case-insensitively) in a CSV header or Parquet schema when
``data.columns`` is not given. ``user`` and ``item`` must be found; ``timestamp`` and ``rating``
are used when found."""

ITEM_ID_COLUMNS = ("item_id", "item", "id", "movieId", "asin")
"""The item id column of a per-item file (serving metadata, item attributes), first found wins."""

TIME_FORMATS = (
    "unix seconds (an integer, or a decimal such as 1112486027.5) or an ISO-8601 date or date-time "
    "(2015-03-04, 2015-03-04T12:30:00, 2015-03-04 12:30:00.5, with an optional Z or +02:00 offset; "
    "no offset means UTC), one kind for the whole column"
)


def recognise_columns(names: list[str], where: str) -> dict[str, str]:
    """``{user, item[, timestamp, rating]}`` -> column name, found among ``names`` by :data:`COLUMN_NAMES`."""
    found, problems = {}, []
    for key, known in COLUMN_NAMES.items():
        hits = [n for n in names if n.strip().lower() in {k.lower() for k in known}]
        if len(hits) > 1:
            problems.append(f"several {key} columns {hits}")
        elif hits:
            found[key] = hits[0]
        elif key in ("user", "item"):
            problems.append(f"no {key} column")
    if problems:
        example = " ".join(f"data.columns.{k}={found.get(k, 'NAME')}" for k in COLUMN_NAMES if k in found or k in ("user", "item"))
        known = "; ".join(f"{k}: {', '.join(v)}" for k, v in COLUMN_NAMES.items())
        raise DataFormatError(
            f"{where}: cannot tell the columns apart ({'; '.join(problems)}) in {names}. Name them, e.g. {example} "
            f"(recognised names, any case: {known})"
        )
    return found


def _as_string(col: pa.Array) -> pa.Array:
    return col.dictionary_decode().cast(pa.string()) if pa.types.is_dictionary(col.type) else col.cast(pa.string())


MISSING = pa.array(pacsv.ConvertOptions().null_values, pa.string())
"""Cells read as missing in number and time columns (pyarrow's list: "", NA, NULL, nan, ...)."""


def _nulls_for_blank(col: pa.Array) -> pa.Array:
    """Strings stripped of surrounding spaces; missing ones (:data:`MISSING`) null."""
    col = pc.utf8_trim_whitespace(col)
    return pc.if_else(pc.is_in(col, value_set=MISSING), pa.scalar(None, pa.string()), col)


def _first_failure(col: pa.Array, convert: Callable[[pa.Array], pa.Array]) -> int:
    """Index of the first element on which ``convert`` fails (it fails on the whole ``col``)."""
    lo, hi = 0, len(col)  # convert(col[:lo]) works, convert(col[:hi]) fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            convert(col.slice(0, mid))
            lo = mid
        except (pa.ArrowInvalid, ValueError):
            hi = mid
    return hi - 1


class BadValue(ValueError):
    """A value that does not convert: its row (0-based, in file order) and what was expected."""

    def __init__(self, row: int, message: str):
        super().__init__(message)
        self.row = row


def _to_float(col: pa.Array, column: str) -> pa.Array:
    """Numbers (ratings, actions) as float64; missing cells (:data:`MISSING`) null."""
    col = col.dictionary_decode() if pa.types.is_dictionary(col.type) else col
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        return col.cast(pa.float64())
    col = _nulls_for_blank(_as_string(col))
    try:
        return col.cast(pa.float64())
    except pa.ArrowInvalid:
        bad = _first_failure(col, lambda c: c.cast(pa.float64()))
        raise BadValue(bad, f"{column} {col[bad].as_py()!r} is not a number") from None


def _finite_floor(col: pa.Array) -> pa.Array:
    if pc.all(pc.is_finite(col)).as_py() is False:
        raise ValueError("not finite")
    return pc.floor(col).cast(pa.int64())


def _iso_seconds(text: str) -> int:
    t = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)  # Python < 3.11 reads no "Z"
    return math.floor((t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp())


def to_seconds(col: pa.Array, column: str = "timestamp") -> pa.Array:
    """Times as int64 unix seconds: integers as they are, decimals floored, ISO-8601 dates and
    date-times parsed (UTC unless they carry an offset), Arrow timestamps and dates converted.
    Missing cells (:data:`MISSING`) become null. Raises :class:`BadValue` naming the first value
    that is none of these."""
    if pa.types.is_integer(col.type):
        return col.cast(pa.int64())
    if pa.types.is_floating(col.type):
        return _finite_floor(col)
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        return col.cast(pa.timestamp("s", col.type.tz if pa.types.is_timestamp(col.type) else None), safe=False).cast(pa.int64())
    col = _nulls_for_blank(_as_string(col))
    for convert in (lambda c: c.cast(pa.int64()), lambda c: _finite_floor(c.cast(pa.float64())),
                    lambda c: c.cast(pa.timestamp("s")).cast(pa.int64()), lambda c: c.cast(pa.timestamp("s", "UTC")).cast(pa.int64())):
        try:
            return convert(col)
        except (pa.ArrowInvalid, ValueError):
            pass
    first = pc.drop_null(col)[0].as_py()
    if _is_number(first):  # a numeric column with a bad cell
        bad = _first_failure(col, lambda c: _finite_floor(c.cast(pa.float64())))
        raise BadValue(bad, f"{column} {col[bad].as_py()!r} is not unix seconds like the rows before it; expected {TIME_FORMATS}")
    uniq = pc.drop_null(pc.unique(col)).to_pylist()  # ISO-8601: parse each distinct value once
    seconds = []
    for text in uniq:
        try:
            seconds.append(_iso_seconds(text))
        except ValueError:
            bad = pc.index(col, text).as_py()
            raise BadValue(bad, f"{column} {text!r} is not a time genrec reads; expected {TIME_FORMATS}") from None
    return pa.array(seconds, pa.int64()).take(pc.index_in(col, value_set=pa.array(uniq, pa.string())))


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def convert_columns(get: Callable[[str], pa.Array], keys: list[str]) -> pa.Table:
    """The standard table from raw columns (``get(key)``); conversion errors raise :class:`BadValue`."""
    n = len(get("user"))
    ts = to_seconds(get("timestamp")) if "timestamp" in keys else pa.nulls(n, pa.int64())
    user, item = get("user").cast(pa.string()), get("item").cast(pa.string())
    if 0 < ts.null_count < n:  # times on some rows only: name the first (with ids; rows without are dropped later)
        with_ids = pc.invert(pc.or_kleene(*(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(c), ""), True) for c in (user, item))))
        missing = pc.and_(pc.is_null(ts), with_ids)
        if pc.any(missing).as_py():
            raise BadValue(pc.index(missing, True).as_py(), "no timestamp although other rows have one (a log has a time on every row or on none)")
    cols = {
        "user": user, "item": item, "timestamp": ts,
        "rating": _to_float(get("rating"), "rating") if "rating" in keys else pa.nulls(n, pa.float64()),
    }
    out = pa.table(cols, schema=SCHEMA)
    for key in (k for k in keys if k.startswith(ACTION_PREFIX)):
        out = out.append_column(key, _to_float(get(key), f"action column {key[len(ACTION_PREFIX):]!r}"))
    return out
