"""Multi-behaviour end to end: the behaviour embedding (causal, required), training on target
behaviours only, the protocol, and a checkpoint answering requests with behaviour values."""

import json

import pytest
import torch
import yaml

from genrec import Recommender
from genrec.cli import main
from genrec.models import HSTU, HSTUConfig, SASRec, SASRecConfig


@pytest.mark.parametrize("cls, cfg_cls", [(HSTU, HSTUConfig), (SASRec, SASRecConfig)])
def test_behaviour_embedding_is_read_causally(cls, cfg_cls):
    torch.manual_seed(0)
    extra = {"time_bias": False} if cls is HSTU else {}
    model = cls(cfg_cls(num_items=20, max_seq_len=8, embedding_dim=16, num_heads=2, dropout=0.0,
                        behaviour_embedding=True, num_behaviours=3, **extra)).eval()
    items = torch.tensor([[3, 5, 7, 9]])
    beh = torch.tensor([[1, 2, 3, 1]])
    changed = beh.clone()
    changed[0, 2] = 2
    a, b = model.encode(items, behaviours=beh), model.encode(items, behaviours=changed)
    torch.testing.assert_close(a[:, :2], b[:, :2])  # positions before the change do not see it
    assert (a[:, 2:] - b[:, 2:]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="reads behaviours"):
        model.encode(items)
    assert model.reads_behaviours and model.embedding_parameters() > cls(cfg_cls(num_items=20, max_seq_len=8, embedding_dim=16)).embedding_parameters()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import conftest

    tmp = tmp_path_factory.mktemp("behaviours")
    csv = conftest.write_synthetic_csv(tmp / "log.csv")
    (tmp / "config.yaml").write_text(yaml.safe_dump({
        "data": {"dataset": "custom", "source": str(csv), "format": "csv", "cache_dir": str(tmp / "c"),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts", "rating": "stars"},
                 "behaviour": "rating", "behaviour_values": [1, 2, 3, 4, 5], "target_behaviours": [4, 5]},
        "model": {"name": "hstu", "max_seq_len": 8, "embedding_dim": 16, "num_layers": 1, "num_heads": 2, "behaviour_embedding": True, "time_bias": False},
        "train": {"epochs": 2, "batch_size": 16, "num_negatives": 8, "lr": 0.01},
    }))
    assert main(["train", str(tmp / "config.yaml"), "--out", str(tmp / "run")]) == 0
    return tmp / "run"


def test_training_states_the_behaviour_protocol(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    proto = metrics["protocol"]
    text = json.dumps(proto)
    assert "target-behaviour interactions" in text and "rating in [4.0, 5.0]" in text
    assert metrics["test"]["ndcg@10"] >= 0 and metrics["test"]["nonfinite_scores"] == 0
    model = json.loads((run_dir / "best" / "model.json").read_text())
    assert model["behaviour_embedding"] is True and model["num_behaviours"] == 5


def test_checkpoint_takes_behaviour_values_as_feedback(run_dir):
    rec = Recommender.load(run_dir / "best")
    assert rec.reads_behaviours
    top = rec.recommend(["i1", "i2", "i3"], k=5, feedback=[5, 2, 4])
    assert len(top) == 5 and all(i not in ("i1", "i2", "i3") for i, _ in top)
    other = rec.recommend(["i1", "i2", "i3"], k=5, feedback=[1, 1, 1])
    assert [s for _, s in top] != [s for _, s in other]  # the behaviours are read
    with pytest.raises(ValueError, match="reads behaviours"):
        rec.recommend(["i1", "i2", "i3"], k=5)
    with pytest.raises(ValueError, match=r"behaviour 7 is not one of .*\[1.0, 2.0, 3.0, 4.0, 5.0\]"):
        rec.recommend(["i1", "i2", "i3"], k=5, feedback=[5, 7, 4])
    batched = rec.recommend_many([rec.query(["i1", "i2", "i3"], feedback=[5, 2, 4]), rec.query(["i4"], feedback=[3])], k=5)
    assert [i for i, _ in batched[0]] == [i for i, _ in top]


def test_eval_of_the_checkpoint_matches_training(run_dir, capsys):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run_dir / "best"), "--split", "test"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test"] == pytest.approx(metrics["test"])  # same targets, same reads, same exclusions
    assert "target-behaviour interactions" in out["protocol"]["split"]


def test_positives_only_checkpoint_reads_only_target_behaviours(tmp_path):
    import conftest

    csv = conftest.write_synthetic_csv(tmp_path / "log.csv")
    cfg = {"data": {"dataset": "custom", "source": str(csv), "format": "csv", "cache_dir": str(tmp_path / "c"),
                    "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts", "rating": "stars"},
                    "behaviour": "rating", "behaviour_values": [1, 2, 3, 4, 5], "target_behaviours": [4, 5],
                    "read_behaviours": "targets"},
           "model": {"name": "sasrec", "max_seq_len": 8, "embedding_dim": 16, "num_layers": 1},
           "train": {"epochs": 1, "batch_size": 16, "num_negatives": 8}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run")]) == 0
    rec = Recommender.load(tmp_path / "run" / "best")
    q = rec.query(["i1", "i2", "i3"], feedback=[5, 1, 4])
    torch.testing.assert_close(rec.query_vectors([q]), rec.query_vectors([rec.query(["i1", "i3"], feedback=[5, 4])]))
    assert "i2" not in [i for i, _ in rec.recommend(["i1", "i2", "i3"], k=5, feedback=[5, 1, 4])]  # known: still excluded
    assert q.items.tolist() == [[rec.index["i1"], rec.index["i3"]]] and sorted(q.known) == sorted(rec.index[i] for i in ("i1", "i2", "i3"))
    with pytest.raises(ValueError, match="none of the history items has a target behaviour"):
        rec.recommend(["i1", "i2"], k=5, feedback=[1, 2])
