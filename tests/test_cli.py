"""End to end through the real CLI: train -> eval -> recommend on the synthetic log."""

import argparse
import json
import shutil
import subprocess
import sys
from importlib import metadata

import pytest
import yaml

from genrec.cli import build_parser, main


@pytest.fixture
def config_file(tmp_path, synthetic_csv):
    cfg = {
        "data": {"dataset": "custom", "source": str(synthetic_csv), "format": "csv", "cache_dir": str(tmp_path / "cache"),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts", "rating": "stars"}},
        "model": {"name": "sasrec", "max_seq_len": 10, "embedding_dim": 16, "num_layers": 1, "dropout": 0.1},
        "train": {"epochs": 3, "batch_size": 16, "num_negatives": 8, "lr": 0.01},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_eval_recommend(tmp_path, config_file, capsys):
    out_dir = tmp_path / "run"
    code, out, _ = _run(capsys, "train", str(config_file), "model.embedding_dim=24", "train.epochs=4", "--out", str(out_dir))
    assert code == 0
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert json.loads(out)["test"] == metrics["test"]
    assert json.loads((out_dir / "best" / "model.json").read_text())["embedding_dim"] == 24
    assert metrics["test"]["hr@10"] > 0.5  # the successor pattern is learnt

    code, out, _ = _run(capsys, "eval", str(out_dir / "best"), "--split", "test")
    assert code == 0
    assert json.loads(out)["test"] == pytest.approx(metrics["test"])  # same numbers again

    code, out, _ = _run(capsys, "eval", str(out_dir / "best"), "eval.exclude_history=none", "--split", "valid")
    assert code == 0 and json.loads(out)["protocol"]["excluded_from_ranking"].startswith("nothing")
    code, _, err = _run(capsys, "eval", str(out_dir / "best"), "model.num_layers=3")
    assert code == 2 and "data.* and eval.* overrides only" in err

    code, out, _ = _run(capsys, "recommend", str(out_dir / "best"), "--history", "i3,i4,i5", "-k", "5")
    assert code == 0
    recs = json.loads(out)["items"]
    assert len(recs) == 5 and not {"i3", "i4", "i5"} & {r["item"] for r in recs}
    assert recs[0]["item"] == "i6"  # walks go i -> i+1
    assert recs == sorted(recs, key=lambda r: -r["score"])


def test_recommend_unknown_items(tmp_path, config_file, capsys):
    out_dir = tmp_path / "run"
    assert _run(capsys, "train", str(config_file), "train.epochs=1", "--out", str(out_dir))[0] == 0
    code, _, err = _run(capsys, "recommend", str(out_dir / "best"), "--history", "i3,nope,zzz")
    assert code == 2 and "2 item id(s) not in the model's catalogue: nope, zzz" in err
    code, out, _ = _run(capsys, "recommend", str(out_dir / "best"), "--history", "i3,nope", "--ignore-unknown", "-k", "3")
    assert code == 0 and len(json.loads(out)["items"]) == 3
    code, _, err = _run(capsys, "recommend", str(out_dir / "best"), "--history", "nope", "--ignore-unknown")
    assert code == 2 and "none of the history's item ids" in err


def test_resume_via_cli(tmp_path, config_file, capsys):
    out_dir = tmp_path / "run"
    assert _run(capsys, "train", str(config_file), "train.epochs=1", "--out", str(out_dir))[0] == 0
    code, out, _ = _run(capsys, "train", "--resume", "--out", str(out_dir), "train.epochs=2")
    assert code == 0 and json.loads(out)["epochs_run"] == 2


def test_bad_override_is_a_clear_error(config_file, capsys):
    code, _, err = _run(capsys, "train", str(config_file), "train.loss=hinge")
    assert code == 2 and "train.loss='hinge' is not one of" in err
    code, _, err = _run(capsys, "train", str(config_file), "eval.select_metric=ndcg@7")
    assert code == 2 and "eval.select_metric='ndcg@7' is not computed" in err
    code, _, err = _run(capsys, "train", str(config_file), "model.nope=1")
    assert code == 2 and "unknown keys in model" in err


def test_help_explains_itself():
    out = subprocess.run([sys.executable, "-m", "genrec.cli", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "metrics.json" in out.stdout and "--resume" in out.stdout
    out = subprocess.run([sys.executable, "-m", "genrec.cli", "--help"], capture_output=True, text=True)
    assert all(cmd in out.stdout for cmd in ("train", "eval", "recommend", "prepare", "datasets"))


def test_prepare_and_datasets(config_file, capsys):
    code, out, _ = _run(capsys, "prepare", str(config_file))
    stats = json.loads(out)["stats"]
    assert code == 0 and stats["users"] == 60 and stats["items"] == 40 and stats["has_timestamps"]
    code, out, _ = _run(capsys, "datasets")
    listed = json.loads(out)
    assert code == 0 and {"ml-1m", "ml-20m", "amazon-books", "beauty", "toys"} <= set(listed)
    assert listed["amazon-books"]["min_user_count"] == 5


@pytest.mark.parametrize("backbone", ["gpt", "llama"])
def test_new_backbones_train_and_serve_through_the_cli(tmp_path, config_file, capsys, backbone):
    out_dir = tmp_path / backbone
    code, out, _ = _run(capsys, "train", str(config_file), f"model.name={backbone}", "model.num_heads=2", "train.epochs=6",
                        "train.pack=true", "--out", str(out_dir))
    assert code == 0 and json.loads(out)["protocol"]["model"] == backbone
    assert json.loads(out)["test"]["hr@10"] > 0.5  # the successor pattern is learnt (chance: 10 of 37)
    code, out, _ = _run(capsys, "recommend", str(out_dir / "best"), "--history", "i3,i4,i5", "-k", "3")
    assert code == 0 and len(json.loads(out)["items"]) == 3


# ---- run folders: never lost, never mixed ------------------------------------------------------

def _epochs_logged(out_dir):
    return [json.loads(line)["epoch"] for line in (out_dir / "log.jsonl").read_text().splitlines()]


def test_a_finished_run_is_not_overwritten_unless_asked(tmp_path, config_file, capsys):
    out_dir = tmp_path / "run"
    assert _run(capsys, "train", str(config_file), "train.epochs=1", "--out", str(out_dir))[0] == 0
    before = (out_dir / "metrics.json").read_text()
    code, _, err = _run(capsys, "train", str(config_file), "train.epochs=2", "--out", str(out_dir))
    assert code == 2 and str(out_dir) in err and "--resume" in err and "--overwrite" in err
    assert (out_dir / "metrics.json").read_text() == before and _epochs_logged(out_dir) == [1]
    code, out, _ = _run(capsys, "train", str(config_file), "train.epochs=2", "--out", str(out_dir), "--overwrite")
    assert code == 0 and json.loads(out)["epochs_run"] == 2
    assert _epochs_logged(out_dir) == [1, 2]  # the old run's log is gone, not appended to


def test_a_folder_in_use_by_another_training_is_refused_at_once(tmp_path, config_file, capsys):
    from genrec.experiments.run_folder import claim

    out_dir = tmp_path / "run"
    with claim(out_dir):  # another training holds it (a second flock on the file conflicts, even in-process)
        code, _, err = _run(capsys, "train", str(config_file), "--out", str(out_dir), "--overwrite")
    assert code == 2 and f"{out_dir} is in use by another training" in err
    assert not (tmp_path / "cache").exists()  # refused before preparing the data


def test_an_unwritable_out_fails_before_the_data_is_prepared(tmp_path, config_file, capsys):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    code, _, err = _run(capsys, "train", str(config_file), "--out", str(tmp_path / "notes.txt" / "run"))
    assert code == 2 and f"--out {tmp_path / 'notes.txt' / 'run'}: cannot write the run folder there" in err
    assert not (tmp_path / "cache").exists()


def test_resume_of_a_run_killed_in_its_first_epoch_starts_from_the_beginning(tmp_path, config_file, capsys):
    out_dir = tmp_path / "run"
    assert _run(capsys, "train", str(config_file), "train.epochs=1", "--out", str(out_dir))[0] == 0
    for name in ("last", "best"):  # as if killed before epoch 1 ended: only config.yaml (+ a step log)
        shutil.rmtree(out_dir / name)
    for name in ("metrics.json", "curves.png"):
        (out_dir / name).unlink()
    code, out, err = _run(capsys, "train", "--resume", "--out", str(out_dir))
    assert code == 0 and "no last/ checkpoint yet" in err and "starting from the beginning" in err
    assert json.loads(out)["epochs_run"] == 1 and _epochs_logged(out_dir) == [1]


# ---- what users expect of a command line -------------------------------------------------------

def test_version(capsys):
    import genrec

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"genrec {metadata.version('genrec')}" == f"genrec {genrec.__version__}"


def test_subcommand_help_lines_are_whole_sentences():
    parser = build_parser()
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))._choices_actions
    assert {a.dest for a in choices} >= {"train", "eval", "recommend", "rank", "scale", "prepare", "datasets"}
    for action in choices:
        assert action.help.endswith("."), f"{action.dest}: help cut mid-sentence: {action.help!r}"
    assert next(a.help for a in choices if a.dest == "recommend").endswith("(comma-separated, oldest first).")


# ---- your own data: shipped custom configs, recognised columns, eval without the raw file ---------

def _movielens_style_csv(path):
    """The synthetic log as a MovieLens ratings.csv: ``userId,movieId,rating,timestamp``."""
    from conftest import synthetic_log

    path.write_text("\n".join(["userId,movieId,rating,timestamp"] + [f"{u},{i},{r},{t}" for u, i, t, r in synthetic_log()]) + "\n")
    return path


@pytest.mark.parametrize("template", ["hstu", "sasrec", "unified-hstu"])
def test_custom_configs_read_a_movielens_style_csv_without_column_flags(tmp_path, capsys, template):
    from pathlib import Path

    from genrec.config import load_config, run_name

    csv = _movielens_style_csv(tmp_path / "ratings.csv")
    config = Path(__file__).resolve().parents[1] / "configs" / "custom" / f"{template}.yaml"
    overrides = [f"data.source={csv}", f"data.cache_dir={tmp_path / 'cache'}"]
    assert run_name(load_config(config, overrides)) == f"ratings-{template}"  # named after the data
    code, out, _ = _run(capsys, "prepare", str(config), *overrides)
    stats = json.loads(out)["stats"]
    assert code == 0 and stats["has_timestamps"] and stats["has_ratings"] and stats["raw_interactions"] == len(csv.read_text().splitlines()) - 1
    if template == "hstu":  # and trains, end to end
        code, out, _ = _run(capsys, "train", str(config), *overrides, "train.epochs=1", "model.embedding_dim=16",
                            "model.num_layers=1", "train.num_threads=1", "--out", str(tmp_path / "run"))
        assert code == 0 and json.loads(out)["epochs_run"] == 1


def test_run_name_follows_the_data():
    from genrec.config import experiment_from_dict, run_name

    def name(source, config_name="custom-hstu", dataset="custom"):
        return run_name(experiment_from_dict({"name": config_name, "data": {"dataset": dataset, "source": source}}))

    assert name("data/ratings.csv") == "ratings-hstu" and name("/x/My Log.tsv.gz") == "My-Log-hstu"
    assert name("ratings.csv", "hstu") == "ratings-hstu" and name("ratings.csv", "mine-sasrec") == "ratings-mine-sasrec"
    assert name(None, "ml-100k-hstu", "ml-100k") == "ml-100k-hstu" and name("/mirror/u.data", "ml-100k-hstu", "ml-100k") == "ml-100k-hstu"


def test_eval_needs_no_raw_data_once_prepared(tmp_path, config_file, synthetic_csv, capsys):
    out_dir = tmp_path / "run"
    code, out, _ = _run(capsys, "train", str(config_file), "train.epochs=1", "--out", str(out_dir))
    assert code == 0
    test = json.loads(out)["test"]
    synthetic_csv.unlink()  # the raw log is gone; its prepared copy is in data.cache_dir
    code, out, err = _run(capsys, "eval", str(out_dir / "best"))
    assert code == 0 and json.loads(out)["test"] == pytest.approx(test) and "using its prepared copy" in err
    synthetic_csv.write_text("user_id,item_id,ts,stars\nu0,new1,1,5\nu0,new2,2,5\nu0,new3,3,4\n")  # other data, same path
    code, _, err = _run(capsys, "eval", str(out_dir / "best"))
    assert code == 2 and "the data changed since training" in err


def test_datasets_lists_custom(capsys):
    code, out, _ = _run(capsys, "datasets")
    custom = json.loads(out)["custom"]
    assert code == 0 and "genrec train configs/custom/hstu.yaml data.source=ratings.csv" in custom["description"]
    assert {"data.source", "data.columns.user", "data.delimiter", "data.has_header"} <= set(custom["keys"])
    assert "movieId" in custom["recognised_columns"]["item"]
