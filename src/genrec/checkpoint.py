"""Checkpoints: weights in safetensors plus JSON, written atomically; no pickle is ever loaded.

A checkpoint folder holds ``model.safetensors``, ``model.json`` (the model config; for a ranking or
unified model the backbone's, with ``head.json`` for the action tokens and ranking head), ``items.json``
(raw id of item idx 1..I, so a checkpoint serves without the dataset) and ``experiment.json``;
optionally ``item_metadata.json`` (titles and other fields per raw id, shown by ``genrec serve``).
A training-state folder adds ``optimizer.safetensors`` + ``optimizer.json`` and ``state.json``.

Folders are written under a temporary name and swapped in with renames; if a crash lands between
the two renames, :func:`resolve` finds the previous copy at ``<name>.old``.

Integrity: ``digests.json`` records the SHA-256 of every ``*.safetensors`` file of the folder, and
every read checks it, so a corrupted or truncated file gives one clear :class:`CheckpointError`
line instead of silently wrong weights (a flipped byte in a float loads fine as safetensors).
Checkpoints written before digests existed load without the check. A model is loaded from one
version of its folder (:func:`snapshot`: every file read through one handle on the folder), so a
run that swaps in a new ``best/`` during the load cannot mix two versions, and
:func:`load_model_verified` returns the SHA-256 of exactly the weights it loaded.

Training and inference both import this module (it sits above ``models``, below ``training``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save_file
from torch import nn

from genrec import jsonio
from genrec.errors import CheckpointError
from genrec.models import HeadConfig, InterleavedRanker, Model, build_model, model_config_from_dict, wrap_interleaved


def write_atomic_dir(dest: Path, fill: Callable[[Path], None]) -> None:
    """Create ``dest`` by filling a temporary sibling folder and renaming it into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        fill(tmp)
        _write_json(tmp / DIGESTS, {f.name: file_digest(f) for f in sorted(tmp.glob("*.safetensors"))})
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = dest.with_name(dest.name + ".old")
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


DIGESTS = "digests.json"


def file_digest(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve(path: str | Path) -> Path:
    """The checkpoint folder at ``path``, or its ``.old`` twin left by an interrupted swap."""
    path = Path(path)
    if (path / "model.safetensors").exists():
        return path
    old = path.with_name(path.name + ".old")
    if (old / "model.safetensors").exists():
        return old
    raise CheckpointError(f"{path}: no checkpoint here (expected model.safetensors)")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(jsonio.dumps(obj, indent=2))


def fill_model(folder: Path, model: Model, item_ids: list[str], experiment: dict,
               state: dict[str, torch.Tensor] | None = None, metadata: dict[str, dict] | None = None) -> None:
    """Write the model (``state``: its weights when they are not ``model.state_dict()``, e.g. a
    sharded table gathered whole; ``metadata``: item metadata, written as ``item_metadata.json``)."""
    save_tensors(folder / "model.safetensors", model.state_dict() if state is None else state)
    _write_json(folder / "model.json", model.config.__dict__)
    if isinstance(model, InterleavedRanker):
        _write_json(folder / "head.json", model.head_config.__dict__)
    _write_json(folder / "items.json", list(item_ids))
    _write_json(folder / "experiment.json", experiment)
    if metadata:
        _write_json(folder / ITEM_METADATA, metadata)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, checked against its folder's ``digests.json`` when there is one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (incomplete checkpoint)")
    digests = path.parent / DIGESTS
    if digests.exists():
        _check_digest(path, file_digest(path), json.loads(digests.read_text()))
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc


def _check_digest(path: Path, actual: str, digests: dict) -> None:
    """Refuse a file whose SHA-256 differs from the one its folder's ``digests.json`` records."""
    expected = digests.get(path.name)
    if expected is not None and actual != expected:
        raise CheckpointError(f"{path}: SHA-256 does not match {DIGESTS} (the file is corrupted or truncated)")


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:200]})")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing (incomplete checkpoint)") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc


def fill_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{key}"] = val.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = val
    save_file(tensors, str(folder / "optimizer.safetensors"))
    _write_json(folder / "optimizer.json", {"param_groups": sd["param_groups"], "scalars": scalars})


def load_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    meta = _read_json(folder / "optimizer.json")
    state: dict[int, dict[str, Any]] = {}
    for name, val in list(load_tensors(folder / "optimizer.safetensors").items()) + list(meta["scalars"].items()):
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = val
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


MODEL_FILES = ("model.json", "experiment.json", "items.json", "model.safetensors")
OPTIONAL_FILES = ("head.json", DIGESTS)


def snapshot(path: str | Path, attempts: int = 5) -> tuple[Path, dict[str, bytes | None]]:
    """The bytes of a checkpoint's model files, all from one version of the folder: they are read
    through one open handle on the folder, and the read counts only if ``path`` still leads to that
    same folder afterwards. A training run that swaps in a new ``best/`` meanwhile
    (:func:`write_atomic_dir`) therefore cannot mix two versions: the read starts again from the
    new one. Optional files absent: None."""
    names = MODEL_FILES + OPTIONAL_FILES
    for _ in range(attempts):
        folder = resolve(path)
        if os.open not in os.supports_dir_fd:  # (no directory handles on this OS: plain reads)
            return folder, {n: (folder / n).read_bytes() if (folder / n).exists() else None for n in names}
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:  # swapped away between resolve and open
            continue
        try:
            files: dict[str, bytes | None] = {}
            for name in names:
                try:
                    with os.fdopen(os.open(name, os.O_RDONLY, dir_fd=fd), "rb") as f:
                        files[name] = f.read()
                except FileNotFoundError:
                    files[name] = None
            try:
                same = os.stat(resolve(path)).st_ino == os.fstat(fd).st_ino
            except (CheckpointError, FileNotFoundError):
                same = False
            if not same:  # replaced while read: read the new version
                continue
            missing = [n for n in MODEL_FILES if files[n] is None]
            if missing:
                raise CheckpointError(f"{folder / missing[0]}: missing (incomplete checkpoint)")
            return folder, files
        finally:
            os.close(fd)
    raise CheckpointError(f"{path}: the checkpoint was replaced {attempts} times while it was read; try again")


def _json_of(folder: Path, name: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{folder / name}: not valid JSON ({exc})") from exc


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Model, list[str], dict]:
    """Load (model, raw item ids, experiment dict) from a checkpoint folder; the model is in eval mode."""
    model, items, experiment, _ = load_model_verified(path, device)
    return model, items, experiment


def load_model_verified(path: str | Path, device: str | torch.device = "cpu") -> tuple[Model, list[str], dict, str]:
    """:func:`load_model` plus the SHA-256 of the weights it loaded: every file comes from one
    version of the folder (:func:`snapshot`), and the weights are checked against that version's
    ``digests.json`` (when it has one), so the digest names exactly the weights in memory."""
    folder, files = snapshot(path)
    weights = files["model.safetensors"]
    digest = hashlib.sha256(weights).hexdigest()
    if files[DIGESTS] is not None:
        _check_digest(folder / "model.safetensors", digest, _json_of(folder, DIGESTS, files[DIGESTS]))
    model = build_model(model_config_from_dict(_json_of(folder, "model.json", files["model.json"])))
    experiment = _json_of(folder, "experiment.json", files["experiment.json"])
    if files["head.json"] is not None:
        head = _json_of(folder, "head.json", files["head.json"])
        if "retrieval" not in head:  # written before head.json said it: ranking-only runs never trained retrieval
            head["retrieval"] = (experiment.get("task") or {}).get("kind") != "ranking"
        head.setdefault("action_token", "feedback")  # written before the option existed: the first design
        try:
            model = wrap_interleaved(model, HeadConfig(**head))
        except TypeError as exc:  # a key this genrec does not know
            raise CheckpointError(f"{folder / 'head.json'}: {exc}") from exc
    try:
        state = load_bytes(weights)
    except (SafetensorError, ValueError) as exc:
        raise _unreadable(folder / "model.safetensors", exc) from exc
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that differ from model.json's
        raise CheckpointError(f"{folder}: the weights do not fit the model model.json describes ({str(exc).splitlines()[0][:300]})") from exc
    if missing or unexpected:
        raise CheckpointError(f"{folder}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})")
    model.to(device).eval()
    items = _json_of(folder, "items.json", files["items.json"])
    return model, items, experiment, digest


def load_weights(folder: Path, model: nn.Module) -> None:
    model.load_state_dict(load_tensors(resolve(folder) / "model.safetensors"))


ITEM_METADATA = "item_metadata.json"
"""Optional: ``{raw item id: {"title": ..., other fields}}`` for the items of ``items.json``."""


def read_item_metadata(path: str | Path) -> dict[str, dict] | None:
    """The checkpoint's optional item metadata (``item_metadata.json``), or None when it has none."""
    file = resolve(path) / ITEM_METADATA
    if not file.exists():
        return None
    meta = _read_json(file)
    if not isinstance(meta, dict) or not all(isinstance(v, dict) for v in meta.values()):
        raise CheckpointError(f"{file}: expected {{item id: {{field: value}}}}")
    return {str(k): v for k, v in meta.items()}
