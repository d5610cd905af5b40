"""The inference layer is stateless and thread-safe: one Recommender shared by many threads gives
every request the answer a single-threaded call gives, bit for bit."""

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from genrec import Recommender
from genrec.cli import main
from genrec.errors import GenrecError
from genrec.models import DIN, DINConfig


def _train(tmp, csv, name, model, task=None, **extra):
    cfg = {
        "data": {"dataset": "custom", "source": str(csv), "format": "csv", "cache_dir": str(tmp / "cache"),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts", "rating": "stars"}},
        "model": {"name": "hstu", "embedding_dim": 16, "num_layers": 1, "num_heads": 2, **model},
        "train": {"epochs": 2, "batch_size": 16, "num_negatives": 8, "lr": 0.01, "patience": 0},
        **extra,
    }
    if task:
        cfg["task"] = task
        cfg["eval"] = {"ks": [1, 10], "holdout": 2, "select_metric": "ndcg@10+auc" if task["kind"] == "unified" else "auc"}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp / name)]) == 0
    return tmp / name / "best"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{retrieval: HSTU with time bias, unified: interleaved HSTU, ranking: ranking-only} -> best/."""
    import conftest

    tmp = tmp_path_factory.mktemp("threads")
    csv = conftest.write_synthetic_csv(tmp / "log.csv")
    return {
        "retrieval": _train(tmp, csv, "retrieval", {"max_seq_len": 6, "time_bias": True}),
        "unified": _train(tmp, csv, "unified", {"max_seq_len": 10, "time_bias": True}, {"kind": "unified"}),
        "ranking": _train(tmp, csv, "ranking", {"max_seq_len": 10, "time_bias": False}, {"kind": "ranking"}),
    }


def _requests(rec: Recommender, n: int = 96, seed: int = 0) -> list[dict]:
    """Different histories of different lengths (1..15, past the 6/10-item limits), timestamps,
    feedback (when the model reads it), some with a query time, unknown ids or k > catalogue."""
    rng = random.Random(seed)
    out = []
    for r in range(n):
        length = rng.randint(1, 15)
        history = [rng.choice(rec.item_ids) for _ in range(length)]
        if r % 7 == 3 and length > 1:
            history[rng.randrange(length)] = "not-an-item"
        t0 = 1_000_000 + rng.randint(0, 10_000)
        req = {
            "history": history,
            "timestamps": [t0 + 3600 * s + rng.randint(0, 600) for s in range(length)],
            "query_time": t0 + 3600 * length if r % 3 == 0 else None,
            "ignore_unknown": True,
            "feedback": [[float(rng.random() < 0.5) for _ in rec.task_names] for _ in range(length)] if rec.reads_feedback else None,
        }
        out.append(req)
    return out


def _recommend(rec, req, i):
    return rec.recommend(k=[1, 5, 50][i % 3], exclude_history=i % 5 != 0, **req)


def _rank(rec, req, i):
    rng = random.Random(i)
    cands = [rng.choice(rec.item_ids) for _ in range(rng.randint(1, 12))]
    return rec.rank(candidates=cands, **req)


def _concurrently(fn, requests, workers=8):
    order = list(range(len(requests)))
    random.Random(1).shuffle(order)  # not the single-threaded order
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {i: pool.submit(fn, requests[i], i) for i in order}
        return [futures[i].result() for i in range(len(requests))]


@pytest.mark.parametrize("kind", ["retrieval", "unified"])
def test_concurrent_requests_get_the_single_threaded_answers(checkpoints, kind):
    rec = Recommender.load(checkpoints[kind])
    requests = _requests(rec)
    calls = [lambda req, i: _recommend(rec, req, i), lambda req, i: rec.score(candidates=rec.item_ids[:7], **req)]
    if kind == "unified":
        assert rec.reads_feedback and rec.task_names == ["like"]
        calls.append(lambda req, i: _rank(rec, req, i))
    before = dict(vars(rec))
    for call in calls:
        expected = [call(req, i) for i, req in enumerate(requests)]
        assert _concurrently(call, requests) == expected  # exact: same floats, same order
    # stateless: no per-request attribute appeared, nothing was replaced, eval mode untouched
    assert vars(rec).keys() == before.keys() and all(vars(rec)[k] is v for k, v in before.items())
    assert not rec.model.training


class _MeetingIndex(dict):
    """An id index whose first lookup in each thread waits for the other thread: two requests are
    then both between "read the history" and "build the model inputs" at once."""

    def __init__(self, index, parties=2):
        super().__init__(index)
        self.barrier, self.seen = threading.Barrier(parties, timeout=10), threading.local()

    def get(self, key, default=None):
        if not getattr(self.seen, "done", False):
            self.seen.done = True
            self.barrier.wait()
        return super().get(key, default)


def test_interleaved_requests_do_not_see_each_others_history(checkpoints):
    """The old bug: the request's history length lived on ``self`` between parsing the ids and
    checking the feedback, so a concurrent request of another length failed or got its length."""
    rec = Recommender.load(checkpoints["unified"])
    short = {"history": ["i1", "i2"], "feedback": [1, 0], "timestamps": [10, 20]}
    long = {"history": ["i3", "i4", "i5", "i6", "i7"], "feedback": [1, 1, 0, 1, 0], "timestamps": [10, 20, 30, 40, 50]}
    expected = [rec.recommend(k=5, **short), rec.recommend(k=5, **long)]
    rec.index = _MeetingIndex(rec.index)
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = [f.result() for f in [pool.submit(rec.recommend, k=5, **short), pool.submit(rec.recommend, k=5, **long)]]
    assert got == expected


def test_retrieval_on_a_ranking_only_checkpoint_is_refused(checkpoints):
    rec = Recommender.load(checkpoints["ranking"])
    req = {"history": ["i1", "i2"], "feedback": [1, 0]}
    for call in (lambda: rec.recommend(k=3, **req), lambda: rec.score(candidates=["i3"], **req),
                 lambda: rec.user_vector(**req), rec.item_vectors):
        with pytest.raises(GenrecError, match="ranking-only model .* use rank"):
            call()
    assert 0 < rec.rank(candidates=["i3"], **req)[0]["like"] < 1  # what it does answer
    din = Recommender(DIN(DINConfig(num_items=3, max_seq_len=4, embedding_dim=8)), ["a", "b", "c"])
    with pytest.raises(GenrecError, match="ranking-only model \\(DIN\\)"):
        din.recommend(["a"], feedback=[1])


def test_rank_on_a_retrieval_only_checkpoint_is_refused(checkpoints):
    rec = Recommender.load(checkpoints["retrieval"])
    assert not rec.reads_feedback and rec.task_names == []
    with pytest.raises(GenrecError, match="retrieval-only model .* use score"):
        rec.rank(["i1"], ["i2"], timestamps=[1])
