"""genrec tune: the space file's validation, a study that resumes and never tests its trials,
best.yaml that reproduces, pruning, an interrupted trial continued, two processes on one study."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="genrec tune needs Optuna (pip install 'genrec[tune]')")

from genrec.cli import main  # noqa: E402
from genrec.config import load_config  # noqa: E402
from genrec.errors import ConfigError  # noqa: E402
from genrec.experiments.tune import Space  # noqa: E402
from genrec.experiments.tune import study as tune_study  # noqa: E402
from genrec.experiments.tune.conclude import write_trials  # noqa: E402
from genrec.experiments.tune.trial import TrialTrainer  # noqa: E402

from conftest import tiny_run_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPACE = {
    "train.lr": {"type": "float", "low": 0.005, "high": 0.05, "log": True},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
    "train.loss": {"type": "categorical", "choices": ["sampled_softmax", "full_softmax"]},
    "train.num_negatives": {"type": "int", "low": 4, "high": 16, "log": True, "when": {"train.loss": "sampled_softmax"}},
}
PLOT_STUDY = tune_study.plot_study


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """Drawing costs more than a tiny epoch: each trial's curves.png is off, and the study's plots
    are drawn in one test only."""
    monkeypatch.setattr("genrec.training.curves.plot", lambda log, png: False)
    monkeypatch.setattr(tune_study, "plot_study", lambda study, out: None)


@pytest.fixture
def tiny(tmp_path, synthetic_csv):
    """(base config, space file) of a 2-epoch HSTU on the synthetic log."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return tiny_run_config(tmp_path, synthetic_csv), space


def tune(config, space, out, *args) -> int:
    return main(["tune", str(config), *args, "--space", str(space), "--out", str(out), "--study", "tiny", "--warmup", "0"])


def trials_of(out) -> list:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}").get_trials()


def read_json(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("key, spec, message", [
    ("train.lrr", {"type": "float", "low": 0.1, "high": 1.0}, "train.lrr is not a config field"),
    ("data.min_user_count", {"type": "int", "low": 1, "high": 5}, "data.min_user_count: tunable keys are"),
    ("train.seed", {"type": "int", "low": 1, "high": 5}, "train.seed cannot be tuned"),
    ("train.lr", {"type": "float", "low": 0.0, "high": 1.0, "log": True}, "train.lr: log=true needs low > 0"),
    ("train.lr", {"type": "float", "low": 1.0, "high": 0.1}, "train.lr: low=1.0 is above high=0.1"),
    ("train.lr", {"type": "uniform", "low": 0.1, "high": 1.0}, "train.lr: type='uniform' is not one of"),
    ("train.lr", {"type": "float", "low": 0.1, "hi": 1.0}, "train.lr: unknown fields ['hi']"),
    ("train.num_negatives", {"type": "float", "low": 4, "high": 8}, "train.num_negatives is an integer field"),
    ("model.dropout", {"type": "float", "low": 0.1, "high": 1.0}, "model.dropout: 1.0 does not make a valid config"),
    ("train.loss", {"type": "categorical", "choices": ["full_softmax", "hinge"]}, "train.loss: 'hinge' does not make a valid"),
    ("train.loss", {"type": "categorical", "choices": []}, "train.loss: categorical needs a non-empty list"),
    ("train.num_negatives", {"type": "int", "low": 4, "high": 8, "when": {"train.lr": 0.1}}, "train.num_negatives: when names 'train.lr'"),
])
def test_space_errors_name_the_key(tiny, tmp_path, capsys, key, spec, message):
    config, _ = tiny
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train.lr": {"type": "float", "low": 0.001, "high": 0.01}, key: spec}))
    with pytest.raises(ConfigError, match=re.escape(message)):
        Space.load(bad, load_config(config))
    assert tune(config, bad, tmp_path / "study", "--trials", "1") == 2  # the CLI refuses it before any trial
    assert message in capsys.readouterr().err and not (tmp_path / "study" / "trials").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "spaces").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_spaces_load_against_the_config_of_their_command(path):
    command = shlex.split(path.read_text().splitlines()[0].removeprefix("#"))
    assert command[:2] == ["genrec", "tune"] and command[command.index("--space") + 1] == f"configs/spaces/{path.name}"
    space = Space.load(path, load_config(ROOT / command[2], command[3:command.index("--space")]))
    assert {"train.lr", "model.dropout", "model.num_layers"} <= {p.key for p in space.params}  # (the loss may be fixed)


def test_study_resumes_never_tests_trials_and_best_yaml_reproduces(tiny, tmp_path, capsys, monkeypatch):
    config, space = tiny
    out = tmp_path / "study"
    assert tune(config, space, out, "--trials", "2") == 0
    first = json.loads(capsys.readouterr().out)
    assert (out / "study.db").is_file() and first["complete"] + first["pruned"] == 2
    final = read_json(out / "final" / "metrics.json")
    assert final["protocol"]["selection"].startswith("selected by genrec tune on validation, 2 trials")
    assert final["protocol"]["tuning"]["test_evaluations"] == 1 and set(final["test"]) >= {"ndcg@10", "hr@10"}
    # a continued study keeps its base config (a changed one would make the trials incomparable)
    assert tune(config, space, out, "train.batch_size=8", "--trials", "3") == 2
    assert "was started with another config (differs in train.batch_size)" in capsys.readouterr().err
    # run again with more trials: the study continues (numbering and all), nothing is retrained
    stamp = (out / "trials" / "0000" / "metrics.json").stat().st_mtime_ns
    monkeypatch.setattr(tune_study, "plot_study", PLOT_STUDY)  # the study's plots this time
    assert tune(config, space, out, "--trials", "3") == 0
    summary = json.loads(capsys.readouterr().out)
    assert [t.number for t in trials_of(out)] == [0, 1, 2] and summary["complete"] + summary["pruned"] == 3
    assert (out / "trials" / "0000" / "metrics.json").stat().st_mtime_ns == stamp
    for t in trials_of(out):  # every trial is a run folder with validation metrics and no test metrics
        folder = out / "trials" / f"{t.number:04d}"
        metrics = read_json(folder / "metrics.json")
        assert "test" not in metrics and "test" not in (folder / "log.jsonl").read_text()
        assert metrics["valid"]["ndcg@10"] == pytest.approx(t.value)
        assert (folder / "best").is_dir() and {k: load_config(folder / "config.yaml").to_dict()[k.split(".")[0]][k.split(".")[1]]
                                                for k in t.params} == t.params
    best = max(trials_of(out), key=lambda t: t.value)
    header = (out / "best.yaml").read_text().splitlines()[:3]
    assert header[0] == f"# genrec train {out / 'best.yaml'}" and f"trial {best.number} of 3" in header[1]
    assert f"{best.value:.4f}" in header[1] and "--trials 3" in header[2]
    # best.yaml, trained by genrec train, reproduces the best trial's validation and the final test
    assert main(["train", str(out / "best.yaml"), "--out", str(tmp_path / "again")]) == 0
    again = json.loads(capsys.readouterr().out)
    final = read_json(out / "final" / "metrics.json")
    assert again["valid"]["ndcg@10"] == pytest.approx(best.value, abs=1e-9)
    assert again["test"] == pytest.approx(final["test"]) and final["protocol"]["tuning"]["trial"] == best.number
    tested_again = best.number != first["best"]["trial"]  # the test is evaluated again only for a new selection
    assert final["protocol"]["tuning"]["trials"] == 3 and final["protocol"]["tuning"]["test_evaluations"] == 1 + tested_again
    assert {p.name for p in out.glob("*.png")} == {"history.png", "intermediate.png", "importances.png"}
    rows = [line for line in (out / "trials.md").read_text().splitlines() if line.startswith("| ") and not line.startswith("| trial")]
    assert [int(r.split("|")[1]) for r in rows] == [0, 1, 2]  # one row per trial, its best validation as stored
    assert all(f"{t.value:.4f}" in rows[t.number] for t in trials_of(out) if t.value is not None)
    assert "CPU-hours (1 thread(s) per trial" in (out / "trials.md").read_text()  # the tiny config: num_threads 1


def test_trials_table_by_hand(tmp_path):
    study = optuna.create_study(study_name="hand", direction="maximize")
    pruned = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    pruned.report(0.5, 2)
    pruned.report(0.3, 4)  # pruned on a drop: Optuna keeps 0.3 as the value; the table shows the best, 0.5 at epoch 2
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    done = study.ask()
    done.set_user_attr("best_epoch", 6)
    done.set_user_attr("epochs_run", 10)
    study.tell(done, 0.7)
    failed = study.ask()
    failed.report(0.2, 2)
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    study.ask()  # still running
    text = write_trials(study, tmp_path, 2).read_text()
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| ") and "trial |" not in line]
    lr = f"train.lr={study.trials[0].params['train.lr']:.4g}"
    assert [r[:5] + [r[6]] for r in rows] == [["0", "pruned", "0.5000", "2", "4", lr], ["1", "complete", "0.7000", "6", "10", ""],
                                           ["2", "fail", "0.2000", "2", "2", ""], ["3", "running", "-", "-", "-", ""]]
    assert rows[0][5] != "-" and rows[1][5] != "-" and rows[2][5] == "-" and rows[3][5] == "-"  # failed and running: not timed
    assert "1 failed or interrupted trial(s) not timed" in text and "(2 thread(s) per trial" in text


def test_a_study_started_before_a_config_field_existed_continues(tiny, tmp_path, capsys):
    config, space = tiny
    out = tmp_path / "study"
    assert tune(config, space, out, "--trials", "1") == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    held = study.user_attrs["config"]
    del held["train"]["lr_schedule"]  # as stored by a genrec from before the field
    study.set_user_attr("config", held)
    capsys.readouterr()
    # the new field at anything but its default would change the trials: refused
    assert tune(config, space, out, "train.lr_schedule=cosine", "--trials", "2") == 2
    assert "was started with another config (differs in train.lr_schedule)" in capsys.readouterr().err
    # at its default it changes nothing the trials ran: the study goes on
    assert tune(config, space, out, "--trials", "2") == 0
    assert [t.number for t in trials_of(out)] == [0, 1]


def test_a_bad_range_is_pruned_on_the_validation_curve(tiny, tmp_path, capsys):
    config, _ = tiny
    space, out = tmp_path / "lr.yaml", tmp_path / "study"
    space.write_text(yaml.safe_dump({"train.lr": {"type": "float", "low": 1.0e-9, "high": 0.05, "log": True}}))
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    for lr in (0.05, 0.05, 1.0e-9):  # two good trials first (the median pruner's start-up), then the bad end
        study.enqueue_trial({"train.lr": lr})
    assert tune(config, space, out, "train.epochs=3", "--trials", "3", "--storage", f"sqlite:///{tmp_path / 'study.db'}") == 0
    summary = json.loads(capsys.readouterr().out)
    states = [t.state for t in study.get_trials()]
    assert states[:2] == [optuna.trial.TrialState.COMPLETE] * 2 and states[2] == optuna.trial.TrialState.PRUNED
    assert summary["pruned"] == 1 and summary["best"]["params"]["train.lr"] == 0.05
    pruned = read_json(out / "trials" / "0002" / "metrics.json")
    assert pruned["pruned_at_epoch"] == 1 and pruned["epochs_run"] == 1 and "test" not in pruned
    assert len((out / "trials" / "0002" / "log.jsonl").read_text().splitlines()) == 1


def test_an_interrupted_trial_continues_from_its_last_epoch(tiny, tmp_path, capsys, monkeypatch):
    config, space = tiny
    out = tmp_path / "study"
    real = TrialTrainer.train_epoch

    def killed_in_second_epoch(self, epoch):
        if epoch == 1:
            raise SystemExit("killed")  # like a kill: Optuna's trial stays RUNNING and the folder lock is freed
        return real(self, epoch)

    monkeypatch.setattr(TrialTrainer, "train_epoch", killed_in_second_epoch)
    with pytest.raises(SystemExit):
        tune(config, space, out, "--trials", "1")
    assert trials_of(out)[0].state == optuna.trial.TrialState.RUNNING
    monkeypatch.setattr(TrialTrainer, "train_epoch", real)
    assert tune(config, space, out, "--trials", "1") == 0
    capsys.readouterr()
    interrupted, resumed = trials_of(out)
    assert interrupted.state == optuna.trial.TrialState.FAIL and interrupted.user_attrs["interrupted"]
    assert resumed.state == optuna.trial.TrialState.COMPLETE and resumed.user_attrs["resumes"] == 0
    assert resumed.params == interrupted.params and not (out / "trials" / "0000").exists()
    log = [json.loads(line) for line in (out / "trials" / "0001" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and sorted(resumed.intermediate_values) == [1, 2]


def _worker(config, space, out):
    os._exit(tune(config, space, out, "--trials", "4"))


def test_two_processes_tune_one_sqlite_study(tiny, tmp_path, capsys):
    config, space = tiny
    out = tmp_path / "study"
    fork = multiprocessing.get_context("fork")  # warm children: torch is already imported here
    workers = [fork.Process(target=_worker, args=(config, space, out)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    trials = trials_of(out)
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials))) and 4 <= len(trials) <= 5  # each trial number once; overshoot <= 1
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"{n:04d}" for n in numbers]
    final = read_json(out / "final" / "metrics.json")
    assert final["protocol"]["tuning"]["test_evaluations"] == 1 and final["protocol"]["tuning"]["trials"] == len(trials)


def test_a_searched_width_carries_the_fields_the_config_left_out(tmp_path):
    """SASRec's ffn_dim (0 = embedding_dim) and HSTU's attention/value widths (0 = D / heads) follow a
    searched width or head count when the config leaves them out; a value the config writes, or
    one the space sets, stays."""
    from genrec.experiments.tune import with_params
    from genrec.experiments.tune.space import left_out

    path = tmp_path / "sasrec.yaml"
    path.write_text("model: {name: sasrec, embedding_dim: 64}\n")
    sasrec = load_config(path)
    follow = left_out(path, [], sasrec)
    assert follow == ["ffn_dim"] and sasrec.model.ffn_dim == 64
    assert with_params(sasrec, {"model.embedding_dim": 128}, follow).model.ffn_dim == 128
    assert with_params(sasrec, {"model.embedding_dim": 128}).model.ffn_dim == 64  # a study that recorded nothing: as before
    assert with_params(sasrec, {"model.embedding_dim": 128, "model.ffn_dim": 32}, follow).model.ffn_dim == 32
    assert left_out(path, ["model.ffn_dim=64"], load_config(path, ["model.ffn_dim=64"])) == []  # written: kept
    path.write_text("model: {name: hstu, embedding_dim: 64, num_heads: 4, attention_dim: 16}\n")
    hstu = load_config(path)
    follow = left_out(path, [], hstu)
    assert follow == ["value_dim"]  # attention_dim is written (equal to D / heads, still kept)
    wide = with_params(hstu, {"model.num_heads": 2}, follow)
    assert (wide.model.attention_dim, wide.model.value_dim) == (16, 32)
    path.write_text("model: {name: gpt, embedding_dim: 32, num_heads: 2}\n")
    gpt = load_config(path)
    assert with_params(gpt, {"model.embedding_dim": 64}, left_out(path, [], gpt)).model.ffn_dim == 256
    path.write_text("model: {name: llama, embedding_dim: 32, num_heads: 2, ffn_dim: 0}\n")
    llama = load_config(path)
    assert with_params(llama, {"model.embedding_dim": 48}, left_out(path, [], llama)).model.ffn_dim == 128


def test_a_study_records_the_fields_that_follow_and_an_older_study_keeps_its_values(tiny, tmp_path):
    import optuna

    from genrec.experiments.tune.conclude import following
    from genrec.experiments.tune.study import TuneSettings, _open_study, _storage

    base = load_config(tiny[0])
    space = Space.load(tiny[1], base)
    storage = _storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = _open_study(storage, "u", "new", base, space, TuneSettings(trials=1), ["value_dim"])
    assert following(study) == ["value_dim"]
    assert following(_open_study(storage, "u", "new", base, space, TuneSettings(trials=1), [])) == ["value_dim"]  # kept
    old = optuna.create_study(storage=storage, study_name="old", direction="maximize")
    old.set_user_attr("config", tune_study._fixed(base))  # as a study started before the record existed
    old.set_user_attr("space", space.canonical)
    assert following(_open_study(storage, "u", "old", base, space, TuneSettings(trials=1), ["value_dim"])) == []
