"""Dynamic micro-batching: concurrent requests answered by one forward pass.

Requests arrive on the event loop and wait in a queue. One task takes the first waiting request,
gathers more until the batch is full (``max_batch``) or ``max_wait`` has passed since it took the
first, and hands the batch to a single model thread; while that thread works, new requests queue
up and form the next batch. Under light load a request waits at most ``max_wait`` (2 ms by
default); under heavy load the batches grow and the forward passes are shared, so throughput grows
with load. Each request gets its own answer or its own exception.

A batch is split by the object that answers it (``key``): after a hot reload, requests that were
checked against the old checkpoint are still answered by it, new ones by the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class MicroBatcher:
    """``await submit(job)`` -> ``run(batch)[i]`` for this job, batched with concurrent jobs."""

    def __init__(
        self,
        run: Callable[[Sequence[Any]], list[Any]],
        key: Callable[[Any], Hashable] = lambda job: None,
        max_batch: int = 64,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch={max_batch} must be >= 1 and max_wait_ms={max_wait_ms} >= 0")
        self.run, self.key, self.on_batch = run, key, on_batch
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genrec-batch")  # the model thread

    async def submit(self, job: Any) -> Any:
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._loop())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, future))
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def _gather(self) -> list[tuple[Any, asyncio.Future]]:
        """The first waiting job, then whatever joins within max_wait, up to max_batch."""
        queue, loop = self._queue, asyncio.get_running_loop()
        batch = [await queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [(job, fut) for job, fut in await self._gather() if not fut.cancelled()]  # client gone
            groups: dict[Hashable, list[tuple[Any, asyncio.Future]]] = {}
            for job, fut in batch:
                groups.setdefault(self.key(job), []).append((job, fut))
            for group in groups.values():
                if self.on_batch is not None:
                    self.on_batch(len(group))
                try:
                    results = await loop.run_in_executor(self._executor, self.run, [job for job, _ in group])
                except Exception as exc:  # noqa: BLE001 - the batch's error goes to each of its requests
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), result in zip(group, results):
                    if not fut.done():
                        fut.set_result(result)
