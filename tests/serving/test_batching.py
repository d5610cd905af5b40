"""Micro-batching: concurrent requests share forward passes, and the batched answers are the
per-request answers (same items in the same order; scores equal up to float32 rounding of the
wider matmuls, 1e-6 here)."""

import asyncio
import random
import threading
import time

import pytest
import torch

from genrec import Recommender

from .conftest import SERVE_MISSING, SKIP_REASON


def _requests(rec: Recommender, n: int, seed: int = 0) -> list[dict]:
    """Histories of 1..15 items (past the model's window), some with a query time, unknown ids
    (dropped), feedback when the model reads it, k from 1 to the catalogue."""
    rng = random.Random(seed)
    out = []
    for r in range(n):
        length = rng.randint(1, 15)
        history = [rng.choice(rec.item_ids) for _ in range(length)]
        if r % 7 == 3 and length > 1:
            history[rng.randrange(length)] = "not-an-item"
        t0 = 1_000_000 + rng.randint(0, 10_000)
        req = {"history": history, "timestamps": [t0 + 3600 * s for s in range(length)], "ignore_unknown": True,
               "query_time": t0 + 3600 * length if r % 3 == 0 else None}
        if rec.reads_feedback:
            req["feedback"] = [[float(rng.random() < 0.5)] for _ in range(length)]
        out.append(req)
    return out


@pytest.mark.parametrize("kind", ["retrieval", "unified"])
def test_recommend_many_equals_recommend(checkpoints, kind):
    rec = Recommender.load(checkpoints[kind])
    reqs = _requests(rec, 40)
    one_by_one = [rec.recommend(k=7, **r) for r in reqs]
    batched = rec.recommend_many([rec.query(**r) for r in reqs], k=7)
    assert [[i for i, _ in row] for row in batched] == [[i for i, _ in row] for row in one_by_one]
    for got, want in zip(batched, one_by_one):
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)
    alone = rec.recommend_many([rec.query(**reqs[0])], k=7)[0]  # a batch of one
    assert [i for i, _ in alone] == [i for i, _ in one_by_one[0]]
    assert [s for _, s in alone] == pytest.approx([s for _, s in one_by_one[0]], abs=1e-6)


@pytest.mark.parametrize("kind", ["retrieval", "unified"])
def test_a_batch_split_into_passes_by_length_keeps_each_rows_vector(checkpoints, kind):
    """On CPU a large batch runs as several passes of similar lengths (cpu_cells_per_pass): each
    row's vector, in the request order, is the one-pass vector and the vector of its request alone."""
    rec = Recommender.load(checkpoints[kind])
    queries = [rec.query(**r) for r in _requests(rec, 40, seed=1)]
    lengths = sorted({q.items.size(1) for q in queries})
    assert len(lengths) > 2  # the split has lengths to sort
    rec.cpu_cells_per_pass = None
    one_pass = rec.query_vectors(queries)
    rec.cpu_cells_per_pass = 2 * max(lengths) ** 2  # passes of 2 rows at the longest, more at the shortest
    split = rec.query_vectors(queries)
    torch.testing.assert_close(split, one_pass, atol=1e-6, rtol=1e-5)
    rec.cpu_cells_per_pass = 1  # one row per pass (a pass of one row may exceed the budget)
    torch.testing.assert_close(rec.query_vectors(queries), one_pass, atol=1e-6, rtol=1e-5)
    for b in (0, 17, 39):
        torch.testing.assert_close(split[b], rec.query_vectors([queries[b]])[0], atol=1e-6, rtol=1e-5)


def test_batcher_shares_passes_and_bounds_batches():
    if SERVE_MISSING:
        pytest.skip(SKIP_REASON)
    from genrec.serving.batcher import MicroBatcher

    sizes = []

    def run(jobs):
        time.sleep(0.005)  # a forward pass: requests queue up meanwhile
        return [j * 10 for j in jobs]

    async def go():
        b = MicroBatcher(run, max_batch=8, max_wait_ms=2, on_batch=lambda n, seconds, cpu: sizes.append(n))
        out = await asyncio.gather(*(b.submit(j) for j in range(50)))
        alone = time.perf_counter()
        await b.submit(99)
        waited = time.perf_counter() - alone
        await b.close()
        return out, waited

    out, waited = asyncio.run(go())
    assert out == [j * 10 for j in range(50)]  # each request its own answer
    assert sum(sizes) == 51 and max(sizes) == 8 and len(sizes) <= 8  # 50 requests in full batches of 8, then 1
    assert waited < 0.2  # a lone request waits ~2 ms for company, then runs


def test_requests_queued_behind_a_busy_model_thread_go_at_once():
    """The model thread waits max_wait for company only when it was idle: what queued while it
    ran a batch is the next batch straight away (here max_wait is 1 s; nothing waits for it)."""
    if SERVE_MISSING:
        pytest.skip(SKIP_REASON)
    from genrec.serving.batcher import MicroBatcher

    sizes, first_running = [], threading.Event()

    def run(jobs):
        sizes.append(len(jobs))
        first_running.set()
        time.sleep(0.3 if len(sizes) == 1 else 0.01)  # the first pass: long enough for the others to queue up
        return jobs

    async def go():
        b = MicroBatcher(run, max_batch=16, max_wait_ms=1000)
        first = asyncio.ensure_future(b.submit(0))
        await asyncio.get_running_loop().run_in_executor(None, first_running.wait)  # after its 1 s wait for company
        began = time.perf_counter()
        rest = await asyncio.gather(*(b.submit(j) for j in range(1, 6)))
        took = time.perf_counter() - began
        await b.close()
        return await first, rest, took

    first, rest, took = asyncio.run(go())
    assert first == 0 and rest == [1, 2, 3, 4, 5] and sizes == [1, 5]
    assert took < 0.9, took  # the rest of the first pass and the second, not another 1 s wait


def test_the_model_thread_survives_failures_and_close_answers_what_was_queued():
    if SERVE_MISSING:
        pytest.skip(SKIP_REASON)
    import gc
    import weakref

    from genrec.serving.batcher import MicroBatcher

    threads = set()

    class Job:
        def __init__(self, name):
            self.name = name

    def key(job):
        if job.name == "bad key":
            raise KeyError(job.name)
        return job.name in ("short", "cancelled", "stop", "g2")  # these run in a group of their own

    def run(jobs):
        threads.add(threading.get_ident())
        names = [j.name for j in jobs]
        time.sleep(0.01)
        if "cancelled" in names:
            raise asyncio.CancelledError()  # not an Exception: it must not end the thread
        if "stop" in names:
            raise StopIteration  # a future cannot hold it as it is
        return names[:-1] if "short" in names else names  # "short": one answer missing

    def hook(n, seconds, cpu):
        raise OSError("metrics disk full")

    async def one(b, name):
        return await asyncio.wait_for(b.submit(Job(name)), 10)  # (a lost answer times out instead of hanging the suite)

    async def go():
        b = MicroBatcher(run, key=key, max_batch=8, on_batch=hook)
        got = await asyncio.gather(one(b, "a"), one(b, "bad key"), one(b, "b"), return_exceptions=True)
        assert got[0] == "a" and got[2] == "b" and isinstance(got[1], KeyError)  # the bad key fails its own job only
        for name, says in (("short", "answered 0 of 1"), ("cancelled", "CancelledError"), ("stop", "StopIteration")):
            with pytest.raises(RuntimeError, match=says):
                await one(b, name)
        # two groups in one pass, the hook failing after each: both still get their answers
        assert await asyncio.gather(one(b, "c"), one(b, "g2")) == ["c", "g2"]
        job = Job("kept?")
        assert await asyncio.wait_for(b.submit(job), 10) == "kept?"
        kept = weakref.ref(job)
        del job
        await asyncio.sleep(0.05)  # the thread is idle now
        gc.collect()
        assert kept() is None  # the idle thread holds no finished job
        queued = [asyncio.ensure_future(b.submit(Job(str(j)))) for j in range(5)]
        await asyncio.sleep(0)  # queued before close
        await b.close()
        with pytest.raises(RuntimeError, match="closed"):
            await b.submit(Job("late"))
        return await asyncio.gather(*queued)

    assert asyncio.run(go()) == ["0", "1", "2", "3", "4"]
    assert len(threads) == 1  # one model thread throughout: no failure ended it


def test_a_failing_batch_fails_its_requests_only():
    if SERVE_MISSING:
        pytest.skip(SKIP_REASON)
    from genrec.serving.batcher import MicroBatcher

    def run(jobs):
        if "bad" in jobs:
            raise RuntimeError("boom")
        return jobs

    async def go():
        b = MicroBatcher(run, key=lambda j: j == "bad", max_batch=4)
        got = await asyncio.gather(b.submit("a"), b.submit("bad"), b.submit("c"), return_exceptions=True)
        await b.close()
        return got

    a, bad, c = asyncio.run(go())
    assert (a, c) == ("a", "c") and isinstance(bad, RuntimeError)


@pytest.mark.parametrize("kind", ["retrieval", "unified"])
def test_server_batched_answers_equal_per_request_answers(checkpoints, kind):
    if SERVE_MISSING:
        pytest.skip(SKIP_REASON)
    from .client import make_app, request, run, strict_json

    rec = Recommender.load(checkpoints[kind])
    bodies = [r | {"k": [1, 5, 40][i % 3], "exclude_history": i % 4 != 0} for i, r in enumerate(_requests(rec, 48, seed=1))]

    def answers(app):
        async def all_at_once(client):
            return await asyncio.gather(*(client.post("/v1/recommend", json=b) for b in bodies))

        return [strict_json(r) for r in run(app, all_at_once)], request(app, "GET", "/metrics").text

    batched, metrics_on = answers(make_app(checkpoints[kind], max_batch=16))
    single, metrics_off = answers(make_app(checkpoints[kind], batching=False))
    for got, want in zip(batched, single):
        assert [i["item"] for i in got["items"]] == [i["item"] for i in want["items"]]
        assert [i["score"] for i in got["items"]] == pytest.approx([i["score"] for i in want["items"]], abs=2e-6)
        assert got["dropped"] == want["dropped"]
    # batching on: fewer forward passes than requests, none above max_batch; off: one each
    count_on = float(metrics_on.split("genrec_batch_size_count ")[1].split()[0])
    assert count_on < 48 and 'genrec_batch_size_bucket{le="16.0"} ' + f"{count_on}" in metrics_on
    assert "genrec_batch_size_count 48.0" in metrics_off and "genrec_batch_size_sum 48.0" in metrics_off


def test_per_request_mode_runs_one_forward_at_a_time(checkpoints, monkeypatch):
    """--no-batching: concurrent requests each get their own forward pass, one after another on
    one model thread (a pass per request in the shared thread pool would run dozens at once)."""
    if SERVE_MISSING:
        pytest.skip(SKIP_REASON)
    import threading

    from genrec.serving import app as app_module

    from .client import make_app, run, strict_json

    rec = Recommender.load(checkpoints["retrieval"])
    bodies = _requests(rec, 12, seed=3)
    active, most, threads, lock = [0], [0], set(), threading.Lock()
    real = app_module.search_batch

    def watched(jobs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
            threads.add(threading.get_ident())
        time.sleep(0.01)  # long enough for the other requests to arrive meanwhile
        try:
            return real(jobs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(app_module, "search_batch", watched)

    async def all_at_once(client):
        return await asyncio.gather(*(client.post("/v1/recommend", json=b) for b in bodies))

    answers = [strict_json(r) for r in run(make_app(checkpoints["retrieval"], batching=False), all_at_once)]
    assert len(answers) == 12 and all(a["items"] for a in answers)
    assert most[0] == 1 and len(threads) == 1, (most, threads)
