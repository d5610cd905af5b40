"""Item metadata for the service: a title (and any other fields) per raw item id, and search.

Where it comes from, first found wins:

1. ``--metadata FILE`` given to ``genrec serve``;
2. ``item_metadata.json`` in the checkpoint folder (:func:`genrec.checkpoint.read_item_metadata`);
3. the dataset's own metadata file next to its data, when the dataset has one: MovieLens
   ``u.item`` (ML-100K), ``movies.dat`` (ML-1M), ``movies.csv`` (ML-20M); for Beauty the P5
   ``datamaps.json`` (item id -> Amazon ASIN; the S3-Rec and P5 Beauty files number items alike),
   looked up under ``data.source`` and every ``$GENREC_SOURCE`` folder.

Files read (``.gz`` too): CSV or TSV with a header (an ``item``/``item_id``/``id`` column, the
rest become fields), JSON (a list of objects with an id, or an ``{id: {fields}}`` / ``{id: title}``
map), JSON lines, Parquet, MovieLens ``u.item`` / ``movies.dat`` and P5 ``datamaps.json``.
Metadata never decides what the model can recommend: ids it lacks simply have no title.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from genrec.data.columns import ITEM_ID_COLUMNS
from genrec.data.download import base_name
from genrec.errors import DataFormatError

ID_COLUMNS = ITEM_ID_COLUMNS
TITLE_COLUMNS = ("title", "name")

# dataset name -> (file names, folder the file must sit under or None)
DATASET_FILES = {
    "ml-100k": (("u.item",), None),
    "ml-1m": (("movies.dat",), None),
    "ml-20m": (("movies.csv",), None),
    "beauty": (("datamaps.json",), "beauty"),
}


class ItemCatalog:
    """Read-only metadata of the catalogue's items: ``fields(id)`` and a substring search over
    titles and ids. Built once per loaded checkpoint; shared by every request."""

    def __init__(self, item_ids: Iterable[str], metadata: Mapping[str, Mapping] | None = None, source: str | None = None):
        self.item_ids = tuple(item_ids)
        meta = metadata or {}
        self.source = source if meta else None
        self._fields = {i: dict(meta[i]) for i in self.item_ids if i in meta}  # only items the model knows
        # lower-cased "id title" per item, in catalogue order, for search
        self._haystack = [(i, f"{i} {self._fields.get(i, {}).get('title', '')}".lower()) for i in self.item_ids]
        self._known = frozenset(self.item_ids)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def has_titles(self) -> bool:
        return bool(self._fields)

    def fields(self, item_id: str) -> dict:
        """The item's metadata fields (``title`` first when known); {} for an item without any."""
        return dict(self._fields.get(item_id, {}))

    def title(self, item_id: str) -> str | None:
        return self._fields.get(item_id, {}).get("title")

    def search(self, query: str, limit: int = 20) -> list[str]:
        """Ids matching ``query``: the item whose id it is first, then those whose "id title"
        contains every word of it (case-insensitive), in catalogue order; the first ``limit``
        items for an empty query."""
        query = query.strip()
        if not query:
            return list(self.item_ids[:limit])
        words = query.lower().split()
        out = [query] if query in self._known else []
        for item_id, text in self._haystack:
            if len(out) >= limit:
                break
            if item_id != query and all(w in text for w in words):
                out.append(item_id)
        return out


# ---- readers ------------------------------------------------------------------------------------
def _open_text(path: Path, encoding: str = "utf-8") -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw.decode(encoding)


def read_metadata(path: str | Path) -> dict[str, dict]:
    """{raw item id: {"title": ..., other fields}} from a metadata file (formats: module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such metadata file")
    name = base_name(path)
    try:
        if name == "u.item":
            return _read_separated(_open_text(path, "latin-1"), "|", ("title", "release_date", "video_release_date", "imdb_url"))
        if name == "movies.dat":
            return _read_separated(_open_text(path, "latin-1"), "::", ("title", "genres"))
        if name == "datamaps.json":
            id2item = json.loads(_open_text(path))["id2item"]
            return {str(k): {"title": str(v), "asin": str(v)} for k, v in id2item.items()}
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return _from_rows(pq.read_table(path).to_pylist(), path)
        if name.endswith(".json"):
            return _from_json(json.loads(_open_text(path)), path)
        if name.endswith(".jsonl"):
            return _from_rows([json.loads(line) for line in _open_text(path).splitlines() if line.strip()], path)
        if name.endswith((".csv", ".tsv")):
            text = _open_text(path)
            dialect = "excel-tab" if name.endswith(".tsv") else "excel"
            return _from_rows(list(csv.DictReader(io.StringIO(text), dialect=dialect)), path)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, OSError) as exc:
        raise DataFormatError(f"{path}: unreadable item metadata ({exc})") from exc
    raise DataFormatError(f"{path}: unknown metadata format (CSV/TSV, JSON, JSON lines, Parquet, u.item, movies.dat, datamaps.json)")


def _read_separated(text: str, sep: str, names: tuple[str, ...]) -> dict[str, dict]:
    out = {}
    for line in text.splitlines():
        if line.strip():
            parts = line.split(sep)
            out[parts[0]] = {k: v for k, v in zip(names, parts[1:]) if v}
    return out


def _id_of(row: Mapping, path: Path, line: int) -> str:
    for col in ID_COLUMNS:
        if row.get(col) not in (None, ""):
            return str(row[col])
    raise DataFormatError(f"{path}: record {line} has no item id (one of the columns {', '.join(ID_COLUMNS)})")


def _from_rows(rows: list[Mapping], path: Path) -> dict[str, dict]:
    out = {}
    for n, row in enumerate(rows, start=1):
        item_id = _id_of(row, path, n)
        fields = {k: v for k, v in row.items() if k not in ID_COLUMNS and v not in (None, "")}
        title = next((fields.pop(c) for c in TITLE_COLUMNS if c in fields), None)
        out[item_id] = ({"title": str(title)} if title is not None else {}) | fields
    return out


def _from_json(obj, path: Path) -> dict[str, dict]:
    if isinstance(obj, list):
        return _from_rows(obj, path)
    if isinstance(obj, dict):
        return {str(k): (dict(v) if isinstance(v, dict) else {"title": str(v)}) for k, v in obj.items()}
    raise DataFormatError(f"{path}: JSON metadata must be a list of objects or an {{id: fields}} map")


def discover(experiment: Mapping) -> Path | None:
    """The dataset's own metadata file (``DATASET_FILES``) under ``data.source`` or a
    ``$GENREC_SOURCE`` folder, or None."""
    data = experiment.get("data") or {}
    names, parent = DATASET_FILES.get(str(data.get("dataset", "")), ((), None))
    if not names:
        return None
    folders = [Path(p) for p in os.environ.get("GENREC_SOURCE", "").split(os.pathsep) if p]
    if data.get("source"):
        src = Path(str(data["source"]))
        folders.insert(0, src if src.is_dir() else src.parent)
    for folder in folders:
        for name in names:
            for candidate in (name, name + ".gz"):
                hits = sorted(p for p in folder.rglob(candidate) if parent is None or p.parent.name == parent) if folder.is_dir() else []
                if hits:
                    return hits[0]
    return None
