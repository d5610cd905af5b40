"""The Python API over a checkpoint: Recommender.load(path).recommend / score / item_vectors."""

import pytest
import torch
import yaml

from genrec import Recommender
from genrec.cli import main
from genrec.errors import GenrecError, UnknownItemError
from genrec.models import HSTU, HSTUConfig


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import conftest

    tmp = tmp_path_factory.mktemp("api")
    csv = tmp / "log.csv"
    csv.write_text("user_id,item_id,ts\n" + "\n".join(f"{u},{i},{t}" for u, i, t, _ in conftest.synthetic_log()) + "\n")
    (tmp / "config.yaml").write_text(yaml.safe_dump({
        "data": {"dataset": "custom", "source": str(csv), "format": "csv", "cache_dir": str(tmp / "c"),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts"}},
        "model": {"name": "hstu", "max_seq_len": 6, "embedding_dim": 16, "num_layers": 1, "num_heads": 2, "time_bias": True},
        "train": {"epochs": 3, "batch_size": 16, "num_negatives": 8, "lr": 0.01},
    }))
    assert main(["train", str(tmp / "config.yaml"), "--out", str(tmp / "run")]) == 0
    return tmp / "run"


def test_recommend_and_score_agree(run_dir):
    rec = Recommender.load(run_dir / "best")
    history, ts = ["i1", "i2", "i3"], [1000, 4600, 8200]
    top = rec.recommend(history, k=5, timestamps=ts)
    assert len(top) == 5 and all(i not in history for i, _ in top)
    scores = rec.score(history, [i for i, _ in top], timestamps=ts)
    assert scores == pytest.approx([s for _, s in top], abs=1e-5)


def test_long_history_keeps_newest_items(run_dir):
    rec = Recommender.load(run_dir / "best")
    long = [f"i{k}" for k in range(12)]
    ts = [1000 + 3600 * k for k in range(12)]
    assert rec.score(long, ["i20"], timestamps=ts) == pytest.approx(rec.score(long[-6:], ["i20"], timestamps=ts[-6:]), abs=1e-6)


def test_bad_requests_are_explained(run_dir):
    rec = Recommender.load(run_dir / "best")
    with pytest.raises(ValueError, match="timestamps"):
        rec.recommend(["i1", "i2"])
    with pytest.raises(ValueError, match="empty"):
        rec.recommend([], timestamps=[])
    with pytest.raises(ValueError, match="k=0"):
        rec.recommend(["i1"], k=0, timestamps=[1])
    with pytest.raises(UnknownItemError, match="x9"):
        rec.score(["i1"], ["x9"], timestamps=[1])
    assert len(rec.recommend(["i1", "zz"], k=3, timestamps=[1, 2], ignore_unknown=True)) == 3


def test_item_vectors_score_like_the_query(run_dir):
    rec = Recommender.load(run_dir / "best")
    vecs = rec.item_vectors()  # what an ANN index is built from
    assert vecs.shape == (len(rec.item_ids), 16)
    user, known = rec.user_vector(["i1", "i2"], timestamps=[10, 20])
    assert known == [rec.index["i1"], rec.index["i2"]]
    top = rec.recommend(["i1", "i2"], k=3, timestamps=[10, 20], exclude_history=False)
    scores = (user @ vecs.T)[0]  # [I] inner products, row r = item_ids[r]
    assert [rec.item_ids[i] for i in scores.topk(3).indices.tolist()] == [i for i, _ in top]
    assert scores.topk(3).values.tolist() == pytest.approx([s for _, s in top], abs=1e-6)


def test_item_ids_must_fit_the_model():
    model = HSTU(HSTUConfig(num_items=3, max_seq_len=4, embedding_dim=8, num_heads=1, time_bias=False)).train()
    with pytest.raises(GenrecError, match="2 item ids for a model over 3 items"):
        Recommender(model, ["a", "b"])
    with pytest.raises(GenrecError, match="repeats an id"):
        Recommender(model, ["a", "b", "a"])
    rec = Recommender(model, ["a", "b", "c"])
    assert not model.training  # eval mode, set once here
    assert [i for i, _ in rec.recommend(["a"], k=5)] in (["b", "c"], ["c", "b"])  # k past the catalogue
    assert not torch.is_inference_mode_enabled()  # switched on per call only
