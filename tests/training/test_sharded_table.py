"""Row-wise sharded item tables (train.item_table=rowwise, TorchRec): hand-computed updates under
2 processes, a 2-process run that follows a 1-process run and resumes exactly, and clear errors.
The TorchRec tests skip where TorchRec (with an FBGEMM build matching torch) is not installed."""

import json
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
import yaml
from conftest import tiny_run_config

from genrec.cli import main
from genrec.config import ExperimentConfig
from genrec.errors import ConfigError
from genrec.training.sharded_table import install, torchrec_available

gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available")
needs_torchrec = pytest.mark.skipif(
    not torchrec_available(), reason="TorchRec with a matching FBGEMM is not installed (README, 'Sharded item tables')"
)
CHECK = Path(__file__).with_name("sharded_check.py")


def _config(tmp_path, csv):
    return tiny_run_config(tmp_path, csv, epochs=3, item_table="rowwise", table_lr=0.05)


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@gloo
@needs_torchrec
@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
def test_sharded_rows_update_as_computed_by_hand(torchrun, optimizer):
    proc = torchrun(2, str(CHECK), optimizer)
    assert "rank 0: ok" in proc.stdout and "rank 1: ok" in proc.stdout


@gloo
@needs_torchrec
def test_two_processes_follow_one_and_resume(tmp_path, synthetic_csv, torchrun):
    cfg = _config(tmp_path, synthetic_csv)
    train = ("-m", "genrec.cli", "train")
    torchrun(1, *train, str(cfg), "--out", str(tmp_path / "one"))
    torchrun(2, *train, str(cfg), "train.epochs=2", "--out", str(tmp_path / "two"))  # interrupted after 2 epochs
    torchrun(2, *train, "train.epochs=3", "--out", str(tmp_path / "two"), "--resume")
    one, two = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert [r["epoch"] for r in two] == [1, 2, 3]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    assert [r["valid"]["ndcg@10"] for r in two] == pytest.approx([r["valid"]["ndcg@10"] for r in one], abs=1e-6)
    assert one[-1]["loss"] < one[0]["loss"]  # it learns
    # checkpoints hold the whole table under the unsharded name: eval/recommend load them as usual
    assert main(["eval", str(tmp_path / "two" / "best")]) == 0
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["test"] == pytest.approx(json.loads((tmp_path / "one" / "metrics.json").read_text())["test"], abs=1e-6)
    assert (tmp_path / "two" / "last" / "table_optimizer.safetensors").exists()


def test_rowwise_needs_torchrun(tmp_path, synthetic_csv, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="runs under torchrun"):
        from genrec.experiments.run import train

        train(ExperimentConfig.from_dict(yaml.safe_load(_config(tmp_path, synthetic_csv).read_text())), tmp_path / "run")


def test_rowwise_refuses_ranking_and_refit(tmp_path, synthetic_csv):
    from genrec.experiments.run import make_trainer

    raw = yaml.safe_load(_config(tmp_path, synthetic_csv).read_text())
    for change in ({"train": {**raw["train"], "refit": True}}, {"task": {"kind": "ranking"}}):
        with pytest.raises(ConfigError, match="rowwise is for retrieval training"):
            make_trainer(ExperimentConfig.from_dict({**raw, **change}), tmp_path / "run")


def test_table_options_are_checked():
    base = {"data": {"dataset": "ml-100k"}, "model": {"name": "hstu"}}
    for train, match in (({"item_table": "columnwise"}, "item_table"), ({"table_optimizer": "adam"}, "table_optimizer"), ({"table_lr": -1}, "table_lr")):
        with pytest.raises(ConfigError, match=match):
            ExperimentConfig.from_dict({**base, "train": train})


def test_missing_torchrec_is_explained(monkeypatch):
    import torch.nn as nn

    monkeypatch.setitem(sys.modules, "torchrec", None)  # import torchrec -> ImportError
    holder = nn.Module()
    holder.item_embedding = nn.Embedding(5, 8)
    with pytest.raises(ConfigError, match="needs TorchRec"):
        install(holder)
