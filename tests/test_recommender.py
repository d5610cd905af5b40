"""The Python API over a checkpoint: Recommender.load(path).recommend / score."""

import pytest

from genrec import Recommender
from genrec.config import ExperimentConfig
from genrec.errors import UnknownItemError
from genrec.training.trainer import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import conftest

    tmp = tmp_path_factory.mktemp("api")
    csv = tmp / "log.csv"
    csv.write_text("user_id,item_id,ts\n" + "\n".join(f"{u},{i},{t}" for u, i, t, _ in conftest.synthetic_log()) + "\n")
    cfg = ExperimentConfig.from_dict({
        "data": {"dataset": "custom", "source": str(csv), "format": "csv", "cache_dir": str(tmp / "c"),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts"}},
        "model": {"name": "hstu", "max_seq_len": 6, "embedding_dim": 16, "num_layers": 1, "num_heads": 2, "time_bias": True},
        "train": {"epochs": 3, "batch_size": 16, "num_negatives": 8, "lr": 0.01},
    })
    train(cfg, tmp / "run")
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
