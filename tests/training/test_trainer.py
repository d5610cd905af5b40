"""Trainer: resume equivalence and the run-folder contract, on the synthetic log."""

import io
import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from genrec.config import ExperimentConfig
from genrec.errors import ConfigError
from genrec.experiments.run import make_trainer, train
from genrec.training.schedule import lr_factor


def _cfg(csv, cache, **train_kw):
    return ExperimentConfig.from_dict({
        "name": "tiny",
        "data": {"dataset": "custom", "source": str(csv), "format": "csv", "cache_dir": str(cache),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts"}},
        "model": {"name": "hstu", "max_seq_len": 10, "embedding_dim": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.2},
        "train": {"epochs": 4, "batch_size": 16, "num_negatives": 8, "patience": 0, "lr": 0.01, **train_kw},
        "eval": {"ks": [1, 5, 10]},
    })


def test_resume_reaches_the_same_weights(tmp_path, synthetic_csv):
    full = train(_cfg(synthetic_csv, tmp_path / "c"), tmp_path / "full")
    # interrupted run: stop after 2 epochs, then resume with the full budget
    train(_cfg(synthetic_csv, tmp_path / "c", epochs=2), tmp_path / "part")
    state = json.loads((tmp_path / "part" / "last" / "state.json").read_text())
    assert state["epoch"] == 2
    cfg = _cfg(synthetic_csv, tmp_path / "c")
    resumed = train(cfg, tmp_path / "part", resume=True)
    a = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert resumed["test"] == full["test"] and resumed["best_epoch"] == full["best_epoch"]


def test_run_folder_contract_and_protocol(tmp_path, synthetic_csv):
    result = train(_cfg(synthetic_csv, tmp_path / "c", epochs=2), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert set(saved) >= {"protocol", "best_epoch", "valid", "test"}
    assert {"ndcg@10", "hr@10", "mrr", "hr@1", "ndcg@5"} <= set(saved["test"])
    assert "full catalogue (40 items)" in saved["protocol"]["ranking"]
    assert "validation" in saved["protocol"]["selection"]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all("valid" in r for r in log)
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()


def test_time_bias_switched_off_without_timestamps_is_stated(tmp_path):
    seq = tmp_path / "Beauty.txt"
    seq.write_text("\n".join(f"{u} " + " ".join(str((u + s) % 30 + 1) for s in range(8)) for u in range(1, 41)) + "\n")
    cfg = ExperimentConfig.from_dict({
        "data": {"dataset": "custom", "source": str(seq), "format": "sequences", "cache_dir": str(tmp_path / "c")},
        "model": {"name": "hstu", "max_seq_len": 8, "embedding_dim": 8, "num_layers": 1, "time_bias": True},
        "train": {"epochs": 1, "batch_size": 8, "num_negatives": 4},
    })
    result = train(cfg, tmp_path / "run")
    assert any("time bias off" in n for n in result["protocol"]["notes"])


def test_bf16_training_runs_and_learns(tmp_path, synthetic_csv):
    result = train(_cfg(synthetic_csv, tmp_path / "c", epochs=6, precision="bf16"), tmp_path / "bf16")
    # the synthetic next item is a deterministic successor: a trained model beats chance (1/40) by far
    assert result["valid"]["hr@10"] > 0.5


def test_mixed_negatives_train_and_learn(tmp_path, synthetic_csv):
    result = train(_cfg(synthetic_csv, tmp_path / "c", epochs=6, loss="mixed", num_negatives=8), tmp_path / "mixed")
    assert result["valid"]["hr@10"] > 0.5  # chance is 10/40
    assert result["protocol"]["loss"].startswith("mixed negatives")


def test_refit_trains_on_validation_items_and_reports_separately(tmp_path, synthetic_csv):
    result = train(_cfg(synthetic_csv, tmp_path / "c", epochs=2, refit=True), tmp_path / "run")
    assert set(result["test_refit"]) == set(result["test"]) and "refit" in result["protocol"]
    assert (tmp_path / "run" / "refit" / "model" / "model.safetensors").exists()
    plain = train(_cfg(synthetic_csv, tmp_path / "c", epochs=2), tmp_path / "plain")
    assert plain["test"] == result["test"]  # the selected checkpoint's numbers are untouched


def test_include_valid_moves_the_training_end_by_one():
    import numpy as np

    from genrec.data.splits import train_end
    from genrec.data.prepare import SequenceData

    d = SequenceData(np.array([0, 5, 7]), np.arange(1, 8), None, np.array(list("abcdefg"), dtype=object), np.array(["u", "v"], dtype=object), {})
    assert train_end(d).tolist() == [3, 7] and train_end(d, include_valid=True).tolist() == [4, 7]


def test_train_leaves_the_callers_config_alone(tmp_path, synthetic_csv):
    cfg = _cfg(synthetic_csv, tmp_path / "c", epochs=1)
    train(cfg, tmp_path / "run")
    assert cfg.model.num_items == 0


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_packed_training_follows_the_padded_loss_curve(tmp_path, synthetic_csv):
    kw = dict(epochs=2, loss="full_softmax")
    a, b = _cfg(synthetic_csv, tmp_path / "c", **kw), _cfg(synthetic_csv, tmp_path / "c", pack=True, **kw)
    a.model.dropout = b.model.dropout = 0.0
    train(a, tmp_path / "padded")
    train(b, tmp_path / "packed")
    assert _losses(tmp_path / "packed") == pytest.approx(_losses(tmp_path / "padded"), rel=1e-4)


def test_compile_failure_falls_back_to_eager(tmp_path, synthetic_csv, monkeypatch, capsys):
    def broken_compile(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    plain = train(_cfg(synthetic_csv, tmp_path / "c", epochs=1), tmp_path / "eager")
    fallen = train(_cfg(synthetic_csv, tmp_path / "c", epochs=1, compile=True), tmp_path / "compiled")
    assert "torch.compile failed (RuntimeError: no compiler here); running eager" in capsys.readouterr().err
    assert fallen["test"] == plain["test"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_name_the_epoch_and_show_evaluation(tmp_path, synthetic_csv, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)  # bars are drawn only on a terminal
    train(_cfg(synthetic_csv, tmp_path / "c", epochs=2), tmp_path / "run")
    shown = terminal.getvalue()
    assert "epoch 1/2" in shown and "epoch 2/2" in shown
    assert "eval valid" in shown and "eval test" in shown


def test_training_curves_are_drawn_after_every_epoch(tmp_path, synthetic_csv):
    pytest.importorskip("matplotlib")
    train(_cfg(synthetic_csv, tmp_path / "c", epochs=2), tmp_path / "run")
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_without_matplotlib_the_curves_are_skipped_with_one_line(tmp_path, synthetic_csv, monkeypatch, capsys):
    from genrec.training import curves

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    curves._figure_class.cache_clear()
    try:
        train(_cfg(synthetic_csv, tmp_path / "c", epochs=2), tmp_path / "run")
    finally:
        curves._figure_class.cache_clear()
    assert capsys.readouterr().err.count("matplotlib is not installed") == 1
    assert (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "curves.png").exists()


def test_auto_precision_is_decided_once_and_written_into_the_protocol(tmp_path, synthetic_csv, monkeypatch):
    from genrec.training import precision

    monkeypatch.setattr(precision, "cpu_has_amx", lambda: False)
    precision.resolve_precision.cache_clear()
    try:
        auto = train(_cfg(synthetic_csv, tmp_path / "c", epochs=2, device="cpu"), tmp_path / "auto")
    finally:
        precision.resolve_precision.cache_clear()
    assert auto["protocol"]["precision"] == "fp32 (auto: no AMX on this CPU)"
    fp32 = train(_cfg(synthetic_csv, tmp_path / "c", epochs=2, device="cpu", precision="fp32"), tmp_path / "fp32")
    assert fp32["protocol"]["precision"] == "fp32"
    assert auto["test"] == fp32["test"] and auto["valid"] == fp32["valid"]  # auto -> fp32 is exactly fp32


def test_cold_items_are_stated_in_the_protocol(tmp_path, synthetic_csv):
    raw = _cfg(synthetic_csv, tmp_path / "c", epochs=1).to_dict()
    raw["data"]["cold_items"] = 0.25
    result = train(ExperimentConfig.from_dict(raw), tmp_path / "run")
    assert result["protocol"]["cold_items"].startswith("10 of 40 items (25%, a fixed draw) never occur in training")


COSINE = {"lr_schedule": "cosine", "warmup_epochs": 1}


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_trainer_sets_the_scheduled_rate_and_logs_it(tmp_path, synthetic_csv):
    cfg = _cfg(synthetic_csv, tmp_path / "c", **COSINE)
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


def test_a_constant_learning_rate_logs_no_lr(tmp_path, synthetic_csv):
    train(_cfg(synthetic_csv, tmp_path / "c", epochs=1), tmp_path / "run")
    assert "lr" not in _log(tmp_path / "run")[0]


class _Killed(Exception):
    pass


def test_a_resumed_scheduled_run_reaches_the_same_weights(tmp_path, synthetic_csv):
    cfg = _cfg(synthetic_csv, tmp_path / "c", **COSINE)
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


def test_resuming_a_cosine_run_with_another_horizon_is_refused(tmp_path, synthetic_csv):
    train(_cfg(synthetic_csv, tmp_path / "c", epochs=2, **COSINE), tmp_path / "run")
    with pytest.raises(ConfigError, match="another learning-rate schedule .cosine to 0 at epoch 4.* than the run's .cosine to 0 at epoch 2"):
        train(_cfg(synthetic_csv, tmp_path / "c", epochs=4, **COSINE), tmp_path / "run", resume=True)
    # a constant rate has no horizon: such a run may be resumed for more epochs (genrec train --resume ... train.epochs=N)
    train(_cfg(synthetic_csv, tmp_path / "c", epochs=1), tmp_path / "flat")
    assert train(_cfg(synthetic_csv, tmp_path / "c", epochs=2), tmp_path / "flat", resume=True)["epochs_run"] == 2
