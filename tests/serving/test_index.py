"""Retrieval indexes: exact and FAISS (flat / IVF / HNSW) give the Recommender's top-k on a small
catalogue, honour history exclusion and allow/deny lists, and are cached beside the checkpoint
until the weights change."""

import importlib.util

import pytest
import torch

from .conftest import SERVE_MISSING, SKIP_REASON

if SERVE_MISSING:
    pytest.skip(SKIP_REASON, allow_module_level=True)

from genrec import Recommender  # noqa: E402
from genrec.serving.index import IndexOptions, build_index, index_folder  # noqa: E402

from .client import make_app, request, strict_json, walk  # noqa: E402

NO_FAISS = importlib.util.find_spec("faiss") is None
KINDS = ["exact", "faiss-flat", "faiss-ivf", "faiss-hnsw", "faiss-pq"]


def _kind(kind):
    if kind != "exact" and NO_FAISS:
        pytest.skip("faiss-cpu is not installed: pip install 'genrec[serve]'")
    return kind


@pytest.mark.parametrize("kind", KINDS)
def test_every_index_excludes_history_and_honours_allow_and_deny(checkpoints, tmp_path, kind):
    rec = Recommender.load(checkpoints["retrieval"])
    app = make_app(checkpoints["retrieval"], index=_kind(kind), index_dir=str(tmp_path))
    body = walk(["i1", "i2", "i3"]) | {"k": 10}
    want = rec.recommend(body["history"], 10, body["timestamps"])
    got = strict_json(request(app, "POST", "/v1/recommend", json=body))
    assert got["index"] == kind
    # 40 items: IVF (nprobe >= its lists), HNSW (efSearch >= the catalogue) and PQ (refine·k >= the
    # catalogue: every item re-scored exactly) are exact here
    assert [i["item"] for i in got["items"]] == [i for i, _ in want]
    assert [i["score"] for i in got["items"]] == pytest.approx([s for _, s in want], abs=1e-5)

    deny = [i for i, _ in want[:4]]
    got = strict_json(request(app, "POST", "/v1/recommend", json=body | {"deny": deny}))["items"]
    assert [i["item"] for i in got] == [i for i, _ in rec.recommend(body["history"], 14, body["timestamps"])][4:14]

    allow = ["i1", "i9", "i20", "i33", "i20"]  # a history item and a repeat
    got = strict_json(request(app, "POST", "/v1/recommend", json=body | {"allow": allow, "deny": ["i9"]}))["items"]
    scores = dict(zip(["i20", "i33"], rec.score(body["history"], ["i20", "i33"], body["timestamps"])))
    answer = strict_json(request(app, "POST", "/v1/recommend", json=body | {"allow": allow, "deny": ["i9"]}))
    assert answer["index"] == "exact"  # an allow list is scored exactly, whatever the index
    assert sorted(i["item"] for i in got) == ["i20", "i33"]  # history and deny removed, no duplicates
    assert got[0]["score"] >= got[1]["score"] and got[0]["score"] == pytest.approx(scores[got[0]["item"]], abs=1e-5)

    kept = strict_json(request(app, "POST", "/v1/recommend", json=body | {"k": 40, "exclude_history": False}))["items"]
    assert len(kept) == 40 and {"i1", "i2", "i3"} <= {i["item"] for i in kept}


def test_faiss_index_is_saved_beside_the_checkpoint_and_rebuilt_when_stale(checkpoints):
    _kind("faiss-hnsw")
    rec = Recommender.load(checkpoints["retrieval"])
    folder = index_folder(checkpoints["retrieval"])
    assert folder.name == "best.index" and folder.parent == checkpoints["retrieval"].parent
    opts = IndexOptions("faiss-hnsw", ef_search=64)
    first = build_index(rec, opts, "digest-a", folder)
    assert first.loaded_from is None and (folder / "faiss-hnsw.faiss").exists()
    again = build_index(rec, opts, "digest-a", folder)
    assert again.loaded_from == str(folder / "faiss-hnsw.faiss")
    assert build_index(rec, opts, "digest-b", folder).loaded_from is None  # other weights: rebuilt
    assert build_index(rec, IndexOptions("faiss-hnsw", ef_search=32), "digest-b", folder).loaded_from is None  # other params
    q = rec.user_vector(["i1"], timestamps=[1])[0]
    assert again.search(q, [5], [set()], [None]) == first.search(q, [5], [set()], [None])


def test_index_options_are_checked():
    with pytest.raises(Exception, match="not one of exact, faiss-flat"):
        IndexOptions("annoy")
    with pytest.raises(Exception, match="nprobe=0 must be >= 1"):
        IndexOptions("faiss-ivf", nprobe=0)


def test_dot_product_models_say_so(checkpoints):
    rec = Recommender.load(checkpoints["retrieval"])
    with torch.no_grad():
        rec.model.item_embedding.weight.mul_(3.0)
    rec.model.config.l2_normalize = False
    assert build_index(rec, IndexOptions(), "", None).score_kind == "dot"


def test_pq_index_scores_its_candidates_exactly_and_checks_its_shape(checkpoints):
    _kind("faiss-pq")
    rec = Recommender.load(checkpoints["retrieval"])
    q = rec.user_vector(["i1", "i2"], timestamps=[1, 2])[0]
    index = build_index(rec, IndexOptions("faiss-pq", refine=1), "", None)  # PQ picks k, exact scores them
    assert index.describe()["params"] == {"M": index.vectors.size(1) // 2, "nbits": 4, "refine": 1}
    row = index.search(q, [5], [set()], [None])[0]  # q [1, D]
    assert len(row) == 5
    exact = index.vectors @ q[0].float()
    for item, score in row:
        assert score == pytest.approx(float(exact[item - 1]), abs=1e-5)
    width = index.vectors.size(1)
    with pytest.raises(Exception, match=f"--pq-m {width - 1} must divide"):
        build_index(rec, IndexOptions("faiss-pq", pq_m=width - 1), "", None)
    with pytest.raises(Exception, match="refine=0 must be >= 1"):
        IndexOptions("faiss-pq", refine=0)


@pytest.mark.parametrize("kind", ["exact", "faiss-flat"])
def test_domain_requests_rank_only_their_domain_with_every_index(profiled_domains, tmp_path, kind):
    """A multi-domain request ranks its domain's items: one batched scan of the domain's idx range
    with the exact index, the range's items scored exactly with a FAISS one; the answer says so."""
    rec = Recommender.load(profiled_domains)
    app = make_app(profiled_domains, index=_kind(kind), index_dir=str(tmp_path))
    history, times = ["beauty:a3", "toys:b4"], [0, 3600]
    for domain in ("toys", "beauty"):
        want = rec.recommend(history, 5, timestamps=times, domain=domain)
        got = strict_json(request(app, "POST", "/v1/recommend",
                                  json={"history": history, "timestamps": times, "k": 5, "domain": domain}))
        assert [i["item"] for i in got["items"]] == [i for i, _ in want]
        assert all(i["item"].startswith(f"{domain}:") for i in got["items"])
        assert got["index"] == "exact"

    index = build_index(rec, IndexOptions(kind), "", None)
    domains = ("toys", "beauty", "toys", None, "beauty")
    user = torch.cat([rec.user_vector(history, timestamps=times, domain=d or "toys")[0] for d in domains])
    ranges = [None if d is None else rec.domains[d] for d in domains]
    beauty = list(range(*rec.domains["beauty"]))
    allow = [None, None, None, None, [beauty[3], beauty[1], rec.domains["toys"][0]]]  # the toys item is outside the range
    exclude = [set(), set(), {ranges[2][0]}, set(), {beauty[1]}]
    ks = [5, 5, 3, 4, 5]
    rows = index.search(user, ks, exclude, allow, ranges)  # one micro-batch: native, range and allow rows mixed
    for b, row in enumerate(rows):
        if allow[b] is not None:  # the allow list within the range, minus the excluded
            assert [i for i, _ in row] == [beauty[3]]
            assert index.searched_by(allow[b], ranges[b]) == "exact"
            continue
        alone = rec.top_items(user[b : b + 1], ks[b], [sorted(exclude[b])], [ranges[b]])[0]
        assert [i for i, _ in row] == [i for i, _ in alone] and len(row) == ks[b]
        assert index.searched_by(None, ranges[b]) == (kind if ranges[b] is None else "exact")
