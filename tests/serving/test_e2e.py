"""End to end: models trained through ``genrec train`` (the session fixture), served in-process;
recommend and rank answer what ``Recommender`` answers; a reload to another checkpoint changes
what the service is and does, and its answers follow."""

import pytest

from genrec import Recommender

from .conftest import SERVE_MISSING, SKIP_REASON

if SERVE_MISSING:
    pytest.skip(SKIP_REASON, allow_module_level=True)

from .client import make_app, request, strict_json, walk  # noqa: E402


def _items(response) -> list[tuple[str, float]]:
    return [(i["item"], i["score"]) for i in strict_json(response)["items"]]


def test_trained_served_recommend_rank_reload(checkpoints):
    unified, retrieval = Recommender.load(checkpoints["unified"]), Recommender.load(checkpoints["retrieval"])
    app = make_app(checkpoints["unified"], token="t", metadata=str(checkpoints["metadata"]))
    auth = {"Authorization": "Bearer t"}
    body = walk(["i3", "i4", "i5", "i6"]) | {"feedback": [1, 1, 0, 1]}

    card = strict_json(request(app, "GET", "/v1/model", headers=auth))
    assert card["kind"] == "unified" and card["tasks"] == ["like"] and card["reads_feedback"]
    assert strict_json(request(app, "GET", "/readyz"))["model"] == card["weights_sha256"][:12]

    got = _items(request(app, "POST", "/v1/recommend", json=body | {"k": 8}, headers=auth))
    want = unified.recommend(k=8, **body)
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=2e-6)

    cands = ["i7", "i8", "i30", "i3"]
    ranked = strict_json(request(app, "POST", "/v1/rank", json=body | {"candidates": cands}, headers=auth))
    assert [c["scores"] for c in ranked["candidates"]] == unified.rank(body["history"], cands, body["feedback"], body["timestamps"])
    assert ranked["candidates"][0]["title"] == "Step 7 of the walk"

    r = request(app, "POST", "/v1/admin/reload", json={"checkpoint": str(checkpoints["retrieval"])}, headers=auth)
    assert r.status_code == 200 and strict_json(r)["model"] != card["weights_sha256"][:12]
    assert strict_json(request(app, "GET", "/v1/model", headers=auth))["kind"] == "retrieval"
    got = _items(request(app, "POST", "/v1/recommend", json=body | {"k": 8}, headers=auth))
    want = retrieval.recommend(k=8, history=body["history"], timestamps=body["timestamps"])
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=2e-6)
    r = request(app, "POST", "/v1/rank", json=body | {"candidates": cands}, headers=auth)
    assert r.status_code == 400  # a retrieval model has no ranking head
