"""Silent wrong results: NaN scores, corrupted checkpoints and diverged training (newcomer issue).

Before these fixes a NaN model scored HR@1 = NDCG = MRR = 1.0 (``s >= target`` is false for NaN),
``recommend`` printed ``NaN`` (not JSON), a flipped byte in ``model.safetensors`` loaded silently,
and a NaN loss trained on.
"""

import json

import pytest
import torch
import yaml

from genrec import jsonio
from genrec.checkpoint import load_model
from genrec.cli import main
from genrec.data.batches import EvalBatch
from genrec.errors import CheckpointError
from genrec.evaluation.evaluator import target_ranks
from genrec.evaluation.metrics import metrics_from_ranks
from genrec.models import HSTUConfig, build_model


def _batch(items, targets, exclude):
    items = torch.tensor(items)
    return EvalBatch(torch.arange(len(items)), items, None, None, torch.tensor(targets), torch.tensor(exclude))


def test_nan_scores_rank_last():
    torch.manual_seed(0)
    model = build_model(HSTUConfig(num_items=6, max_seq_len=4, embedding_dim=8, num_heads=1, dropout=0.0, time_bias=False)).eval()
    with torch.no_grad():
        model.item_embedding.weight[:] = float("nan")  # every score NaN
    counts: dict = {}
    ranks = target_ranks(model, _batch([[1, 2, 0]], [3], [[1, 2]]), nonfinite=counts)
    # 6 items, 2 excluded, the target NaN too: it ranks behind the 3 other non-excluded items
    assert ranks.tolist() == [3.0]
    assert counts == {"scores": 6, "targets": 1}
    assert metrics_from_ranks(ranks, [1, 10])["hr@1"] == 0.0


def test_nan_items_rank_behind_a_finite_target():
    torch.manual_seed(0)
    model = build_model(HSTUConfig(num_items=6, max_seq_len=4, embedding_dim=8, num_heads=1, dropout=0.0, time_bias=False)).eval()
    with torch.no_grad():
        model.item_embedding.weight[4:6] = float("nan")  # items 4, 5 score NaN; target 3 stays finite
    user = model.user_vectors(torch.tensor([[1, 2]]))
    s = model.score_items(user, 1, 7)[0]
    finite_ahead = int(((s[[0, 1, 5]] >= s[2])).sum())  # items 1, 2, 6 (no exclusions here)
    counts: dict = {}
    ranks = target_ranks(model, _batch([[1, 2]], [3], [[0]]), nonfinite=counts)
    assert ranks.tolist() == [float(finite_ahead)]
    assert counts == {"scores": 2, "targets": 0}
    scores, ids = model.topk(user, 6)
    assert set(ids[0, -2:].tolist()) == {4, 5} and torch.isinf(scores[0, -2:]).all()  # NaN items last


def test_json_never_carries_nan(tmp_path):
    text = jsonio.dumps({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}}
    jsonio.write_json(tmp_path / "m.json", {"x": float("nan")})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": None}


@pytest.fixture
def trained(tmp_path, synthetic_csv, capsys):
    cfg = {
        "data": {"dataset": "custom", "source": str(synthetic_csv), "format": "csv", "cache_dir": str(tmp_path / "cache"),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts"}},
        "model": {"name": "sasrec", "max_seq_len": 8, "embedding_dim": 8, "num_layers": 1, "dropout": 0.0},
        "train": {"epochs": 1, "batch_size": 16, "num_negatives": 4, "num_threads": 1, "device": "cpu"},
        "eval": {"ks": [1, 10]},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    return path, tmp_path / "run"


def _flip_byte(path, offset_from_end=100):
    raw = bytearray(path.read_bytes())
    raw[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_corrupted_checkpoint_is_one_clear_error(trained, capsys):
    _, run = trained
    ckpt = run / "best" / "model.safetensors"
    load_model(run / "best")  # loads while intact
    _flip_byte(ckpt)
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        load_model(run / "best")
    assert main(["eval", str(run / "best")]) == 2
    err = capsys.readouterr().err
    assert "corrupted or truncated" in err and "Traceback" not in err
    ckpt.write_bytes(ckpt.read_bytes()[:50])  # truncated
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_model(run / "best")


def test_checkpoint_without_digests_is_still_checked_for_readability(trained):
    _, run = trained
    (run / "best" / "digests.json").unlink()  # a checkpoint written before digests existed
    load_model(run / "best")
    ckpt = run / "best" / "model.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(run / "best")


def test_nan_weights_give_zero_metrics_and_no_nan_json(trained, capsys):
    from safetensors.torch import load_file, save_file

    _, run = trained
    path = run / "best" / "model.safetensors"
    weights = load_file(str(path))
    weights = {k: torch.full_like(v, float("nan")) if k == "item_embedding.weight" else v for k, v in weights.items()}
    save_file(weights, str(path))
    (run / "best" / "digests.json").unlink()  # a deliberately edited checkpoint
    assert main(["eval", str(run / "best")]) == 0
    out, err = capsys.readouterr()
    test = json.loads(out)["test"]
    assert test["hr@1"] == 0.0 and test["mrr"] < 0.5 and test["nonfinite_scores"] > 0
    assert "non-finite" in err
    assert main(["recommend", str(run / "best"), "--history", "i1,i2"]) == 2
    assert "non-finite" in capsys.readouterr().err


def test_nonfinite_loss_stops_or_skips(trained, tmp_path, capsys):
    path, _ = trained
    # lr = inf: the first update turns the weights into inf/NaN, so step 2's loss is NaN
    assert main(["train", str(path), "train.lr=.inf", "--out", str(tmp_path / "stop")]) == 2
    assert "the training loss is nan" in capsys.readouterr().err
    assert main(["train", str(path), "train.lr=.inf", "train.nonfinite_loss=skip", "--out", str(tmp_path / "skip")]) == 0
    capsys.readouterr()
    log = [json.loads(line) for line in (tmp_path / "skip" / "log.jsonl").read_text().splitlines()]
    assert log[0]["skipped_nonfinite_steps"] > 0
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert metrics["test"]["nonfinite_scores"] > 0 and metrics["test"]["hr@1"] == 0.0
