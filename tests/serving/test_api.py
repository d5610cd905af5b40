"""The /v1 routes in-process: answers equal Recommender's, every bad request is a 4xx with a
message that says what to fix (never a 500), auth, items, model card, metrics, strict JSON. Long on
purpose: one file per route family would repeat the app fixtures."""

import json

import pytest

from .conftest import SERVE_MISSING, SKIP_REASON

if SERVE_MISSING:
    pytest.skip(SKIP_REASON, allow_module_level=True)

from genrec import Recommender  # noqa: E402
from genrec.serving import schemas  # noqa: E402

from .client import make_app, request, run, strict_json, walk  # noqa: E402


@pytest.fixture(scope="module")
def app(checkpoints):
    return make_app(checkpoints["retrieval"], metadata=str(checkpoints["metadata"]))


@pytest.fixture(scope="module")
def unified_app(checkpoints):
    return make_app(checkpoints["unified"])


def test_recommend_equals_the_recommender(app, checkpoints):
    rec = Recommender.load(checkpoints["retrieval"])
    body = walk(["i1", "i2", "i3"]) | {"k": 5}
    r = request(app, "POST", "/v1/recommend", json=body)
    assert r.status_code == 200, r.text
    got = strict_json(r)
    want = rec.recommend(body["history"], 5, body["timestamps"])
    assert [i["item"] for i in got["items"]] == [i for i, _ in want]
    assert [i["score"] for i in got["items"]] == pytest.approx([s for _, s in want], abs=2e-6)
    assert got["items"][0]["title"] == f"Step {want[0][0][1:]} of the walk"
    assert got["score"] == "cosine" and got["index"] == "exact" and got["dropped"] == []
    assert schemas.RecommendResponse.model_validate(got).model_dump(exclude_none=True) == got  # the documented shape


def test_unknown_ids_are_refused_or_dropped(app):
    body = walk(["i1", "nope", "i2"]) | {"k": 3}
    r = request(app, "POST", "/v1/recommend", json=body)
    assert r.status_code == 422
    err = strict_json(r)["error"]
    assert err["code"] == "unknown_items" and err["unknown"] == ["nope"] and "ignore_unknown" in err["message"]
    r = request(app, "POST", "/v1/recommend", json=body | {"ignore_unknown": True})
    assert r.status_code == 200 and strict_json(r)["dropped"] == ["nope"]


LONG = [f"i{k % 40}" for k in range(1001)]


@pytest.mark.parametrize(
    "body, status, code, says",
    [
        ({"history": [], "timestamps": [], "k": 3}, 422, "invalid_request", "history is empty"),
        (walk(LONG) | {"k": 3}, 422, "history_too_long", "at most 1000"),
        (walk(["i1"]) | {"k": 0}, 422, "invalid_k", "between 1 and the catalogue size (40 items)"),
        (walk(["i1"]) | {"k": -2}, 422, "invalid_k", "k=-2"),
        (walk(["i1"]) | {"k": 41}, 422, "invalid_k", "k=41"),
        (walk(["i1"]) | {"k": "ten"}, 422, "invalid_request", "k: Input should be a valid integer"),
        ({"history": ["i1", "i2"], "k": 3}, 422, "invalid_request", "give one timestamp per history item"),
        ({"history": ["i1", "i2"], "timestamps": [1], "k": 3}, 422, "invalid_request", "timestamp"),
        (walk(["i1"]) | {"k": 3, "top": 5}, 422, "invalid_request", "top: Extra inputs are not permitted"),
        ({"timestamps": [1], "k": 3}, 422, "invalid_request", "history: Field required"),
        (walk(["i1"]) | {"deny": ["zz"]}, 422, "unknown_items", "deny"),
        (walk(["i1"]) | {"user_attributes": ["gender=F"]}, 422, "invalid_request", "reads no user attributes"),
        (walk(["i1"]) | {"user_attributes": {"age": {"years": 3}}}, 422, "invalid_request", "user_attributes"),
    ],
)
def test_bad_recommend_requests_are_4xx_with_a_reason(app, body, status, code, says):
    r = request(app, "POST", "/v1/recommend", json=body)
    assert r.status_code == status, r.text
    err = strict_json(r)["error"]
    assert err["code"] == code and says in err["message"], err


@pytest.mark.parametrize(
    "content, content_type, code",
    [
        (b"{not json", "application/json", "invalid_json"),
        (b'{"history": ["i1"], "timestamps": [1], "k": NaN}', "application/json", "invalid_request"),
        (b"[1, 2]", "application/json", "invalid_body"),
        (b"", "application/json", "missing_body"),
        (b'{"history": ["i1"], "timestamps": [1]}', "text/plain", "invalid_body"),
        (b'{"history": ["i1"], "timestamps": [1]}', None, "invalid_body"),  # no Content-Type: FastAPI's strict check
        (b"[" * 100_000, "application/json", "invalid_json"),  # nested past both JSON readers' depth limits
        (b'{"history": ["i1", "\\udc80x"], "timestamps": [1, 2]}', "application/json", "unknown_items"),  # a lone surrogate, echoed
    ],
)
def test_bodies_that_are_not_a_json_object_are_refused(app, content, content_type, code):
    r = request(app, "POST", "/v1/recommend", content=content, headers={} if content_type is None else {"content-type": content_type})
    assert 400 <= r.status_code < 500 and strict_json(r)["error"]["code"] == code, r.text


def test_body_over_the_size_limit_is_413(checkpoints):
    small = make_app(checkpoints["retrieval"], limits={"max_body_bytes": 2000})
    body = walk(["i1"] * 200) | {"k": 3}  # well over 2000 bytes
    r = request(small, "POST", "/v1/recommend", json=body)
    assert r.status_code == 413 and strict_json(r)["error"]["code"] == "body_too_large"

    async def chunked(client):  # no content-length: counted while it streams in
        async def parts():
            for _ in range(10):
                yield b" " * 500
        return await client.post("/v1/recommend", content=parts(), headers={"content-type": "application/json"})

    r = run(small, chunked)
    assert r.status_code == 413 and "2000 bytes" in strict_json(r)["error"]["message"]


def test_rank_equals_the_recommender_and_checks_feedback(unified_app, checkpoints):
    rec = Recommender.load(checkpoints["unified"])
    body = walk(["i4", "i5", "i6"]) | {"feedback": [1, 0, 1], "candidates": ["i7", "i20", "i8"]}
    r = request(unified_app, "POST", "/v1/rank", json=body)
    assert r.status_code == 200, r.text
    got = strict_json(r)
    want = rec.rank(body["history"], body["candidates"], body["feedback"], body["timestamps"])
    assert got["tasks"] == ["like"] and [c["item"] for c in got["candidates"]] == body["candidates"]
    assert [c["scores"] for c in got["candidates"]] == want
    assert schemas.RankResponse.model_validate(got).model_dump(exclude_none=True) == got
    for bad in ({"feedback": [1, 0]}, {"feedback": [[1, 0], [0, 1], [1, 1]]}, {"feedback": None}):
        r = request(unified_app, "POST", "/v1/rank", json=body | bad)
        assert r.status_code == 422 and "feedback" in strict_json(r)["error"]["message"], r.text
    r = request(unified_app, "POST", "/v1/rank", json=body | {"candidates": []})
    assert r.status_code == 422 and "no candidates" in r.text
    r = request(unified_app, "POST", "/v1/rank", json=body | {"candidates": ["i1", "zz"]})
    assert r.status_code == 422 and strict_json(r)["error"]["unknown"] == ["zz"]
    r = request(unified_app, "POST", "/v1/recommend", json=body | {"k": 4, "candidates": None})
    assert r.status_code == 422  # candidates is not a field of /v1/recommend
    body.pop("candidates")
    r = request(unified_app, "POST", "/v1/recommend", json=body | {"k": 4})
    assert [i["item"] for i in strict_json(r)["items"]] == [i for i, _ in rec.recommend(k=4, **body)]


def test_a_like_and_rating_model_takes_one_rating_per_item(checkpoints):
    """Tasks like (= rating >= 4) and the rating: the card says so, and one rating per history item
    answers as (like, rating) pairs do, on both routes."""
    rated = make_app(checkpoints["rated"])
    card = strict_json(request(rated, "GET", "/v1/model"))
    assert card["tasks"] == ["like", "rating"] and card["rating_feedback"] == 4.0 and card["rating_range"] == [1.0, 5.0]
    assert strict_json(request(make_app(checkpoints["unified"]), "GET", "/v1/model"))["rating_feedback"] is None
    body = walk(["i4", "i5", "i6"]) | {"candidates": ["i7", "i20"]}
    answers = []
    for feedback in ([5, 2, 4], [[1, 5], [0, 2], [1, 4]]):
        ranked = strict_json(request(rated, "POST", "/v1/rank", json=body | {"feedback": feedback}))
        recs = strict_json(request(rated, "POST", "/v1/recommend", json=walk(body["history"]) | {"feedback": feedback, "k": 5}))
        answers.append(([c["scores"] for c in ranked["candidates"]], [i["item"] for i in recs["items"]]))
    assert answers[0] == answers[1] and set(answers[0][0][0]) == {"like", "rating"}
    r = request(rated, "POST", "/v1/rank", json=body | {"feedback": [5, 2]})
    assert r.status_code == 422 and "one rating per item (like = rating >= 4)" in strict_json(r)["error"]["message"], r.text
    r = request(rated, "POST", "/v1/rank", json=body | {"feedback": [1, 0, 1]})  # like labels are not ratings
    assert r.status_code == 422 and "outside the training ratings' range [1, 5]" in strict_json(r)["error"]["message"], r.text


def test_each_route_refuses_what_the_checkpoint_cannot_do(app, checkpoints):
    r = request(app, "POST", "/v1/rank", json=walk(["i1"]) | {"candidates": ["i2"]})
    assert r.status_code == 400 and "retrieval-only" in strict_json(r)["error"]["message"]
    ranking = make_app(checkpoints["ranking"])
    r = request(ranking, "POST", "/v1/recommend", json={"history": ["i1"], "feedback": [1], "k": 2})
    assert r.status_code == 400 and "use /v1/rank" in strict_json(r)["error"]["message"]
    r = request(ranking, "POST", "/v1/rank", json={"history": ["i1"], "feedback": [1], "candidates": ["i2", "i3"]})
    assert r.status_code == 200 and 0 < strict_json(r)["candidates"][0]["scores"]["like"] < 1


def test_token_protects_every_route_but_health(checkpoints):
    app = make_app(checkpoints["retrieval"], token="s3cret")
    ok = {"Authorization": "Bearer s3cret"}
    for method, url, kw in [("POST", "/v1/recommend", {"json": walk(["i1"]) | {"k": 2}}), ("GET", "/v1/model", {}),
                            ("GET", "/v1/items?query=i", {}), ("GET", "/v1/items/i1", {}), ("GET", "/metrics", {}),
                            ("POST", "/v1/admin/reload", {})]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = request(app, method, url, headers=headers, **kw)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (url, r.text)
        assert request(app, method, url, headers=ok, **kw).status_code == 200, url
    for url in ("/healthz", "/readyz", "/"):
        assert request(app, "GET", url).status_code == 200


def test_token_from_the_environment_protects_the_routes(checkpoints, monkeypatch):
    """No token argument: $GENREC_API_TOKEN, read when the app is built (as each worker builds it)."""
    monkeypatch.setenv("GENREC_API_TOKEN", "from-env")
    app = make_app(checkpoints["retrieval"], token=None)
    body = walk(["i1"]) | {"k": 2}
    assert request(app, "POST", "/v1/recommend", json=body).status_code == 401
    assert request(app, "GET", "/metrics").status_code == 401
    assert request(app, "POST", "/v1/recommend", json=body, headers={"Authorization": "Bearer from-env"}).status_code == 200
    monkeypatch.delenv("GENREC_API_TOKEN")
    assert request(make_app(checkpoints["retrieval"], token=None), "POST", "/v1/recommend", json=body).status_code == 200


def test_items_lookup_and_search(app):
    r = request(app, "GET", "/v1/items/i7")
    assert strict_json(r) == {"item": "i7", "title": "Step 7 of the walk", "fields": {"colour": "c1"}}
    r = request(app, "GET", "/v1/items/zz")
    assert r.status_code == 404 and strict_json(r)["error"]["code"] == "unknown_item"
    found = strict_json(request(app, "GET", "/v1/items", params={"query": "step 3"}))["items"]
    assert {i["item"] for i in found} == {f"i{k}" for k in range(40) if "3" in str(k)}  # every word, anywhere
    assert all(i["title"].startswith("Step ") for i in found)
    assert strict_json(request(app, "GET", "/v1/items", params={"query": "i12"}))["items"][0]["item"] == "i12"
    assert request(app, "GET", "/v1/items", params={"limit": 0}).status_code == 422


def test_model_card(app, checkpoints):
    card = strict_json(request(app, "GET", "/v1/model"))
    assert card["kind"] == "retrieval" and card["num_items"] == 40 and card["uses_timestamps"] is True
    assert card["metrics"]["protocol"]["ranking"].startswith("full catalogue")
    assert set(card["metrics"]["test"]) >= {"ndcg@10", "hr@10"} and card["model"]["name"] == "hstu"
    assert card["index"] == {"kind": "exact", "score": "cosine", "items": 40}
    assert card["metadata"] == {"source": str(checkpoints["metadata"]), "titles": True}


def test_metrics_count_requests_latency_batches_and_errors(checkpoints):
    app = make_app(checkpoints["retrieval"])
    request(app, "POST", "/v1/recommend", json=walk(["i1"]) | {"k": 2})
    request(app, "POST", "/v1/recommend", json=walk(["i1"]) | {"k": 0})
    request(app, "GET", "/no/such/route")
    text = request(app, "GET", "/metrics").text
    assert 'genrec_requests_total{method="POST",route="/v1/recommend",status="200"} 1.0' in text
    assert 'genrec_requests_total{method="POST",route="/v1/recommend",status="422"} 1.0' in text
    assert 'genrec_errors_total{code="invalid_k",route="/v1/recommend"} 1.0' in text
    assert 'genrec_errors_total{code="not_found",route="unmatched"} 1.0' in text
    assert 'genrec_request_seconds_count{route="/v1/recommend"} 2.0' in text
    assert "genrec_batch_size_count 1.0" in text and "genrec_model_info{" in text
    assert "genrec_batch_seconds_count 1.0" in text  # the model thread's pass, timed
    values = dict(line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(values["genrec_batch_cpu_seconds_total"]) > 0 and float(values["genrec_batch_seconds_sum"]) > 0


def test_openapi_documents_every_route(app):
    paths = strict_json(request(app, "GET", "/openapi.json"))["paths"]
    assert {"/v1/recommend", "/v1/rank", "/v1/items", "/v1/items/{item_id}", "/v1/model", "/v1/admin/reload",
            "/healthz", "/readyz", "/metrics"} <= set(paths)
    body = paths["/v1/recommend"]["post"]
    assert body["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("RecommendRequest")
    assert body["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("RecommendResponse")


def _post(app, **kw):
    """POST /v1/recommend in-process; an exception the app re-raises after its 500 answer (as
    Starlette's error middleware does) is left to the server, as uvicorn would."""
    import asyncio

    import httpx

    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://genrec.test", timeout=60) as client:
            return await client.post("/v1/recommend", **kw)

    return asyncio.run(go())


def _chunks(*parts: bytes):
    """A request body sent in chunks, without a Content-Length (a fresh one per request)."""
    async def body():
        for part in parts:
            yield part
    return body


def test_the_direct_recommend_route_answers_as_fastapis_route(checkpoints, monkeypatch):
    """Edge answers POST /v1/recommend itself; FastAPI's route (still declared, for the OpenAPI)
    must give the same status, body and headers for every kind of request, auth, chunked bodies
    and a failing pass included, and count the same in the metrics."""
    from genrec.serving.edge import Edge

    apps = {direct: make_app(checkpoints["retrieval"], token="s3cret", limits={"max_body_bytes": 4000}) for direct in (True, False)}
    for direct, app in apps.items():
        app.state.genrec.direct = direct
    taken, real = [0], Edge._recommend

    async def spy(self, *args):
        taken[0] += 1
        return await real(self, *args)

    monkeypatch.setattr(Edge, "_recommend", spy)
    ok = {"Authorization": "Bearer s3cret"}
    json_ok = ok | {"content-type": "application/json"}
    fine = json.dumps(walk(["i1", "i2"]) | {"k": 3}).encode()
    cases = [
        ({"json": walk(["i1", "i2"]) | {"k": 4}, "headers": ok}, 200),
        ({"json": walk(["i1", "i2"]) | {"k": 4, "allow": ["i3", "i4", "i5"], "deny": ["i4"]}, "headers": ok}, 200),
        ({"json": walk(["i1", "zz"]) | {"k": 2, "ignore_unknown": True}, "headers": ok}, 200),
        ({"content": _chunks(fine[:10], fine[10:]), "headers": json_ok}, 200),
        ({"json": walk(["i1", "zz"]) | {"k": 2}, "headers": ok}, 422),
        ({"json": walk(["i1"]) | {"k": 0}, "headers": ok}, 422),
        ({"json": walk(["i1"]) | {"k": 3, "top": 5}, "headers": ok}, 422),
        ({"content": b"{not json", "headers": json_ok}, 400),
        ({"content": b"", "headers": json_ok}, 400),
        ({"content": b'{"history": ["i1"], "timestamps": [1]}', "headers": ok | {"content-type": "text/plain"}}, 400),
        ({"json": walk(["i1"] * 400) | {"k": 3}, "headers": ok}, 413),  # Content-Length over the limit
        ({"content": _chunks(*[b" " * 1000] * 5), "headers": json_ok}, 413),  # counted while it streams in
        ({"json": walk(["i1"]) | {"k": 2}, "headers": {}}, 401),
        ({"json": walk(["i1"]) | {"k": 2}, "headers": {"Authorization": "Bearer wrong"}}, 401),
    ]
    for kw, status in cases:
        direct, routed = (_post(apps[d], **{k: v() if callable(v) else v for k, v in kw.items()}) for d in (True, False))
        assert direct.status_code == routed.status_code == status, (kw, direct.text, routed.text)
        assert strict_json(direct) == strict_json(routed), kw
        assert dict(direct.headers) == dict(routed.headers), kw
    assert taken[0] == len(cases) - 1  # every case but the Content-Length 413 (refused before any route) took the direct path

    def broken(jobs):
        raise RuntimeError("the pass failed")

    for app in apps.values():
        app.state.genrec.batcher.run = broken
    direct, routed = (_post(apps[d], json=walk(["i1"]) | {"k": 2}, headers=ok) for d in (True, False))
    assert direct.status_code == routed.status_code == 500 and strict_json(direct) == strict_json(routed)
    assert "RuntimeError: the pass failed" in strict_json(direct)["error"]["message"]
    for app in apps.values():  # after its 500, each path raises on to the server (which logs it and closes the connection)
        with pytest.raises(RuntimeError, match="the pass failed"):
            request(app, "POST", "/v1/recommend", json=walk(["i1"]) | {"k": 2}, headers=ok)
    for direct, app in apps.items():  # both paths count as the same route, with the same codes
        text = request(app, "GET", "/metrics", headers=ok).text
        assert 'genrec_requests_total{method="POST",route="/v1/recommend",status="200"} 4.0' in text, direct
        assert 'genrec_errors_total{code="unauthorized",route="/v1/recommend"} 2.0' in text, direct
        assert 'genrec_errors_total{code="body_too_large",route="/v1/recommend"} 1.0' in text, direct
        assert 'genrec_errors_total{code="internal_error",route="/v1/recommend"} 2.0' in text, direct


@pytest.mark.parametrize("route, direct", [("/v1/recommend", True), ("/v1/recommend", False), ("/v1/rank", True)])
def test_a_client_that_leaves_before_its_body_is_a_499(checkpoints, route, direct):
    """Recorded as nginx's "client closed" on both recommend paths and on /v1/rank (whose body
    FastAPI would read into a 400 'error parsing the body')."""
    import asyncio

    app = make_app(checkpoints["unified" if route == "/v1/rank" else "retrieval"])
    app.state.genrec.direct = direct
    sent = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": route, "raw_path": route.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    asyncio.run(app(scope, receive, send))
    assert all(m.get("status", 499) == 499 for m in sent)  # nothing, or a 499 nobody reads (the server drops it)
    text = request(app, "GET", "/metrics").text
    assert f'genrec_errors_total{{code="client_disconnected",route="{route}"}} 1.0' in text
    assert f'genrec_requests_total{{method="POST",route="{route}",status="499"}} 1.0' in text  # nginx's "client closed"


def test_the_direct_route_under_a_root_path(checkpoints, monkeypatch):
    """Started with --root-path /api, the path /api/v1/recommend still takes the direct route."""
    import asyncio

    from genrec.serving.edge import Edge

    taken, real = [0], Edge._recommend

    async def spy(self, *args):
        taken[0] += 1
        return await real(self, *args)

    monkeypatch.setattr(Edge, "_recommend", spy)
    app = make_app(checkpoints["retrieval"])
    body, sent = json.dumps(walk(["i1"]) | {"k": 2}).encode(), []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/v1/recommend", "raw_path": b"/api/v1/recommend", "query_string": b"", "root_path": "/api",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    asyncio.run(app(scope, receive, send))
    assert taken[0] == 1 and sent[0]["status"] == 200 and len(json.loads(sent[1]["body"])["items"]) == 2
