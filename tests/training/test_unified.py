"""Enhancer and weighter unit behaviour, and ranking/unified/cascade runs end to end."""

import importlib.util
import json
import math
from types import SimpleNamespace

import pytest
import torch
import yaml

from genrec import Recommender
from genrec.cli import main
from genrec.config import TaskConfig
from genrec.models import HSTU, HSTUConfig
from genrec.models.generative import GenerativeRecommender, HeadConfig
from genrec.training.enhancer import enhance, enhance_negatives
from genrec.training.losses import sampled_softmax_loss
from genrec.training.weighting import ConstantWeighter, DWAWeighter, GradientSpeedWeighter, GradNormWeighter


class _Table:
    """Stand-in model for the loss: fixed item vectors, identity normalisation."""

    def __init__(self, vecs):
        self.vecs = vecs
        self.config = SimpleNamespace(num_items=vecs.size(0) - 1)

    def item_vectors(self, ids=None, start=0, end=None):
        return self.vecs[ids] if ids is not None else self.vecs[start:end]


def test_potential_positives_are_removed_from_negatives_or_relabelled(monkeypatch):
    torch.manual_seed(0)
    vecs = torch.randn(6, 4)
    m, q, pos = _Table(vecs), torch.randn(1, 4), torch.tensor([1])
    monkeypatch.setattr(torch, "randint", lambda lo, hi, size, device=None: torch.tensor([[2, 3, 4]]))
    logit = lambda i: float(q[0] @ vecs[i])  # noqa: E731
    # remove: item 3 is a potential positive -> softmax over {1, 2, 4}
    loss = sampled_softmax_loss(q, pos, m, 3, 1.0, True, potential=torch.tensor([[3, 0]]), mode="remove")
    expect = -logit(1) + math.log(sum(math.exp(logit(i)) for i in (1, 2, 4)))
    assert loss.item() == pytest.approx(expect, abs=1e-5)
    # relabel: item 3 counts as a positive: -log (e1 + e3) / (e1 + e3 + e2 + e4)
    loss = sampled_softmax_loss(q, pos, m, 3, 1.0, True, potential=torch.tensor([[3, 0]]), mode="relabel")
    expect = -math.log(sum(math.exp(logit(i)) for i in (1, 3))) + math.log(sum(math.exp(logit(i)) for i in (1, 2, 3, 4)))
    assert loss.item() == pytest.approx(expect, abs=1e-5)
    # hard negatives join the denominator
    loss = sampled_softmax_loss(q, pos, m, 3, 1.0, True, hard=torch.tensor([[5]]))
    expect = -logit(1) + math.log(sum(math.exp(logit(i)) for i in (1, 2, 3, 4, 5)))
    assert loss.item() == pytest.approx(expect, abs=1e-5)


def test_potential_positives_leave_other_positions_alone(monkeypatch):
    """Only the positions that have potential positives drop them from their negatives (the loss
    compares just those rows): the other positions keep every sampled negative."""
    torch.manual_seed(0)
    vecs = torch.randn(6, 4)
    m, q, pos = _Table(vecs), torch.randn(3, 4), torch.tensor([1, 5, 2])
    monkeypatch.setattr(torch, "randint", lambda lo, hi, size, device=None: torch.tensor([[2, 3, 4]]))

    def row(t, negatives):
        logit = lambda i: float(q[t] @ vecs[i])  # noqa: E731
        return -logit(pos[t]) + math.log(math.exp(logit(pos[t])) + sum(math.exp(logit(i)) for i in negatives if i != pos[t]))

    loss = sampled_softmax_loss(q, pos, m, 3, 1.0, True, potential=torch.tensor([[0, 0], [3, 4], [0, 0]]), mode="remove")
    assert loss.item() == pytest.approx((row(0, (2, 3, 4)) + row(1, (2,)) + row(2, (3, 4))) / 3, abs=1e-5)


def test_enhancer_picks_retrieved_high_ranked_low_and_flags_likely_positives(monkeypatch):
    torch.manual_seed(0)
    model = GenerativeRecommender(HSTU(HSTUConfig(num_items=8, max_seq_len=9, embedding_dim=8, time_bias=False)), HeadConfig())
    items = torch.tensor([[1, 2, 3]])
    labels = torch.ones(1, 3, 1)
    enc = model.encode_history(items, labels)
    q = model.retrieval_vectors(enc.hidden[:, 1::2][:, :-1])  # [1 2 D]
    # ranking probabilities by item id: item i -> logit (i - 4.5): items 6, 7, 8 likely positives
    monkeypatch.setattr(model, "next_slot_outputs", lambda enc, pool, t: (pool.float() - 4.5).unsqueeze(-1))
    cfg = TaskConfig(kind="unified", hard_negatives=2, candidate_pool=5, potential_positive_alpha=0.9)
    ex = enhance(model, enc, q, items, None, cfg, 0)
    scores = q @ model.item_vectors(torch.arange(1, 9)).T  # [1 2 8]
    for pos in range(2):
        s = scores[0, pos].clone()
        s[items[0, pos + 1] - 1] = -math.inf  # the target never enters the pool
        pool = (s.topk(5).indices + 1).tolist()
        assert sorted(ex.hard[pos].tolist()) == sorted(pool)[:2]  # lowest ranking probability = smallest ids
        expect_pp = sorted(i for i in pool if torch.sigmoid(torch.tensor(i - 4.5)) > 0.9)
        assert sorted(i for i in ex.potential[pos].tolist() if i) == expect_pp


@pytest.mark.parametrize("shared", [True, False])
def test_enhancer_pool_is_the_steps_negatives_retrieval_scores_highest(monkeypatch, shared):
    torch.manual_seed(0)
    model = GenerativeRecommender(HSTU(HSTUConfig(num_items=12, max_seq_len=9, embedding_dim=8, time_bias=False)), HeadConfig())
    items = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])  # 2 + 3 positions with a target
    enc = model.encode_history(items, torch.ones(2, 4, 1))
    q = model.retrieval_vectors(enc.hidden[:, 1::2][:, :-1])  # [2 3 D]
    monkeypatch.setattr(model, "next_slot_outputs", lambda enc, pool, t: (pool.float() - 8.5).unsqueeze(-1))  # ids > 8 liked
    K = 7
    neg = torch.randint(1, 13, (1 if shared else 5, K))
    neg[0, :2] = torch.tensor([3, 5])  # accidental hits of some positions
    cfg = TaskConfig(kind="unified", hard_negatives=2, candidate_pool=4, potential_positive_alpha=0.6, enhancer_rows=1.0)
    with pytest.raises(Exception, match="below task.candidate_pool"):
        TaskConfig(kind="unified", hard_negatives=4, candidate_pool=4)
    ex = enhance_negatives(model, enc, q, items, None, cfg, 0, neg)
    positions = [(b, k) for b in range(2) for k in range(3) if items[b, k + 1] != 0]
    assert ex.hard.shape == (5, 2) and ex.potential.shape == (5, 4)
    for t, (b, k) in enumerate(positions):
        cands = neg[0 if shared else t]
        s = (q[b, k] @ model.item_vectors(cands).T).masked_fill(cands == items[b, k + 1], -math.inf)
        pool = cands[s.topk(4).indices].tolist()  # the negatives retrieval over-scores (the target never)
        assert sorted(ex.hard[t].tolist()) == sorted(pool)[:2]  # ranked lowest = smallest ids
        assert sorted(i for i in ex.potential[t].tolist() if i) == sorted(i for i in pool if i > 8)
    few = enhance_negatives(model, enc, q, items, None, TaskConfig(kind="unified", hard_negatives=2, candidate_pool=4,
                                                                  enhancer_rows=1e-9), 0, neg)
    assert few.stats["enhancer_rows"] == 0 and not few.hard.any() and few.potential is None  # nothing examined: no extras


def test_hard_negative_padding_is_never_a_negative():
    torch.manual_seed(0)
    vecs = torch.randn(6, 4)
    m, q, pos = _Table(vecs), torch.randn(2, 4), torch.tensor([1, 2])
    neg = torch.tensor([[3, 4]])
    logit = lambda t, i: float(q[t] @ vecs[i])  # noqa: E731
    loss = sampled_softmax_loss(q, pos, m, 2, 1.0, True, hard=torch.tensor([[5], [0]]), negatives=neg)
    expect = [-logit(0, 1) + math.log(sum(math.exp(logit(0, i)) for i in (1, 3, 4, 5))),
              -logit(1, 2) + math.log(sum(math.exp(logit(1, i)) for i in (2, 3, 4)))]  # row 2: no hard negative
    assert loss.item() == pytest.approx(sum(expect) / 2, abs=1e-5)


def test_dwa_gives_the_slower_task_more_weight():
    w = DWAWeighter({"retrieval": 1.0, "ranking": 1.0}, temperature=2.0, window=2)
    losses = [(8.0, 1.0), (8.0, 1.0), (4.0, 1.0), (4.0, 1.0)]  # retrieval halves, ranking flat
    for r, k in losses:
        _, weights = w.combine({"retrieval": torch.tensor(r), "ranking": torch.tensor(k)})
        assert weights == {"retrieval": 1.0, "ranking": 1.0}  # base weights until two windows are full
    _, weights = w.combine({"retrieval": torch.tensor(4.0), "ranking": torch.tensor(1.0)})
    # r_retrieval = 8 / 16 = 0.5, r_ranking = 1; w_k = 2 exp(r_k / 2) / sum
    z = math.exp(0.25) + math.exp(0.5)
    assert weights["retrieval"] == pytest.approx(2 * math.exp(0.25) / z)
    assert weights["ranking"] == pytest.approx(2 * math.exp(0.5) / z)


def test_constant_and_gradnorm_weighters():
    total, weights = ConstantWeighter({"a": 2.0, "b": 0.5}).combine({"a": torch.tensor(1.0), "b": torch.tensor(4.0)})
    assert total.item() == 4.0 and weights == {"a": 2.0, "b": 0.5}
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    la, lb = (p * torch.tensor([3.0, 4.0])).sum(), (p * torch.tensor([0.6, 0.8])).sum()  # gradient norms 5 and 1
    _, weights = GradNormWeighter({"a": 1.0, "b": 1.0}).combine({"a": la, "b": lb}, [p])
    assert weights["a"] == pytest.approx(2 * (1 / 5) / (1 / 5 + 1)) and weights["b"] == pytest.approx(2 * 1 / (1 / 5 + 1))


def test_gradient_weighter_follows_the_rate_of_change_of_each_gradient_norm():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    w = GradientSpeedWeighter({"retrieval": 1.0, "ranking": 1.0}, temperature=2.0, window=2, every=2)
    # gradient norms per step: retrieval 8, 8, 4, 4 (halves), ranking 1 throughout; measured every 2nd step
    scale = [(8.0, 1.0), (9.0, 9.0), (8.0, 1.0), (9.0, 9.0), (4.0, 1.0), (9.0, 9.0), (4.0, 1.0)]
    for step, (r, k) in enumerate(scale):
        losses = {"retrieval": (p * torch.tensor([r, 0.0])).sum(), "ranking": (p * torch.tensor([0.0, k])).sum()}
        _, weights = w.combine(losses, [p])
        assert weights == {"retrieval": 1.0, "ranking": 1.0}  # base weights until two windows are full
        assert w.measured == ({"grad_norm_retrieval": r, "grad_norm_ranking": k} if step % 2 == 0 else {})
    _, weights = w.combine({"retrieval": p.sum(), "ranking": p.sum()}, [p])
    # r_retrieval = (4 + 4) / (8 + 8) = 0.5, r_ranking = 1: the slower-learning ranking task gains weight
    z = math.exp(0.25) + math.exp(0.5)
    assert weights["retrieval"] == pytest.approx(2 * math.exp(0.25) / z)
    assert weights["ranking"] == pytest.approx(2 * math.exp(0.5) / z)
    before = w.state_dict()
    w.combine({"retrieval": p.sum() * float("inf"), "ranking": p.sum()}, [p])  # a non-finite norm is not recorded
    assert w.state_dict()["history"] == before["history"]
    w.steps -= 1
    again = GradientSpeedWeighter({"retrieval": 1.0, "ranking": 1.0}, temperature=2.0, window=2, every=2)
    again.load_state_dict(json.loads(json.dumps(w.state_dict())))  # what last/state.json carries
    assert again.current() == w.current() and again.steps == w.steps == 8
    with pytest.raises(ValueError, match="shared parameters"):
        again.combine({"retrieval": p.sum(), "ranking": p.sum()})


def test_trunk_parameters_are_the_backbone_without_its_embedding_tables():
    model = GenerativeRecommender(HSTU(HSTUConfig(num_items=8, max_seq_len=9, embedding_dim=8, time_bias=False)), HeadConfig())
    trunk = {id(p) for p in model.trunk_parameters()}
    tables = {id(m.weight) for m in model.backbone.modules() if isinstance(m, torch.nn.Embedding)}
    assert trunk and not trunk & tables
    assert trunk | tables == {id(p) for p in model.backbone.parameters()}
    assert not trunk & {id(p) for n, p in model.named_parameters() if not n.startswith("backbone.")}  # heads: one task each


def _config(tmp_path, synthetic_csv, **task):
    cfg = {
        "data": {"dataset": "custom", "source": str(synthetic_csv), "format": "csv", "cache_dir": str(tmp_path / "cache"),
                 "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts", "rating": "stars"}},
        "model": {"name": "hstu", "max_seq_len": 7, "embedding_dim": 16, "num_layers": 1, "num_heads": 2},
        "train": {"epochs": 3, "batch_size": 16, "num_negatives": 8, "lr": 0.01, "patience": 0},
        "eval": {"ks": [1, 10], "holdout": 2, "select_metric": "ndcg@10+auc" if task.get("kind") == "unified" else "auc"},
        "task": task,
    }
    return cfg


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_unified_train_recommend_rank_end_to_end(tmp_path, synthetic_csv, capsys):
    cfg = _config(tmp_path, synthetic_csv, kind="unified", weighter="dwa", dwa_window=2, hard_negatives=2,
                  candidate_pool=4, potential_positive_alpha=0.8, enhancer_warmup_epochs=1)
    path = tmp_path / "unified.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = _run(capsys, "train", path, "--out", tmp_path / "run")
    for split in ("valid", "test"):
        for key in ("ndcg@10", "hr@10", "mrr", "auc", "gauc", "logloss"):
            assert 0.0 <= result[split][key] <= 1.0 or key == "logloss"
    assert result["protocol"]["enhancer"]["hard_negatives"] == 2 and "K=2" in result["protocol"]["ranking_split"]
    steps = [json.loads(l) for l in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert {"w_retrieval", "w_ranking", "retrieval_loss", "ranking_loss"} <= steps[0].keys()
    assert any("enhancer_seconds" in s for s in steps) and not any("enhancer_seconds" in s for s in steps if s["epoch"] == 1)
    assert any(s["w_retrieval"] != 1.0 for s in steps)  # DWA moved the weights once two windows were full
    ckpt = tmp_path / "run" / "best"
    again = _run(capsys, "eval", ckpt, "--split", "test")["test"]
    assert again["ndcg@10"] == pytest.approx(result["test"]["ndcg@10"]) and again["auc"] == pytest.approx(result["test"]["auc"])
    rec = _run(capsys, "recommend", ckpt, "--history", "i1,i2,i3", "--feedback", "1,0,1", "--timestamps", "10,20,30", "-k", "5")
    assert len(rec["items"]) == 5 and not {"i1", "i2", "i3"} & {r["item"] for r in rec["items"]}
    ranked = _run(capsys, "rank", ckpt, "--history", "i1,i2,i3", "--feedback", "1,0,1", "--timestamps", "10,20,30", "--candidates", "i4,i9,i4")
    scores = [c["like"] for c in ranked["candidates"]]
    assert len(scores) == 3 and all(0 < s < 1 for s in scores) and scores[0] == scores[2]
    assert main(["rank", str(ckpt), "--history", "i1,i2", "--timestamps", "10,20", "--candidates", "i4"]) == 2
    assert "feedback" in capsys.readouterr().err
    assert main(["rank", str(ckpt), "--history", "i1", "--feedback", "1", "--timestamps", "1", "--candidates", "nope"]) == 2


def test_like_and_rating_tasks_train_evaluate_and_rank(tmp_path, synthetic_csv, capsys):
    """Two ranking tasks from one rating (like = rating >= 4, and the rating itself, MSE): each
    task is evaluated, the history takes both per item, and rank returns both."""
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, synthetic_csv, kind="unified", regression_actions=["rating"])))
    result = _run(capsys, "train", path, "--out", tmp_path / "run")
    tasks = result["test"]["tasks"]
    assert set(tasks) == {"like", "rating"} and 0 <= tasks["like"]["auc"] <= 1 and tasks["rating"]["mse"] > 0
    assert result["test"]["auc"] == tasks["like"]["auc"]  # the headline is the first binary task
    assert "rating (regression, MSE)" in result["protocol"]["ranking_labels"]
    ckpt = tmp_path / "run" / "best"
    head = json.loads((ckpt / "head.json").read_text())  # the rating enters action tokens standardised
    assert head["feedback_shift"][0] == 0.0 and 1.0 < head["feedback_shift"][1] < 5.0 and head["feedback_scale"][1] > 0
    assert head["feedback_range"] == [[0.0, 1.0], [1.0, 5.0]]  # training labels' (min, max) per task
    again = _run(capsys, "eval", ckpt, "--split", "test")["test"]
    assert again["tasks"]["rating"]["mse"] == pytest.approx(tasks["rating"]["mse"])
    ranked = _run(capsys, "rank", ckpt, "--history", "i1,i2,i3", "--feedback", "1:5,0:2,1:4", "--timestamps", "10,20,30",
                  "--candidates", "i4,i9")
    assert all(0 < c["like"] < 1 and isinstance(c["rating"], float) for c in ranked["candidates"])
    # the ratings alone stand for the pairs: like = rating >= task.positive_rating (4 here)
    by_rating = _run(capsys, "rank", ckpt, "--history", "i1,i2,i3", "--feedback", "5,2,4", "--timestamps", "10,20,30",
                     "--candidates", "i4,i9")
    assert by_rating == ranked
    rec = Recommender.load(ckpt)
    assert rec.rating_threshold == 4.0
    assert rec.query(["i1", "i2"], [10, 20], feedback=[3.5, 4]).labels.tolist() == [[[0.0, 3.5], [1.0, 4.0]]]
    assert rec.rating_range == (1.0, 5.0)  # the training ratings' (head.json's feedback_range)
    for bad in ([0, 4], [True, 5], [[6], 4]):  # a rating given alone must be on the training scale
        with pytest.raises(ValueError, match="outside the training ratings' range"):
            rec.query(["i1", "i2"], [10, 20], feedback=bad)
    assert main(["rank", str(ckpt), "--history", "i1,i2,i3", "--feedback", "1,0", "--timestamps", "10,20,30", "--candidates", "i4"]) == 2
    assert "2 value(s) each, or one rating per item (like = rating >= 4)" in capsys.readouterr().err


@pytest.mark.parametrize("weighter", ["dwa", "gradient"])
def test_unified_run_with_a_history_weighter_resumes_exactly(tmp_path, synthetic_csv, capsys, weighter):
    """The weighter's history is part of last/: two epochs, or one and a resume, give the same weights."""
    cfg = _config(tmp_path, synthetic_csv, kind="unified", weighter=weighter, dwa_window=2)
    path = tmp_path / "u.yaml"
    path.write_text(yaml.safe_dump(cfg))
    full = _run(capsys, "train", path, "train.epochs=2", "--out", tmp_path / "full")
    _run(capsys, "train", path, "train.epochs=1", "--out", tmp_path / "part")
    part = _run(capsys, "train", "train.epochs=2", "--out", tmp_path / "part", "--resume")
    assert part["valid"] == full["valid"] and part["test"] == full["test"]
    steps = [json.loads(line) for line in (tmp_path / "full" / "steps.jsonl").read_text().splitlines()]
    assert any(s["w_retrieval"] != 1.0 for s in steps)  # the weights moved within the two epochs
    if weighter == "gradient":
        assert all(s["grad_norm_retrieval"] > 0 and s["grad_norm_ranking"] > 0 for s in steps)  # grad_every 1
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "full" / "weights.png").exists()


def test_ranking_din_and_cascade_runs(tmp_path, synthetic_csv, capsys):
    ranking = _config(tmp_path, synthetic_csv, kind="ranking")
    (tmp_path / "ranking.yaml").write_text(yaml.safe_dump(ranking))
    retrieval = _config(tmp_path, synthetic_csv, kind="retrieval")
    retrieval["eval"]["select_metric"] = "ndcg@10"
    (tmp_path / "retrieval.yaml").write_text(yaml.safe_dump(retrieval))
    din = _config(tmp_path, synthetic_csv, kind="ranking")
    din["model"] = {"name": "din", "max_seq_len": 7, "embedding_dim": 8}
    (tmp_path / "din.yaml").write_text(yaml.safe_dump(din))
    cascade = _config(tmp_path, synthetic_csv, kind="cascade", retrieval_config="retrieval.yaml", ranking_config="ranking.yaml", cascade_k=10)
    (tmp_path / "cascade.yaml").write_text(yaml.safe_dump(cascade))

    r = _run(capsys, "train", tmp_path / "ranking.yaml", "--out", tmp_path / "r")
    assert set(r["test"]) >= {"auc", "gauc", "logloss"} and "ndcg@10" not in r["test"]
    d = _run(capsys, "train", tmp_path / "din.yaml", "--out", tmp_path / "d")
    assert 0 <= d["test"]["auc"] <= 1
    assert _run(capsys, "rank", tmp_path / "d" / "best", "--history", "i1,i2", "--feedback", "1,0", "--candidates", "i3")["candidates"][0]["like"] > 0
    c = _run(capsys, "train", tmp_path / "cascade.yaml", "--out", tmp_path / "c")
    assert main(["recommend", str(tmp_path / "r" / "best"), "--history", "i1,i2", "--feedback", "1,0"]) == 2  # ranking only
    assert "rank" in capsys.readouterr().err
    assert {"ndcg@10", "auc"} <= set(c["test"]) and c["protocol"]["task"] == "cascade"
    stage = json.loads((tmp_path / "c" / "ranking" / "metrics.json").read_text())
    assert c["test"]["auc"] == stage["test"]["auc"]
    # the cascade only reorders the top-K: HR@K equals the retrieval stage's
    assert c["test"]["hr@10"] == c["test_retrieval_stage_alone"]["hr@10"]


@pytest.mark.parametrize("option", ["train.pack=true", "train.data_fraction=0.5"])
def test_retrieval_only_options_are_refused_for_feedback_tasks(tmp_path, synthetic_csv, capsys, option):
    path = tmp_path / "ranking.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, synthetic_csv, kind="ranking")))
    assert main(["train", str(path), option, "--out", str(tmp_path / "run")]) == 2
    assert "apply to retrieval training only" in capsys.readouterr().err
