"""torchrun data parallelism: 2 CPU processes (gloo) follow one process's loss curve with the same
global batch, write the run folder from rank 0 only, and resume like a single process."""

import json

import pytest
import torch.distributed as dist
from conftest import tiny_run_config

from genrec.cli import main

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available")


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_two_processes_match_one_and_resume(tmp_path, synthetic_csv, capsys, torchrun):
    cfg = tiny_run_config(tmp_path, synthetic_csv)  # full softmax, no dropout: deterministic steps
    assert main(["train", str(cfg), "--out", str(tmp_path / "single")]) == 0
    capsys.readouterr()
    # interrupted after epoch 1, resumed to 2 epochs, both under torchrun
    torchrun(2, "-m", "genrec.cli", "train", str(cfg), "train.epochs=1", "--out", str(tmp_path / "ddp"))
    torchrun(2, "-m", "genrec.cli", "train", "train.epochs=2", "--out", str(tmp_path / "ddp"), "--resume")
    single, ddp = _log(tmp_path / "single"), _log(tmp_path / "ddp")
    assert [r["epoch"] for r in ddp] == [1, 2]  # rank 0 alone logs: one line per epoch
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in single], rel=1e-4)
    assert [r["valid"]["ndcg@10"] for r in ddp] == pytest.approx([r["valid"]["ndcg@10"] for r in single], abs=1e-3)
    assert (tmp_path / "ddp" / "best" / "model.safetensors").exists()
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["best_epoch"] is not None


RANK0_FAILS = """
import sys, torch, torch.distributed as dist
from genrec.training import distributed
env, _ = distributed.setup(torch.device("cpu"))
if env.rank == 0:  # an error on rank 0 (say, while it tests) as rank 1 waits in the next collective
    distributed.teardown(env, clean=False)
    sys.exit(3)
dist.all_reduce(torch.ones(1))
"""


def test_an_error_on_one_rank_ends_the_run_instead_of_hanging(tmp_path):
    """After an error the ranks skip the teardown barrier: a barrier that rank 1, stuck in another
    collective, never joins would hang both until the group's timeout (30 min on gloo)."""
    import os
    import subprocess
    import sys
    import time

    script = tmp_path / "fails.py"
    script.write_text(RANK0_FAILS)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
                          capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0 and time.monotonic() - start < 120, proc.stderr[-2000:]
