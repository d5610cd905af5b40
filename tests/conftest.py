"""Shared fixtures: a small synthetic interaction log that a model can learn, and the shared data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def no_user_genrec_environment(monkeypatch):
    """Every test runs without the user's GENREC_* variables (GENREC_SOURCE, GENREC_DATA_DIR, ...):
    the README tells users to export them, and a test must not find the user's data or cache.
    Tests that need one set it themselves. (Read at import time, GENREC_WRITE_BASELINE still works.)"""
    for name in [n for n in os.environ if n.startswith("GENREC_")]:
        monkeypatch.delenv(name)


def shared_file(rel: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"shared data file {path} is not present on this machine")
    return path


def synthetic_log(num_users: int = 60, num_items: int = 40, seed: int = 0) -> list[tuple[str, str, int, float]]:
    """(user, item, timestamp, rating) rows: each user walks items i, i+1, i+2, ... (mod num_items)
    from a random start, one step per hour, so the next item is predictable from the last."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(num_users):
        start, length, t0 = int(rng.integers(num_items)), int(rng.integers(5, 16)), 1_000_000 + int(rng.integers(10_000))
        for step in range(length):
            item = (start + step) % num_items
            rows.append((f"u{u}", f"i{item}", t0 + 3600 * step, float(rng.integers(1, 6))))
    order = rng.permutation(len(rows))  # file order is not time order
    return [rows[i] for i in order]


def write_synthetic_csv(path: Path) -> Path:
    """:func:`synthetic_log` as ``user_id,item_id,ts,stars`` CSV at ``path``."""
    lines = ["user_id,item_id,ts,stars"] + [f"{u},{i},{t},{r}" for u, i, t, r in synthetic_log()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def synthetic_csv(tmp_path: Path) -> Path:
    return write_synthetic_csv(tmp_path / "log.csv")


RENDEZVOUS_ERRORS = ("EADDRINUSE", "Address already in use", "DistNetworkError", "RendezvousTimeoutError")
# A rank aborting at exit after a complete run (a C++ thread of the process group's teardown; see
# genrec.training.distributed.teardown). A fresh (not resumed) run whose metrics.json was written
# is repeated once from an empty folder, with a warning; an abort before that is a failure.
EXIT_CRASH = "terminate called without an active exception"


@pytest.fixture
def torchrun():
    """run(nproc, *args): ``python -m torch.distributed.run --standalone --nproc_per_node nproc
    *args`` on CPU, one thread per process; fails the test with both streams on error."""

    def run(nproc: int, *argv: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *argv]
        for attempt in range(2):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
            # retried once: a port taken between torchrun's pick and its bind (the machine's fault,
            # not genrec's), or any failure before the first epoch finished (a launch failure;
            # nothing was trained, so a rerun is the same run). Shown as a warning either way.
            launch = any(e in proc.stderr for e in RENDEZVOUS_ERRORS) or "epoch 1:" not in proc.stderr
            out = Path(argv[argv.index("--out") + 1]) if "--out" in argv and "--resume" not in argv else None  # a fresh run's folder
            exit_crash = EXIT_CRASH in proc.stderr and out is not None and (out / "metrics.json").exists()  # after a complete run
            if proc.returncode == 0 or attempt == 1 or not (launch or exit_crash):
                break
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)  # the rerun starts from an empty folder
            what = "aborted at exit after a complete run" if exit_crash else "failed to launch"
            warnings.warn(f"torchrun {' '.join(argv)} {what}, retrying once:\n{proc.stderr[-3000:]}")
        assert proc.returncode == 0, f"torchrun {' '.join(argv)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return proc

    return run


def tiny_run_config(tmp_path: Path, csv: Path, **train) -> Path:
    """A small deterministic HSTU retrieval config over ``csv`` (full softmax, no dropout), written
    to tmp_path; ``train`` overrides train.* keys. For multi-process runs that must match one process."""
    cfg = {
        "data": {"dataset": "custom", "source": str(csv), "format": "csv", "cache_dir": str(tmp_path / "cache"),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts"}},
        "model": {"name": "hstu", "max_seq_len": 10, "embedding_dim": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.0},
        "train": {"epochs": 2, "batch_size": 16, "loss": "full_softmax", "lr": 0.01, "patience": 0, "num_threads": 1,
                  "device": "cpu", "precision": "fp32", **train},  # fp32: "auto" is bf16 on AMX CPUs
        "eval": {"ks": [1, 10]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
