"""End to end through the real CLI: train -> eval -> recommend on the synthetic log."""

import json
import subprocess
import sys

import pytest
import yaml

from genrec.cli import main


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
