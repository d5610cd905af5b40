"""Strict JSON out: the JSON genrec writes for people and tools (stdout, metrics.json, logs,
checkpoints, sweep rows) goes through here, so a NaN or an infinity never reaches a file as the
non-standard tokens ``NaN``/``Infinity``.

Non-finite floats become ``null``. Where a metric can legitimately be undefined (AUC of a group
with one class), the protocol text says so; ``null`` is how it is written.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def finite(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, scalars) with NaN/±inf floats replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """Standard JSON text of ``obj`` (non-finite floats as null; other objects through ``str``)."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False, default=str)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temporary sibling, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(dumps(obj, indent))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_lines(path: str | Path, records: list[dict]) -> None:
    """Append one JSON line per record (``log.jsonl``, ``steps.jsonl``)."""
    with open(path, "a") as f:
        f.writelines(dumps(r) + "\n" for r in records)
