"""Dynamic micro-batching: concurrent requests answered by one forward pass.

Requests arrive on the event loop and are put on a thread-safe queue. One model thread takes them
off it and runs them in batches: when it finishes a batch, whatever queued meanwhile is the next
batch at once (up to ``max_batch``); when it was idle, it takes the first request that arrives and
gathers more for at most ``max_wait`` (2 ms by default). Under light load a request waits at most
``max_wait``; under heavy load the batches grow, the forward passes are shared, and the model thread
never waits on the event loop between batches, so throughput grows with load. Each request gets
its own answer or its own exception, handed back to its event loop in one callback per batch; a
failure anywhere in a pass (the batch function, a short answer list, the grouping) fails that
pass's requests, never the model thread.

The model thread gathers its own batches because a gathering task on the event loop has to wait
for its turn among the requests being parsed and answered there: measured on the project's 2-core
machine at 32 users, the model thread then stood idle 6.8 ms between passes of 9.4 ms on average.

A batch is split by the object that answers it (``key``): after a hot reload, requests that were
checked against the old checkpoint are still answered by it, new ones by the new one.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

_STOP = object()


class MicroBatcher:
    """``await submit(job)`` -> ``run(batch)[i]`` for this job, batched with concurrent jobs."""

    def __init__(
        self,
        run: Callable[[Sequence[Any]], list[Any]],
        key: Callable[[Any], Hashable] = lambda job: None,
        max_batch: int = 64,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int, float, float], None] | None = None,
    ):
        """``on_batch(size, seconds, cpu_seconds)``: after each ``run``, on the model thread, its
        number of jobs and its wall and CPU time (failed runs included)."""
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch={max_batch} must be >= 1 and max_wait_ms={max_wait_ms} >= 0")
        self.run, self.key, self.on_batch = run, key, on_batch
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()  # (job, future, its loop) or _STOP
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # submit vs close: nothing is queued behind the stop request
        self._closed = False

    async def submit(self, job: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the micro-batcher is closed: the service is shutting down")
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="genrec-batch", daemon=True)  # the model thread
                self._thread.start()
            self._jobs.put((job, future, loop))
        return await future

    async def close(self) -> None:
        """Answer the requests queued before this call, then stop the model thread; later
        ``submit`` calls raise."""
        with self._lock:
            if self._closed:
                return
            self._closed, thread = True, self._thread
            self._jobs.put(_STOP)
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.join)
        left = []  # only if the thread was gone: never wait on it
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                left.append(item)
        _send(left, [(None, RuntimeError("the micro-batcher closed before answering"))] * len(left))

    # ---- the model thread -------------------------------------------------------------------------
    def _work(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._jobs.get_nowait()  # queued while the last batch ran: no waiting for company
                waits = False
            except queue.Empty:
                first = self._jobs.get()  # idle: block until a request arrives
                waits = self.max_wait > 0
            if first is _STOP:
                return
            batch, stop = self._gather(first, waits)
            try:
                self._run_batch(batch)
            except BaseException as exc:  # noqa: BLE001 - whatever escaped: the batch's requests get it, the thread lives on
                _send(batch, [(None, _raisable(exc))] * len(batch))  # (those already answered keep their answer)
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
            del first, batch  # while idle, hold no job (nor, through it, a model a reload replaced)

    def _gather(self, first: tuple, waits: bool) -> tuple[list[tuple], bool]:
        """``first``, then what is queued (and, if ``waits``, what arrives within max_wait), up to
        max_batch; and whether a stop request was met."""
        batch, deadline = [first], time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if not waits or left <= 0:
                    break
                try:
                    item = self._jobs.get(timeout=left)
                except queue.Empty:
                    break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run_batch(self, batch: list[tuple[Any, asyncio.Future, asyncio.AbstractEventLoop]]) -> None:
        groups: dict[Hashable, list[tuple[Any, asyncio.Future, asyncio.AbstractEventLoop]]] = {}
        for item in batch:
            if item[1].cancelled():  # the client is gone (read across threads: at worst it runs once more)
                continue
            try:
                key = self.key(item[0])
            except Exception as exc:  # noqa: BLE001 - that job alone fails
                _send([item], [(None, exc)])
                continue
            groups.setdefault(key, []).append(item)
        for group in groups.values():
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                results = self.run([job for job, _, _ in group])
                if len(results) != len(group):
                    raise RuntimeError(f"the batch function answered {len(results)} of {len(group)} requests")
                answers = [(result, None) for result in results]
            except Exception as exc:  # noqa: BLE001 - the batch's error goes to each of its requests
                answers = [(None, _raisable(exc))] * len(group)
            if self.on_batch is not None:  # before the answers: a client that has its answer finds the pass counted
                try:
                    self.on_batch(len(group), time.perf_counter() - start, time.thread_time() - cpu)
                except Exception as exc:  # noqa: BLE001 - a metrics hook failing must not stop the model thread
                    print(f"genrec serve: the batch hook failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            _send(group, answers)


def _send(items: list[tuple[Any, asyncio.Future, asyncio.AbstractEventLoop]], answers: list[tuple[Any, BaseException | None]]) -> None:
    """Hand each job's (result, exception) to its future, on that future's event loop: one
    callback per loop."""
    loops: dict[asyncio.AbstractEventLoop, list] = {}
    for (_, fut, loop), (result, exc) in zip(items, answers):
        loops.setdefault(loop, []).append((fut, result, exc))
    for loop, delivery in loops.items():
        try:
            loop.call_soon_threadsafe(_deliver, delivery)
        except RuntimeError:  # that event loop is closed: nobody waits for these answers
            pass


def _raisable(exc: BaseException) -> BaseException:
    """``exc`` as a future can hold it: StopIteration and exceptions outside Exception (a
    cancellation, an exit) become a RuntimeError that names them."""
    if isinstance(exc, Exception) and not isinstance(exc, StopIteration):
        return exc
    wrapped = RuntimeError(f"the pass failed: {exc!r}")
    wrapped.__cause__ = exc
    return wrapped


def _deliver(answers: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    """On the event loop: each request's answer or exception (a cancelled one is skipped)."""
    for fut, result, exc in answers:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
