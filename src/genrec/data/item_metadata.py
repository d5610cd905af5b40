"""Item metadata: a title (and any other fields) per raw item id, read from a file.

Where a run's metadata comes from (``data.item_metadata``): a file named there, or with ``auto``
(the default) the dataset's own metadata file when one is on the machine: MovieLens ``u.item``
(ML-100K), ``movies.dat`` (ML-1M), ``movies.csv`` (ML-20M); for Beauty the P5 ``datamaps.json``
(item id -> Amazon ASIN; the S3-Rec and P5 Beauty files number items alike), looked up under
``data.source``, every ``$GENREC_SOURCE`` folder and the download cache (a downloaded MovieLens
log brings only its ratings file: pass the archive or folder as ``data.source``, or the file as
``data.item_metadata``, to store titles). Nothing is downloaded for it. Training stores it with every checkpoint
(``item_metadata.json``, the catalogue's items only), and ``genrec serve`` shows it.

Files read (``.gz`` too): CSV or TSV with a header (an ``item``/``item_id``/``id`` column, the
rest become fields), JSON (a list of objects with an id, or an ``{id: fields}`` / ``{id: title}``
map), JSON lines, Parquet, MovieLens ``u.item`` / ``movies.dat`` and P5 ``datamaps.json``.
Metadata never decides what the model can recommend: ids it lacks simply have no title.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from genrec.data.columns import ITEM_ID_COLUMNS
from genrec.data.download import base_name, cache_root
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
    """The dataset's own metadata file (``DATASET_FILES``) under ``data.source``, a
    ``$GENREC_SOURCE`` folder or the download cache (where ``data.item_features: auto`` puts
    MovieLens' ``u.item`` / ``movies.dat``), or None. Nothing is downloaded for it."""
    data = experiment.get("data") or {}
    names, parent = DATASET_FILES.get(str(data.get("dataset", "")), ((), None))
    if not names:
        return None
    folders = [Path(p) for p in os.environ.get("GENREC_SOURCE", "").split(os.pathsep) if p]
    folders.append(cache_root(data.get("cache_dir")) / "raw")
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


def run_metadata(data_cfg, item_ids) -> dict[str, dict] | None:
    """The metadata a run stores with its checkpoints: ``data.item_metadata``'s file (``auto``: the
    dataset's own, when found; a file that cannot be read is then skipped with a warning; ``none``:
    nothing), restricted to the catalogue's items; None when there is none."""
    setting = data_cfg.item_metadata
    if setting == "none":
        return None
    if setting == "auto":
        found = discover({"data": {"dataset": data_cfg.dataset, "source": data_cfg.source}})
        if found is None:
            return None
        try:
            meta = read_metadata(found)
        except DataFormatError as exc:
            print(f"genrec: warning: data.item_metadata=auto: {exc}; no item metadata is stored", file=sys.stderr)
            return None
    else:
        meta = read_metadata(Path(setting).expanduser())
    known = {str(i) for i in item_ids}
    kept = {k: v for k, v in meta.items() if k in known}
    return kept or None
