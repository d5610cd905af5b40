"""Checkpoint reads see one version of the folder: a training run that swaps in a new ``best/``
while a server (re)loads it can neither mix two versions nor mislabel the weights' digest."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from genrec import checkpoint as ckpt
from genrec.errors import CheckpointError
from genrec.models import SASRec, SASRecConfig


def _write(path, seed: int) -> bytes:
    torch.manual_seed(seed)
    model = SASRec(SASRecConfig(name="sasrec", num_items=5, embedding_dim=8, num_layers=1))
    ckpt.write_atomic_dir(path, lambda folder: ckpt.fill_model(folder, model, [f"i{seed}-{k}" for k in range(5)], {"seed": seed}))
    return (path / "model.safetensors").read_bytes()


def test_a_swap_during_the_read_gives_the_new_version_whole(tmp_path, monkeypatch):
    best = tmp_path / "best"
    _write(best, 1)
    real_fdopen, calls = os.fdopen, []

    def swapping_fdopen(fd, *args, **kwargs):  # the trainer replaces best/ right after the first file is opened
        calls.append(fd)
        if len(calls) == 2:
            swapping_fdopen.new = _write(best, 2)
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", swapping_fdopen)
    model, items, experiment, digest = ckpt.load_model_verified(best)
    assert experiment == {"seed": 2} and items == [f"i2-{k}" for k in range(5)]  # nothing of version 1 left
    assert digest == hashlib.sha256(swapping_fdopen.new).hexdigest()
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    again, _, _ = ckpt.load_model(best)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)  # the weights in memory are the ones the digest names


def test_a_swap_caught_half_cleaned_up_is_read_again(tmp_path, monkeypatch):
    # the reader holds the old folder; it is renamed away, the new one moved in, and the old
    # files deleted but the old folder itself not yet: the read must not report "missing"
    best = tmp_path / "best"
    _write(best, 1)
    incoming = tmp_path / "incoming"
    new = _write(incoming, 2)
    real_fdopen, calls = os.fdopen, []

    def half_cleaned(fd, *args, **kwargs):
        calls.append(fd)
        if len(calls) == 2:
            os.replace(best, tmp_path / "best.old")
            os.replace(incoming, best)
            for f in (tmp_path / "best.old").iterdir():
                f.unlink()
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", half_cleaned)
    _, items, experiment, digest = ckpt.load_model_verified(best)
    assert experiment == {"seed": 2} and items == [f"i2-{k}" for k in range(5)]
    assert digest == hashlib.sha256(new).hexdigest()


def test_missing_files_and_endless_swaps_are_clear_errors(tmp_path, monkeypatch):
    best = tmp_path / "best"
    _write(best, 1)
    (best / "items.json").unlink()
    with pytest.raises(CheckpointError, match="items.json: missing"):
        ckpt.load_model(best)
    _write(best, 3)
    real_fdopen = os.fdopen

    def always_swapping(fd, *args, **kwargs):
        _write(best, 4)
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", always_swapping)
    with pytest.raises(CheckpointError, match="replaced 5 times while it was read"):
        ckpt.load_model(best)
