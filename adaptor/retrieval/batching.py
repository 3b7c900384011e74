"""Micro-batching of concurrent requests through one model call.

Requests wait in a queue; a single worker takes everything queued (up to ``max_batch``),
runs one batched call in a worker thread, and hands each caller its own result. Under
load, requests pile up while a batch computes, so batches grow by themselves and the
encoders run a few large forward passes instead of many single ones; an idle service
answers one request at once, without waiting for company.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from adaptor.retrieval.errors import RetrievalError

T = TypeVar("T")
R = TypeVar("R")


class BusyError(RetrievalError):
    """More requests are waiting than the service accepts; the client should retry later."""


@dataclass
class BatchStats:
    """Counters of a batcher: calls made, items served, largest batch."""

    batches: int = 0
    items: int = 0
    largest: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the mean batch size."""
        mean = self.items / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "items": self.items,
            "largest": self.largest,
            "mean": round(mean, 2),
        }


class MicroBatcher(Generic[T, R]):
    """Collects items submitted concurrently and runs ``fn`` on lists of them.

    ``fn(items)`` returns one result per item, in order; it runs on ``executor``. If it
    raises, every caller of that batch gets the exception. Create and :meth:`start` it
    inside the running event loop.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        executor: Executor,
        *,
        max_batch: int = 32,
        max_pending: int = 256,
    ):
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be at least 1")
        self._fn = fn
        self._executor = executor
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    @property
    def executor(self) -> Executor:
        """Where ``fn`` runs; a batcher added later shares it to keep model calls on one thread."""
        return self._executor

    def start(self) -> None:
        """Start the worker task on the running loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; callers still waiting get a BusyError."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(BusyError("the service is shutting down"))

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result."""
        if self._worker is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if self._queue.qsize() >= self.max_pending:
            raise BusyError(f"{self.max_pending} requests already waiting; retry shortly")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [(item, future) for item, future in batch if not future.done()]
            if not live:
                continue
            self.stats.batches += 1
            self.stats.items += len(live)
            self.stats.largest = max(self.stats.largest, len(live))
            try:
                results = await loop.run_in_executor(
                    self._executor, self._fn, [item for item, _ in live]
                )
            except Exception as err:  # every caller of the batch learns what went wrong
                for _, future in live:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)
