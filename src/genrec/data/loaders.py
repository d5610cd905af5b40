"""Readers for raw interaction logs, each in its real upstream format.

Every reader returns an Arrow table with columns ``user`` (string), ``item`` (string),
``timestamp`` (int64 seconds, null when the format has none) and ``rating`` (float64, nullable),
rows in file order; generic CSV/Parquet logs may add numeric action columns (``action.<name>``,
float64: clicks, likes, watch time, ...) named in ``data.action_columns``. Gzipped inputs
(``*.gz``) are read directly, a UTF-8 byte-order mark is skipped.

Generic logs: columns are recognised by common names unless ``data.columns`` names them; times
may be unix seconds or ISO-8601 (:mod:`genrec.data.columns` says what each cell may hold).

Parsing runs columnar (pyarrow); when it fails, the file is re-scanned by an exact, slow reader
(line by line, or Python's csv module for generic CSVs) to name the first bad line. Every format's
reader sits beside the :data:`FORMATS` registry on purpose: one place to find how a file is read.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genrec.data.columns import ACTION_PREFIX, SCHEMA, BadValue, convert_columns, recognise_columns
from genrec.errors import DataFormatError


def open_text(path: Path, encoding: str = "utf-8-sig") -> io.TextIOBase:
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding=encoding, errors="replace", newline="")
    return open(path, encoding=encoding, errors="replace", newline="")


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


def _standardise(table: pa.Table, user: str, item: str, timestamp: str | None, rating: str | None) -> pa.Table:
    """The standard columns of a fixed-format table."""
    n = table.num_rows
    ts = table[timestamp].cast(pa.int64()) if timestamp else pa.nulls(n, pa.int64())
    rt = table[rating].cast(pa.float64()) if rating else pa.nulls(n, pa.float64())
    return pa.table([table[user].cast(pa.string()), table[item].cast(pa.string()), ts, rt], schema=SCHEMA)


def _read_delimited(
    path: Path, sep: str, names: list[str], numeric: dict[int, type], header: bool, stride: int = 1
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
            parse_options=pacsv.ParseOptions(delimiter=sep[0], quote_char=False),
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


def read_p5_sequences(path: Path) -> pa.Table:
    """P5 sequences (``sequential.txt``: ``user item item ...``, as :func:`read_sequence_file`)
    with the ``datamaps.json`` beside them (``{"id2user": {id: reviewerID}, "id2item": {id: asin}}``):
    the raw ids become the Amazon reviewer ids and ASINs, so logs of several domains join by user."""
    maps_path = next((p for p in (path.parent / "datamaps.json", path.parent / "datamaps.json.gz") if p.exists()), None)
    if maps_path is None:
        raise DataFormatError(f"{path}: format p5-sequences needs the datamaps.json (or .gz) of the same P5 folder beside it")
    with open_text(maps_path) as f:
        try:
            maps = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{maps_path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(maps, dict) or not isinstance(maps.get("id2user"), dict) or not isinstance(maps.get("id2item"), dict):
        raise DataFormatError(f"{maps_path}: expected an object with 'id2user' and 'id2item' maps")
    table = read_sequence_file(path)
    mapped = {}
    for col, key in (("user", "id2user"), ("item", "id2item")):
        ids = table[col].to_pylist()
        missing = sorted({i for i in ids if i not in maps[key]}, key=str)
        if missing:
            raise DataFormatError(f"{maps_path}: {len(missing)} {col} ids of {path} are not in {key}, e.g. {missing[:5]}")
        mapped[col] = pa.array([str(maps[key][i]) for i in ids], pa.string())
    return table.set_column(0, "user", mapped["user"]).set_column(1, "item", mapped["item"])


def _records(path: Path, delimiter: str) -> Iterator[tuple[int, str, list[str]]]:
    """(first line number, raw text, fields) of each CSV record, read by Python's csv module with
    strict quoting: the slow, exact reader behind every line number of an error."""
    with open_text(path) as f:
        pending: list[str] = []

        def lines() -> Iterator[str]:
            for line in f:
                pending.append(line)
                yield line

        reader = csv.reader(lines(), delimiter=delimiter, strict=True)
        start = 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataFormatError(f"{path}:{start}: bad quoting ({exc}): {''.join(pending)[:200]!r}") from None
            yield start, "".join(pending).rstrip("\r\n"), fields
            pending.clear()
            start = reader.line_num + 1


def _data_records(path: Path, delimiter: str, has_header: bool) -> Iterator[tuple[int, str, list[str]]]:
    """The records that are rows of the table (blank lines skipped, as pyarrow does)."""
    for n, (line, text, fields) in enumerate(_records(path, delimiter)):
        if fields and not (has_header and n == 0):
            yield line, text, fields


def _bad_record(path: Path, delimiter: str, has_header: bool, n_fields: int, utf8: bool = False) -> DataFormatError | None:
    """The error for the first record with bad quoting, the wrong number of fields or (``utf8``)
    bytes that are not UTF-8; None when every record is well formed."""
    for line, text, fields in _data_records(path, delimiter, has_header):
        if len(fields) != n_fields:
            return DataFormatError(
                f"{path}:{line}: expected {n_fields} fields separated by {delimiter!r} (as in line 1), got {len(fields)}: {text[:200]!r}"
            )
        if utf8 and "\ufffd" in text:
            return DataFormatError(f"{path}:{line}: not UTF-8 text (save the file as UTF-8): {text[:200]!r}")
    return None


def _line_of_row(path: Path, delimiter: str, has_header: bool, row: int) -> tuple[int, str]:
    line, text, _ = next(itertools.islice(_data_records(path, delimiter, has_header), row, None), (0, "", []))
    return line, text


def _count_lines(path: Path) -> int:
    """Lines in the file (a last line without a newline counts)."""
    n, last = 0, b"\n"
    with (gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")) as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            n, last = n + chunk.count(b"\n"), chunk[-1:]
    return n + (last != b"\n")


def _read_csv(path: Path, delimiter: str, has_header: bool, n_fields: int, types: dict[int, pa.DataType]) -> pa.Table:
    """Columns ``types`` (position -> type) of a delimited file; when a value is not of its type,
    they are read as text (:func:`~genrec.data.columns.convert_columns` names the value).
    Malformed records name the line."""
    names = [f"f{i}" for i in range(n_fields)]

    def read(column_types: dict[int, pa.DataType]) -> pa.Table:
        return pacsv.read_csv(
            pa.input_stream(str(path), compression="detect"),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1 if has_header else 0),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={names[i]: t for i, t in column_types.items()},
                                                 include_columns=[names[i] for i in column_types]),
        )

    try:
        table = read(types)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        try:
            table = read({i: pa.string() for i in types})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise _bad_record(path, delimiter, has_header, n_fields, utf8=True) or DataFormatError(f"{path}: {exc}") from None
    # pyarrow reads an unterminated quote to the end of the file without complaint; a record may
    # legally span lines, so when lines and rows disagree the exact reader decides
    if table.num_rows + has_header != _count_lines(path):
        if error := _bad_record(path, delimiter, has_header, n_fields):
            raise error
    return table


def _columns_of(path: Path, names: list[str], columns: dict[str, str], actions: list[str], has_header: bool) -> dict[str, int]:
    """Standard key (and ``action.<name>``) -> position among ``names``."""
    if not columns:
        if not has_header:
            raise DataFormatError(f"{path}: without a header line, data.columns must give column positions (data.columns.user=0 ...)")
        columns = recognise_columns(names, f"{path}:1")
    for key in ("user", "item"):
        if key not in columns:
            raise DataFormatError(f"{path}: data.columns must map {key!r} to a column name")
    wanted = {**columns, **{ACTION_PREFIX + a: a for a in actions}}
    if has_header:
        missing = [c for c in wanted.values() if c not in names]
        if missing:
            raise DataFormatError(f"{path}:1: missing column(s) {missing} in header {names}")
        return {key: names.index(col) for key, col in wanted.items()}
    if actions:
        raise DataFormatError(f"{path}: data.action_columns needs a header line naming the columns")
    if not all(c.isdigit() for c in columns.values()):
        raise DataFormatError(f"{path}: without a header, data.columns must give column positions (0, 1, ...)")
    idx = {key: int(col) for key, col in columns.items()}
    if max(idx.values()) >= len(names):
        raise DataFormatError(f"{path}:1: column position {max(idx.values())} is beyond the {len(names)} fields of the first line")
    return idx


def read_generic(
    path: Path, columns: dict[str, str], delimiter: str = ",", has_header: bool = True, action_columns: list[str] | None = None
) -> pa.Table:
    """A CSV or Parquet log with a column mapping ``{user, item[, timestamp, rating]}`` -> names
    (recognised by name when empty), plus numeric action columns (kept as ``action.<name>``).
    Cells are read as :mod:`genrec.data.columns` describes."""
    actions = list(action_columns or [])
    if str(path).endswith(".parquet"):
        return _read_parquet(path, columns, actions)
    _check_nonempty(path)
    with open_text(path) as f:  # the first record names the columns (or counts them)
        first = next(csv.reader(f, delimiter=delimiter), [])
    if len(first) == 1 and (other := next((d for d in "\t;| " if d in first[0]), None)):
        flag = "'\\t'" if other == "\t" else repr(other)
        raise DataFormatError(f"{path}:1: one field only when split at {delimiter!r}: {first[0][:100]!r}; set data.delimiter={flag}")
    idx = _columns_of(path, first, columns, actions, has_header)
    types = {i: pa.string() for i in idx.values()}
    types.update({i: pa.int64() if key == "timestamp" else pa.float64() for key, i in idx.items() if key not in ("user", "item")})
    table = _read_csv(path, delimiter, has_header, len(first), types)
    try:
        return convert_columns(lambda key: table[f"f{idx[key]}"].combine_chunks(), list(idx))
    except BadValue as exc:
        line, text = _line_of_row(path, delimiter, has_header, exc.row)
        raise DataFormatError(f"{path}:{line}: {exc}: {text[:200]!r}") from None


def _read_parquet(path: Path, columns: dict[str, str], actions: list[str]) -> pa.Table:
    table = pq.read_table(path)
    if table.num_rows == 0:
        raise DataFormatError(f"{path}: file is empty (no interactions)")
    columns = columns or recognise_columns(table.column_names, str(path))
    wanted = {**columns, **{ACTION_PREFIX + a: a for a in actions}}
    missing = [c for c in wanted.values() if c not in table.column_names]
    if missing:
        raise DataFormatError(f"{path}: missing column(s) {missing}; has {table.column_names}")
    try:
        return convert_columns(lambda key: table[wanted[key]].combine_chunks(), list(wanted))
    except BadValue as exc:
        raise DataFormatError(f"{path}: row {exc.row + 1}: {exc}") from None


FORMATS: dict[str, Callable[[Path], pa.Table]] = {
    "movielens-100k": read_movielens_100k,
    "movielens-1m": read_movielens_1m,
    "movielens-20m": read_movielens_20m,
    "amazon-ratings-csv": read_amazon_ratings_csv,
    "amazon-reviews-json": read_amazon_reviews_json,
    "sequences": read_sequence_file,
    "p5-sequences": read_p5_sequences,
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
