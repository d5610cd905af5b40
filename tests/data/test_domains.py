"""Multi-domain data: the join, training-only context, per-domain ranking ranges, cold rows."""

import json

import numpy as np
import pytest
import torch

from genrec.config import DataConfig, ExperimentConfig
from genrec.data.batches import TrainBatches, eval_batches
from genrec.data.splits import split_block
from genrec.data.behaviours import with_behaviours
from genrec.data.domains import cold_rows, merge_domains, rows_with_context, without_context
from genrec.data.loaders import read_p5_sequences
from genrec.data.prepare import SequenceData, load_prepared, prepare
from genrec.errors import ConfigError, DataFormatError


def _domain(users: list[str], rows: list[list[int]], ts: list[list[int]] | None = None) -> SequenceData:
    items = np.concatenate([np.asarray(r) for r in rows])
    lengths = [len(r) for r in rows]
    num_items = int(items.max())
    return SequenceData(np.concatenate([[0], np.cumsum(lengths)]), items,
                        None if ts is None else np.concatenate([np.asarray(t) for t in ts]),
                        np.asarray([f"x{i}" for i in range(1, num_items + 1)], dtype=object), np.asarray(users, dtype=object), {})


def _two():
    a = _domain(["ann", "bob"], [[1, 2, 3, 4, 5], [2, 3, 4]])  # 5 items
    b = _domain(["cat", "ann"], [[1, 2, 3], [3, 1, 2, 4]])  # 4 items
    with pytest.warns(UserWarning, match="4 raw item id"):  # x1..x4 in both: kept apart, and said so
        return merge_domains([("a", a), ("b", b)])


def test_join_keeps_items_apart_and_reads_only_other_domains_training_items():
    m = _two()
    assert m.num_items == 9 and m.item_ids[5] == "b:x1"  # b's items follow a's
    assert list(m.user_ids) == ["a:ann", "a:bob", "b:cat", "b:ann"]
    rows = [m.items[m.offsets[u] : m.offsets[u + 1]].tolist() for u in range(m.num_users)]
    codes = [m.actions[m.offsets[u] : m.offsets[u + 1], 0].astype(int).tolist() for u in range(m.num_users)]
    # ann in a: her b items 3 1 (training; 2 4 are b's validation and test) come first as context (code 2 + 1)
    assert rows[0] == [8, 6, 1, 2, 3, 4, 5] and codes[0] == [3, 3, 0, 0, 0, 0, 0]
    # ann in b: her a training items 1 2 3 (4, 5 held out in a) as context (code 2 + 0)
    assert rows[3] == [1, 2, 3, 8, 6, 7, 9] and codes[3] == [2, 2, 2, 1, 1, 1, 1]
    assert rows[1] == [2, 3, 4] and rows[2] == [6, 7, 8]
    assert rows_with_context(m).tolist() == [True, False, False, True]
    assert m.stats["domains"][1] == {"name": "b", "first_item": 6, "end_item": 10, "users": 2, "interactions": 7,
                                     "users_in_other_domains": 1, "source": None}
    assert m.stats["shared_raw_item_ids"] == 4 and m.item_ids[0] == "a:x1"


def test_splits_targets_and_ranking_ranges_follow_the_rows_domain():
    d = with_behaviours(_two(), DataConfig(domains=["a", "b"]))
    users, test = split_block(d, "test")
    _, valid = split_block(d, "valid")
    assert d.items[test].tolist() == [5, 4, 8, 9] and d.items[valid].tolist() == [4, 3, 7, 7]
    tb = TrainBatches(d, max_seq_len=10, batch_size=10)
    (batch,) = list(tb.epoch(0, 0))
    got = sorted((r[r != 0].tolist(), t[r != 0].tolist()) for r, t in zip(batch.items.numpy(), batch.targets.numpy()))
    # context positions have no target; a's ann trains on 1 2 3 after her context
    assert ([8, 6, 1, 2], [0, 1, 2, 3]) in got and ([1, 2, 3, 8], [0, 0, 8, 6]) in got
    (ev,) = list(eval_batches(d, "test", max_seq_len=10, batch_size=10))
    ranges = {int(t): r for t, r in zip(ev.targets, ev.item_range.tolist())}
    assert ranges[5] == [1, 6] and ranges[9] == [6, 10]


def test_target_ranks_only_count_the_targets_domain():
    from genrec.evaluation.evaluator import per_domain, target_ranks
    from genrec.models.base import ModelConfig, SequentialRecommender

    class Fixed(SequentialRecommender):  # every item scores its id: higher ids rank first
        def user_vectors(self, items, timestamps=None, query_time=None, labels=None, behaviours=None):
            return torch.ones(items.size(0), 1)

        def score_items(self, user, start=1, end=None):
            return torch.arange(start, end, dtype=torch.float32).expand(user.size(0), -1).clone()

        def score_candidates(self, user, candidates):
            return candidates.float()

    d = with_behaviours(_two(), DataConfig(domains=["a", "b"]))
    model = Fixed(ModelConfig(name="fixed", num_items=9))
    (ev,) = list(eval_batches(d, "test", max_seq_len=10, batch_size=10, exclude_history="none"))
    ranks = dict(zip(ev.targets.tolist(), target_ranks(model, ev).tolist()))
    assert ranks == {5: 0.0, 4: 1.0, 8: 1.0, 9: 0.0}  # b's items (6..9) never outrank an a target
    cfg = ExperimentConfig().eval
    out = per_domain(torch.tensor([0.0, 1.0, 1.0, 0.0]), d, "test", cfg)
    assert out["a/users"] == 2 and out["b/hr@1"] == 0.5


def test_cold_rows_keep_context_and_the_last_items():
    d = _two()
    cold = cold_rows(d, keep=2)
    rows = [cold.items[cold.offsets[u] : cold.offsets[u + 1]].tolist() for u in range(cold.num_users)]
    assert list(cold.user_ids) == ["a:ann", "b:ann"] and rows == [[8, 6, 3, 4, 5], [1, 2, 3, 6, 7, 9]]
    d = with_behaviours(cold, DataConfig(domains=["a", "b"]))
    (ev,) = list(eval_batches(d, "test", max_seq_len=10, batch_size=10))
    assert sorted(ev.targets.tolist()) == [5, 9]
    only_bob = cold_rows(_two(), keep=2, rows=np.array([False, True, False, False]))
    assert list(only_bob.user_ids) == ["a:bob"]
    bare = cold_rows(d, keep=2, context=False)  # the same cut without the other domain's items
    assert [bare.items[bare.offsets[u] : bare.offsets[u + 1]].tolist() for u in range(bare.num_users)] == [[3, 4, 5], [6, 7, 9]]


def test_without_context_keeps_every_own_item_and_the_splits():
    d = _two()
    own = without_context(d)
    rows = [own.items[own.offsets[u] : own.offsets[u + 1]].tolist() for u in range(own.num_users)]
    assert list(own.user_ids) == ["a:ann", "b:ann"] and rows == [[1, 2, 3, 4, 5], [8, 6, 7, 9]]
    assert set(own.actions[:, 0].astype(int).tolist()) == {0, 1}  # own-domain codes only
    own = with_behaviours(own, DataConfig(domains=["a", "b"]))
    (ev,) = list(eval_batches(own, "test", max_seq_len=10, batch_size=10))
    assert sorted(ev.targets.tolist()) == [5, 9]  # the same test targets as with the context


def test_timestamped_domains_are_merged_by_time():
    a = _domain(["ann"], [[1, 2, 3, 4]], [[10, 30, 50, 70]])
    b = _domain(["ann"], [[1, 2, 3]], [[20, 40, 60]])
    m = merge_domains([("a", a), ("b", b)])
    # ann in a reads b's one training item (b's item 1 = id 5, at time 20) where it happened
    assert m.items[: m.offsets[1]].tolist() == [1, 5, 2, 3, 4] and m.timestamps[: m.offsets[1]].tolist() == [10, 20, 30, 50, 70]
    assert m.stats["context_order"] == "by time"


def test_config_and_p5_loader_errors(tmp_path):
    with pytest.raises(ConfigError, match="replaces data.dataset"):
        DataConfig(domains=["a"], dataset="beauty")
    with pytest.raises(ConfigError, match="for retrieval"):
        ExperimentConfig.from_dict({"data": {"domains": ["a", "b"]}, "task": {"kind": "ranking"}})
    with pytest.raises(ConfigError, match="twice"):
        merge_domains([("a", _domain(["u"], [[1, 2, 3]])), ("a", _domain(["u"], [[1, 2, 3]]))])
    seq = tmp_path / "sequential.txt"
    seq.write_text("1 1 2 3\n2 2 3\n")
    with pytest.raises(DataFormatError, match="needs the datamaps.json"):
        read_p5_sequences(seq)
    (tmp_path / "datamaps.json").write_text(json.dumps({"id2user": {"1": "ANN", "2": "BOB"}, "id2item": {"1": "B1", "2": "B2"}}))
    with pytest.raises(DataFormatError, match=r"datamaps.json: 1 item ids .* \['3'\]"):
        read_p5_sequences(seq)
    (tmp_path / "datamaps.json").write_text(json.dumps({"id2user": {"1": "ANN", "2": "BOB"}, "id2item": {"1": "B1", "2": "B2", "3": "B3"}}))
    table = read_p5_sequences(seq)
    assert table["user"].to_pylist() == ["ANN"] * 3 + ["BOB"] * 2 and table["item"].to_pylist()[:3] == ["B1", "B2", "B3"]


def test_prepare_joins_logs_by_user(tmp_path):
    a, b = tmp_path / "beauty.csv", tmp_path / "toys.csv"
    a.write_text("user_id,item_id\n" + "".join(f"u{u},a{u + i}\n" for u in range(4) for i in range(5)))
    b.write_text("user_id,item_id\n" + "".join(f"u{u},b{u + i}\n" for u in range(2, 6) for i in range(4)))
    cfg = DataConfig(domains=[str(a), str(b)], cache_dir=str(tmp_path / "c"))
    folder = prepare(cfg)
    assert folder.name.startswith("domains-beauty+toys-") and prepare(cfg) == folder
    d = load_prepared(folder)
    assert d.num_users == 8 and [x["users_in_other_domains"] for x in d.stats["domains"]] == [2, 2]
    assert d.item_ids[0] == "beauty:a0" and d.action_names == ("domain",)


def test_joint_training_reports_each_domain(tmp_path):
    from genrec.experiments.run import train

    rng = np.random.default_rng(0)
    a, b = tmp_path / "beauty.csv", tmp_path / "toys.csv"
    # walks i -> i+1 in each domain; users u0..u29 in beauty, u20..u49 in toys (10 in both)
    a.write_text("user_id,item_id\n" + "".join(f"u{u},a{(s + i) % 15}\n" for u in range(30) for s in [int(rng.integers(15))] for i in range(6)))
    b.write_text("user_id,item_id\n" + "".join(f"u{u},b{(s + i) % 12}\n" for u in range(20, 50) for s in [int(rng.integers(12))] for i in range(6)))
    cfg = ExperimentConfig.from_dict({
        "data": {"domains": [str(a), str(b)], "cache_dir": str(tmp_path / "c")},
        "model": {"name": "sasrec", "max_seq_len": 8, "embedding_dim": 16, "num_layers": 1, "behaviour_embedding": True},
        "train": {"epochs": 2, "batch_size": 16, "num_negatives": 8, "lr": 0.01, "negatives_from": "target_domain"},
    })
    result = train(cfg, tmp_path / "run")
    assert "drawn from the target's domain" in result["protocol"]["loss"]
    test = result["test"]
    assert test["beauty/users"] == 30 and test["toys/users"] == 30
    assert test["ndcg@10"] == pytest.approx((test["beauty/ndcg@10"] + test["toys/ndcg@10"]) / 2)
    assert "target's domain (beauty: 15 items, toys: 12 items)" in result["protocol"]["ranking"]
    from genrec import Recommender
    from genrec.errors import UnknownItemError

    rec = Recommender.load(tmp_path / "run" / "best")  # served per domain
    assert dict(rec.domains) == {"beauty": (1, 16), "toys": (16, 28)}
    with pytest.raises(ValueError, match="name the one to recommend from"):
        rec.recommend(["a3", "a4"])
    top = rec.recommend(["a3", "a4"], k=5, domain="beauty")  # bare ids are the domain's own
    assert len(top) == 5 and all(i.startswith("beauty:") for i, _ in top) and "beauty:a3" not in dict(top)
    with_context = rec.recommend(["toys:b1", "toys:b2", "a3", "a4"], k=15, domain="beauty")
    assert len(with_context) == 13 and all(i.startswith("beauty:") for i, _ in with_context)  # 15 items less the 2 read
    alone, _ = rec.user_vector(["a3", "a4"], domain="beauty")
    read, _ = rec.user_vector(["toys:b1", "toys:b2", "a3", "a4"], domain="beauty")
    assert (alone - read).abs().max() > 1e-4  # the context is read
    with pytest.raises(UnknownItemError) as err:
        rec.recommend(["a3", "toys:zz"], domain="beauty")
    assert err.value.unknown == ["toys:zz"]  # named as sent
    assert rec.score(["a3"], ["a5", "toys:b1"], domain="beauty") == rec.score(["a3"], ["beauty:a5", "toys:b1"], domain="beauty")
    batched = rec.recommend_many([rec.query(["a3", "a4"], domain="beauty"), rec.query(["b5"], domain="toys")], k=5)
    assert [i for i, _ in batched[0]] == [i for i, _ in top]
    assert batched[1] and all(i.startswith("toys:") for i, _ in batched[1])
    x = rec.query(["toys:b1", "a3"], domain="beauty")  # domain tokens: context from toys = 2 + 1 + 1, own beauty = 0 + 1
    assert x.behaviours.tolist() == [[4, 1]] and x.item_range == (1, 16)
    with pytest.raises(ValueError, match="not feedback"):
        rec.recommend(["a3"], domain="beauty", feedback=[1])
    from tests.serving.conftest import SERVE_MISSING

    if SERVE_MISSING:
        return  # the service's part needs genrec[serve]
    from tests.serving.client import make_app, request, strict_json

    app = make_app(tmp_path / "run" / "best")
    body = {"history": ["toys:b1", "toys:b2", "a3", "a4", "zz"], "k": 15, "domain": "beauty", "ignore_unknown": True}
    got = strict_json(request(app, "POST", "/v1/recommend", json=body))
    assert [i["item"] for i in got["items"]] == [i for i, _ in with_context] and got["dropped"] == ["zz"]
    refused = request(app, "POST", "/v1/recommend", json={"history": ["a3"], "k": 5})
    assert refused.status_code == 422 and "domain = one of ['beauty', 'toys']" in refused.text
    assert strict_json(request(app, "GET", "/v1/model"))["domains"] == {"beauty": [1, 16], "toys": [16, 28]}
    first = got["items"][0]["item"]
    denied = strict_json(request(app, "POST", "/v1/recommend", json=body | {"deny": [first.split(":", 1)[1]]}))  # a bare own id
    assert first not in [i["item"] for i in denied["items"]] and len(denied["items"]) == 12


def test_companion_files_are_found_beside_the_data_file_and_checked(tmp_path):
    import hashlib

    from genrec.data.download import DatasetSpec, fetch
    from genrec.errors import ChecksumError

    (tmp_path / "p5" / "toys").mkdir(parents=True)
    (tmp_path / "p5" / "beauty").mkdir(parents=True)
    for name in ("toys", "beauty"):
        (tmp_path / "p5" / name / "sequential.txt").write_text(f"1 1 2 3 {name}\n")
    maps = b'{"id2user": {}, "id2item": {}}'
    spec = DatasetSpec("toys-x", "p5-sequences", None, "sequential.txt", local_names=("p5/toys/sequential.txt",),
                       companions={"datamaps.json": hashlib.sha256(maps).hexdigest()})
    with pytest.raises(DataFormatError, match="needs datamaps.json beside it"):
        fetch(spec, str(tmp_path / "c"), str(tmp_path), check=False)
    (tmp_path / "p5" / "toys" / "datamaps.json").write_bytes(maps)
    assert fetch(spec, str(tmp_path / "c"), str(tmp_path), check=False) == tmp_path / "p5" / "toys" / "sequential.txt"
    (tmp_path / "p5" / "toys" / "datamaps.json").write_bytes(maps + b" ")
    with pytest.raises(ChecksumError, match="datamaps.json sha256"):
        fetch(spec, str(tmp_path / "c"), str(tmp_path), check=True)
    bare = DatasetSpec("any", "p5-sequences", None, "sequential.txt")
    with pytest.raises(DataFormatError, match="several files named sequential.txt"):
        fetch(bare, str(tmp_path / "c"), str(tmp_path), check=False)
