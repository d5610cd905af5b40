"""Item side information: per-item attribute tokens (category, brand, genre, ...) from a file beside
the log, mapped onto the prepared catalogue.

``data.item_features`` names the file, or ``auto`` for a registered dataset's own attribute file
(:data:`genrec.data.download.ITEM_FEATURE_FILES`: the S3-Rec ``*_item2attributes.json`` of Beauty
and Toys, MovieLens ``u.item`` / ``movies.dat`` genres and release decade), found under
``data.source``'s folder or ``$GENREC_SOURCE``, else downloaded and checked like the log.

Formats (``.gz`` read directly):

- JSON ``{item id: [attribute, ...]}`` (S3-Rec) or ``{item id: {field: value, ...}}``;
- CSV / TSV / Parquet with a header: the item id column (``item_id``, ``item``, ``id``,
  ``movieId``, ``asin``, else the first), every other column a field. Text values become
  ``field=value`` tokens (``a|b`` is several values); numbers become ``field=q<k>`` with k the
  value's decile over the file's items; booleans become ``field`` when true; empty cells nothing;
- MovieLens ``u.item`` (19 genre flags and the release date) and ``movies.dat`` (``Genre|Genre``
  and the year in the title): ``genre=...`` and ``decade=1990s`` tokens.

Every token gets an id 1..A (most frequent first; 0 is padding); an item's row lists its token
ids, padded to the longest row. Items the file lacks have no tokens (their vector is the id
embedding alone); ids in the file that are not in the catalogue are ignored and counted. A model
with ``model.item_features`` set adds the mean of its tokens' embeddings to the item's id
embedding (or projects the two concatenated), on the input side and in the output-side item
vectors, so an item that never occurs in training is still scored through its attributes.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genrec.data.columns import ITEM_ID_COLUMNS
from genrec.data.download import ITEM_FEATURE_FILES, base_name, fetch
from genrec.data.loaders import open_text
from genrec.errors import ConfigError, DataFormatError

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
                 "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


@dataclass
class ItemFeatures:
    """Attribute tokens of the catalogue: ``tokens[i]`` lists item i's token ids (0 = padding;
    row 0, the padding item, is empty)."""

    tokens: np.ndarray  # [num_items + 1, M] int64
    vocab: list[str]  # token id k -> vocab[k - 1]
    source: str
    stats: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.vocab)

    @property
    def max_per_item(self) -> int:
        return int(self.tokens.shape[1])

    @staticmethod
    def from_raw(raw: dict[str, list[str]], item_ids, source: str) -> "ItemFeatures":
        """{raw item id: [token, ...]} and the catalogue's raw ids (item idx 1..I) -> the token table."""
        table, vocab, covered, unknown = token_table(raw, item_ids)
        stats = {"items_with_attributes": covered, "items": len(table) - 1, "attribute_tokens": len(vocab),
                 "max_per_item": table.shape[1], "ids_not_in_catalogue": unknown}
        return ItemFeatures(table, vocab, source, stats)


def token_table(raw: dict[str, list[str]], ids) -> tuple[np.ndarray, list[str], int, int]:
    """{raw id: [token, ...]} over the raw ids of idx 1..n -> (table [n + 1, M] of token ids, 0 =
    padding and row 0 empty; the vocabulary, token id k = vocab[k - 1], most frequent first; rows
    with any token; ids of ``raw`` not among ``ids``). An id may name several rows (a user's row
    per domain): each gets the id's tokens."""
    index: dict[str, list[int]] = {}
    for i, r in enumerate(ids):
        index.setdefault(str(r), []).append(i + 1)
    counts = Counter(t for k, toks in raw.items() if str(k) in index for t in set(toks))
    vocab = sorted(counts, key=lambda t: (-counts[t], t))
    tid = {t: k + 1 for k, t in enumerate(vocab)}
    rows: list[list[int]] = [[] for _ in range(len(ids) + 1)]
    for key, toks in raw.items():
        for i in index.get(str(key), ()):
            rows[i] = sorted({tid[t] for t in toks})
    width = max(1, max(len(r) for r in rows))
    table = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        table[i, : len(r)] = r
    return table, vocab, sum(1 for r in rows[1:] if r), sum(1 for k in raw if str(k) not in index)


def _decade(year: str) -> list[str]:
    return [f"decade={int(year) // 10 * 10}s"] if year.isdigit() else []


def _read_movielens(path: Path, sep: str, expected: str, tokens) -> dict[str, list[str]]:
    """A MovieLens item file: one ``sep``-separated line per movie, id first; ``tokens(parts)`` gives
    the movie's tokens, or None for a malformed line (an error naming the file, line and format)."""
    out = {}
    with open_text(path, "latin-1") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split(sep)
            found = tokens(parts)
            if found is None:
                raise DataFormatError(f"{path}, line {n}: expected {expected}")
            out[parts[0]] = found
    return out


def _u_item_tokens(parts: list[str]) -> list[str] | None:
    if len(parts) != 5 + len(ML100K_GENRES) or any(p not in ("0", "1") for p in parts[5:]):
        return None
    return [f"genre={g}" for g, flag in zip(ML100K_GENRES, parts[5:]) if flag == "1"] + _decade(parts[2][-4:])


def _movies_dat_tokens(parts: list[str]) -> list[str] | None:
    if len(parts) != 3:
        return None
    year = re.search(r"\((\d{4})\)\s*$", parts[1])
    genres = [f"genre={g}" for g in parts[2].split("|") if g and g != "(no genres listed)"]
    return genres + (_decade(year.group(1)) if year else [])


def _value_tokens(name: str, value) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, bool):
        return [name] if value else []
    if isinstance(value, list):
        return [t for v in value for t in _value_tokens(name, v)]
    return [f"{name}={v}" if name else str(v) for v in str(value).split("|") if v != ""]


def _columns_to_tokens(ids: list[str], columns: dict[str, list], edges: dict | None = None) -> dict[str, list[str]]:
    """Columns of one table -> tokens per id: numbers by decile, text by value, booleans by flag.
    ``edges``: filled with each numeric column's decile edges (``name=q<k>``, k = the number of
    edges at or below the value), so a value outside the file can be tokenised alike."""
    out: dict[str, list[str]] = {i: [] for i in ids}
    for name, values in columns.items():
        present = [v for v in values if v is not None and v != ""]
        numeric = bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
        if numeric:
            finite = np.array([v for v in present if not (isinstance(v, float) and math.isnan(v))], dtype=float)
            cuts = np.quantile(finite, np.linspace(0.1, 0.9, 9)) if len(finite) else np.array([])
            if edges is not None:
                edges[name] = [float(c) for c in cuts]
            for i, v in zip(ids, values):
                if v is not None and v != "" and not (isinstance(v, float) and math.isnan(v)):
                    out[i].append(f"{name}=q{int(np.searchsorted(cuts, float(v), side='right'))}")
        else:
            for i, v in zip(ids, values):
                out[i] += _value_tokens(name, v)
    return out


def _read_table(path: Path, id_columns=ITEM_ID_COLUMNS, what: str = "item", edges: dict | None = None) -> dict[str, list[str]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    base = base_name(path)

    def read_csv(types: dict | None = None):
        opts = pacsv.ParseOptions(delimiter="\t" if base.endswith(".tsv") else ",")
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            return pacsv.read_csv(f, parse_options=opts, convert_options=pacsv.ConvertOptions(column_types=types or {}))

    try:
        table = pq.read_table(path) if base.endswith(".parquet") else read_csv()
        names = table.column_names
        id_col = next((c for c in id_columns if c in names), names[0])
        if not base.endswith(".parquet") and table.schema.field(id_col).type != pa.string():
            table = read_csv({id_col: pa.string()})  # ids as written ("007" stays "007"), like the log's
    except Exception as exc:  # pyarrow names the row; we add the file
        raise DataFormatError(f"{path}: unreadable {what} feature table ({exc})") from exc
    ids = [str(v) for v in table[id_col].to_pylist()]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise DataFormatError(f"{path}: {what} id {dup!r} appears on more than one row (column {id_col!r})")
    columns = {c: table[c].to_pylist() for c in names if c != id_col}
    return _columns_to_tokens(ids, columns, edges)


def _read_json(path: Path, what: str = "item", edges: dict | None = None) -> dict[str, list[str]]:
    try:
        with open_text(path) as f:
            obj = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: expected an object {{{what} id: [attributes]}} or {{{what} id: {{field: value}}}}")
    out: dict[str, list[str]] = {}
    nested = [k for k, v in obj.items() if isinstance(v, dict)]
    if nested and len(nested) != len(obj):
        raise DataFormatError(f"{path}: mixes {{field: value}} objects and attribute lists ({what} {nested[0]!r})")
    if nested:
        ids = list(obj)
        fields = sorted({f for v in obj.values() for f in v})
        return _columns_to_tokens(ids, {f: [obj[i].get(f) for i in ids] for f in fields}, edges)
    for key, value in obj.items():
        if not isinstance(value, list):
            raise DataFormatError(f"{path}: {what} {key!r}: expected a list of attributes, got {type(value).__name__}")
        out[str(key)] = [f"attr={v}" for v in value]
    return out


def read_attributes(path: str | Path, what: str, movielens: dict[str, tuple[str, str, object]], id_columns: tuple[str, ...],
                    edges: dict | None = None) -> dict[str, list[str]]:
    """{raw id: [attribute token, ...]} from an attribute file of ``what`` (item / user): a
    MovieLens file named in ``movielens`` (name -> separator, its format for errors, the line's
    tokens), JSON, or a CSV / TSV / Parquet table with an id column among ``id_columns``.
    ``edges``: filled with the decile edges of numeric fields (tables and JSON objects)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataFormatError(f"data.{what}_features={str(path)!r}: no such file")
    base = base_name(path)
    if base in movielens:
        return _read_movielens(path, *movielens[base])
    if base.endswith(".json"):
        return _read_json(path, what, edges)
    if base.endswith((".csv", ".tsv", ".parquet")):
        return _read_table(path, id_columns, what, edges)
    raise DataFormatError(f"{path}: unknown {what} feature format (JSON, CSV, TSV, Parquet, {', '.join(movielens)})")


ITEM_MOVIELENS = {"u.item": ("|", "id|title|date|video date|url|19 genre flags (0/1)", _u_item_tokens),
                  "movies.dat": ("::", "MovieID::Title::Genres", _movies_dat_tokens)}


def read_item_features(path: str | Path) -> dict[str, list[str]]:
    """{raw item id: [attribute token, ...]} from a feature file (formats: module docstring)."""
    return read_attributes(path, "item", ITEM_MOVIELENS, ITEM_ID_COLUMNS)


def feature_file(data_cfg, value: str, key: str = "item_features", registry: dict = ITEM_FEATURE_FILES) -> Path:
    """The file that ``data.<key>`` (= ``value``) names; ``auto``: the registered dataset's own
    (``registry``: dataset -> its file), located or downloaded."""
    if value != "auto":
        return Path(value).expanduser()
    spec = registry.get(data_cfg.dataset)
    if spec is None:
        raise ConfigError(f"data.{key}=auto: dataset {data_cfg.dataset!r} has no registered attribute file "
                          f"(those that do: {sorted(registry)}); give a file path")
    if data_cfg.source:  # inside the official archive given as the source, or beside the log (that folder only)
        src = Path(data_cfg.source).expanduser()
        if src.suffix == ".zip" and src.is_file():
            try:
                return fetch(spec, data_cfg.cache_dir, str(src), data_cfg.verify_checksum)
            except DataFormatError:
                pass  # not in this archive: look further
        folder = src if src.is_dir() else src.parent
        for name in (Path(spec.member).name, Path(spec.member).name + ".gz"):
            if (folder / name).is_file():
                return fetch(spec, data_cfg.cache_dir, str(folder / name), data_cfg.verify_checksum)
    try:  # then $GENREC_SOURCE folders, the download cache, or the download
        return fetch(spec, data_cfg.cache_dir, None, data_cfg.verify_checksum)
    except (DataFormatError, OSError) as exc:
        raise DataFormatError(f"data.{key}=auto: {spec.description} ({Path(spec.member).name}) is not beside the log, "
                              f"in $GENREC_SOURCE or in the cache, and could not be downloaded ({exc}); give its path") from exc


def load_item_features(data_cfg, item_ids) -> ItemFeatures:
    """The attribute table of the prepared catalogue ``item_ids`` (raw ids of item idx 1..I).
    A file none of whose ids is in the catalogue is an error (the wrong file, or ids written
    differently); one that covers under half the catalogue gets a warning."""
    path = feature_file(data_cfg, data_cfg.item_features)
    raw = read_item_features(path)
    features = ItemFeatures.from_raw(raw, item_ids, str(path))
    st = features.stats
    if st["items_with_attributes"] == 0:
        raise DataFormatError(f"{path}: no item of the catalogue has attributes here: {len(raw)} ids in the file, "
                              f"{st['ids_not_in_catalogue']} of them unknown (file ids e.g. {list(raw)[:3]}, catalogue ids e.g. "
                              f"{[str(i) for i in list(item_ids)[:3]]}); is it the right file?")
    if st["items_with_attributes"] < st["items"] / 2:
        print(f"genrec: warning: {path}: only {st['items_with_attributes']} of {st['items']} items have attributes",
              file=sys.stderr)
    return features
