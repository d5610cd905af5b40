"""Hot reload: POST /v1/admin/reload and SIGHUP swap in a checkpoint while requests are in flight,
and none of them fails; a reload that cannot load keeps the old model."""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from genrec import Recommender

from .conftest import SERVE_MISSING, SKIP_REASON

if SERVE_MISSING:
    pytest.skip(SKIP_REASON, allow_module_level=True)

from .client import make_app, run, strict_json, walk  # noqa: E402

BODY = walk(["i1", "i2", "i3"]) | {"k": 5}


def _top(rec: Recommender) -> list[str]:
    return [i for i, _ in rec.recommend(BODY["history"], 5, BODY["timestamps"])]


def test_reload_swaps_models_without_failing_requests_in_flight(checkpoints):
    old, new = Recommender.load(checkpoints["retrieval"]), Recommender.load(checkpoints["other"])
    assert _top(old) != _top(new)
    app = make_app(checkpoints["retrieval"], token="t")
    auth = {"Authorization": "Bearer t"}

    async def calls(client):
        async def recommend():
            return await client.post("/v1/recommend", json=BODY, headers=auth)

        before = [asyncio.ensure_future(recommend()) for _ in range(30)]
        reload = asyncio.ensure_future(client.post("/v1/admin/reload", json={"checkpoint": str(checkpoints["other"])},
                                                   headers=auth))
        during = [asyncio.ensure_future(recommend()) for _ in range(30)]
        answers = await asyncio.gather(*before, reload, *during)
        after = await recommend()
        bad = await client.post("/v1/admin/reload", json={"checkpoint": "/no/such/checkpoint"}, headers=auth)
        still = await recommend()
        return answers, after, bad, still

    answers, after, bad, still = run(app, calls)
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    tops = {tuple(i["item"] for i in strict_json(r)["items"]) for r in answers if "items" in r.json()}
    assert tops <= {tuple(_top(old)), tuple(_top(new))}  # each answered whole by one model
    assert [i["item"] for i in strict_json(after)["items"]] == _top(new)
    assert bad.status_code == 422 and strict_json(bad)["error"]["code"] == "reload_failed"
    assert [i["item"] for i in strict_json(still)["items"]] == _top(new)  # the failed reload kept the model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sighup_reloads_a_running_server(checkpoints, tmp_path):
    """``genrec serve`` for real (uvicorn, one worker): retrain into the served folder (here: copy
    other weights over it), SIGHUP, and the new weights answer; requests keep succeeding meanwhile."""
    served = tmp_path / "run" / "best"
    shutil.copytree(checkpoints["retrieval"], served)
    port = _free_port()
    env = {**os.environ, "GENREC_API_TOKEN": "t", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "genrec.cli", "serve", str(served), "--port", str(port), "--threads", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer t"}
    statuses, stop = [], threading.Event()
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            _wait_ready(client, proc)
            first = client.get("/readyz").json()["model"]

            def hammer():
                while not stop.is_set():
                    statuses.append(client.post("/v1/recommend", json=BODY, headers=auth).status_code)

            thread = threading.Thread(target=hammer)
            thread.start()
            tmp = tmp_path / "run" / "incoming"
            shutil.copytree(checkpoints["other"], tmp)
            shutil.rmtree(served)
            os.replace(tmp, served)
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while client.get("/readyz").json()["model"] == first and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.2)
            stop.set()
            thread.join()
            got = client.post("/v1/recommend", json=BODY, headers=auth).json()
    finally:
        stop.set()
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert [i["item"] for i in got["items"]] == _top(Recommender.load(checkpoints["other"])), err[-2000:]
    assert statuses and set(statuses) == {200}, err[-2000:]
    assert "SIGHUP: now serving" in err


def _wait_ready(client: httpx.Client, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"genrec serve exited {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail("genrec serve did not become ready")


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_several_workers_share_metrics_and_reload_together(checkpoints, tmp_path):
    """``genrec serve --workers 2`` for real: /metrics counts every worker's requests whichever
    worker answers it; POST /v1/admin/reload restarts every worker on the re-read path (202) and
    refuses another path (409); the new weights then answer everywhere, nothing failed meanwhile."""
    served = tmp_path / "run" / "best"
    shutil.copytree(checkpoints["retrieval"], served)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GENREC_API_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "genrec.cli", "serve", str(served), "--port", str(port), "--workers", "2",
                             "--log-level", "warning"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base, new_top = f"http://127.0.0.1:{port}", _top(Recommender.load(checkpoints["other"]))
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            _wait_ready(client, proc)
            first = client.get("/readyz").json()["model"]
            statuses = []
            for _ in range(24):  # a new connection each: the kernel spreads them over the workers
                with httpx.Client(base_url=base, timeout=60) as one:
                    statuses.append(one.post("/v1/recommend", json=BODY).status_code)
            page = client.get("/metrics").text
            assert _metric(page, "genrec_requests_total", route="/v1/recommend", status="200") == 24, page[-3000:]
            assert _metric(page, "genrec_model_info", weights_sha256=first) == 2  # one series per live worker
            refused = client.post("/v1/admin/reload", json={"checkpoint": str(checkpoints["other"])})
            assert refused.status_code == 409 and strict_json(refused)["error"]["code"] == "reload_needs_restart"
            tmp = tmp_path / "run" / "incoming"
            shutil.copytree(checkpoints["other"], tmp)
            shutil.rmtree(served)
            os.replace(tmp, served)  # a training run rewrote best/
            accepted = client.post("/v1/admin/reload")
            assert accepted.status_code == 202 and accepted.json()["rolling_restart"] is True
            deadline, seen = time.monotonic() + 180, []
            while time.monotonic() < deadline:  # both workers replaced: only the new weights answer
                with httpx.Client(base_url=base, timeout=60) as one:
                    r = one.post("/v1/recommend", json=BODY)
                    statuses.append(r.status_code)
                    seen = (seen + [tuple(i["item"] for i in r.json()["items"])])[-8:] if r.status_code == 200 else seen
                page = client.get("/metrics").text
                if len(seen) == 8 and set(seen) == {tuple(new_top)} and _metric(page, "genrec_model_info", weights_sha256=first) == 0:
                    break
                time.sleep(0.2)
            assert set(seen) == {tuple(new_top)}, seen
            assert _metric(page, "genrec_model_info", weights_sha256=first) == 0  # the old workers' series left with them
            assert _metric(page, "genrec_requests_total", route="/v1/recommend", status="200") >= 24  # counts survive restarts
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert set(statuses) == {200}, err[-3000:]
