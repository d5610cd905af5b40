"""Learning-rate schedules: hand-computed factors, config checks, and the trainer applying them
(resume included) on the synthetic log."""

import itertools
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from genrec.config import ExperimentConfig, TrainConfig
from genrec.errors import ConfigError
from genrec.experiments.run import make_trainer, train
from genrec.training.schedule import lr_factor, warmup_steps


def test_constant_without_warmup_is_one_everywhere():
    assert [lr_factor(s, 5, 4, "constant", 0.0) for s in (0, 7, 19, 40)] == [1.0] * 4


def test_linear_warmup_then_constant():
    # 2 epochs of 5 steps: the first step takes 1/10 of the rate, the tenth the whole rate
    assert [lr_factor(s, 5, 4, "constant", 2.0) for s in range(12)] == pytest.approx(
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0])


def test_cosine_after_warmup_by_hand():
    # 4 epochs x 5 steps = 20 steps, 10 of warm-up: decay over the other 10
    f = [lr_factor(s, 5, 4, "cosine", 2.0) for s in range(20)]
    assert f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)  # warm-up end, decay start (p = 0)
    assert f[15] == pytest.approx(0.5)  # p = 5/10: cos(pi/2) = 0
    assert f[19] == pytest.approx(0.5 * (1 + math.cos(0.9 * math.pi)))  # 0.02447: the last step still moves
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))
    assert lr_factor(25, 5, 4, "cosine", 2.0) == 0.0  # past the cap (not reached by training): 0, not negative


def test_cosine_without_warmup_starts_at_the_full_rate():
    assert lr_factor(0, 10, 3, "cosine", 0.0) == 1.0
    assert lr_factor(15, 10, 3, "cosine", 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))


def test_fractional_warmup_rounds_to_whole_steps():
    assert warmup_steps(0.5, 7) == 4 and warmup_steps(0.01, 7) == 1 and warmup_steps(0.0, 7) == 0


@pytest.mark.parametrize("kw, words", [
    ({"lr_schedule": "linear"}, "train.lr_schedule"),
    ({"warmup_epochs": -1}, "warmup_epochs=-1"),
    ({"lr_schedule": "cosine", "warmup_epochs": 5, "epochs": 5}, "no epoch of the cosine decay"),
    ({"warmup_epochs": 1, "item_table": "rowwise"}, "fused optimizer"),
])
def test_bad_schedules_are_refused(kw, words):
    with pytest.raises(ConfigError, match=words):
        TrainConfig(**kw)


def _cfg(csv, cache, **train_kw):
    return ExperimentConfig.from_dict({
        "name": "tiny",
        "data": {"dataset": "custom", "source": str(csv), "format": "csv", "cache_dir": str(cache),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts"}},
        "model": {"name": "hstu", "max_seq_len": 10, "embedding_dim": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.2},
        "train": {"epochs": 4, "batch_size": 16, "num_negatives": 8, "patience": 0, "lr": 0.01,
                  "lr_schedule": "cosine", "warmup_epochs": 1, **train_kw},
        "eval": {"ks": [1, 5, 10]},
    })


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_trainer_sets_the_scheduled_rate_and_logs_it(tmp_path, synthetic_csv):
    cfg = _cfg(synthetic_csv, tmp_path / "c")
    trainer = make_trainer(cfg, tmp_path / "run")
    n = len(trainer.batches)
    trainer.fit()
    log = _log(tmp_path / "run")
    expected = [0.01 * lr_factor((e + 1) * n - 1, n, 4, "cosine", 1) for e in range(4)]
    assert [r["lr"] for r in log] == pytest.approx(expected)
    assert log[0]["lr"] == pytest.approx(0.01)  # the warm-up epoch's last step: the full rate
    assert log[-1]["lr"] < 0.01 * 0.2  # near the end of the cosine
    saved = json.loads((tmp_path / "run" / "last" / "optimizer.json").read_text())
    assert saved["param_groups"][0]["lr"] == pytest.approx(expected[-1])


def test_a_constant_rate_logs_no_lr(tmp_path, synthetic_csv):
    train(_cfg(synthetic_csv, tmp_path / "c", epochs=1, lr_schedule="constant", warmup_epochs=0), tmp_path / "run")
    assert "lr" not in _log(tmp_path / "run")[0]


class _Killed(Exception):
    pass


def test_a_resumed_scheduled_run_reaches_the_same_weights(tmp_path, synthetic_csv):
    cfg = _cfg(synthetic_csv, tmp_path / "c")
    train(cfg, tmp_path / "full")
    # killed after 2 of the 4 epochs (train.epochs, the cosine's horizon, is the same config), then resumed
    trainer = make_trainer(cfg, tmp_path / "part")

    def kill(epoch, record):
        if epoch == 2:
            raise _Killed

    trainer.on_epoch = kill
    with pytest.raises(_Killed):
        trainer.fit()
    train(cfg, tmp_path / "part", resume=True)
    a = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert [r["lr"] for r in _log(tmp_path / "part")] == [r["lr"] for r in _log(tmp_path / "full")]
