"""Dynamic batching: requests queue rows, one worker owns the model and runs it in a thread.

A row is one rendered view ``(3, S, S)`` (the service queues uint8 pixels).
:meth:`DynamicBatcher.submit` admits all rows of a request or none (429 when the queue would
overflow). The worker closes a batch when it holds ``max_batch_size`` rows or when the oldest
queued row has waited ``max_wait_s``; the model then runs in a dedicated single-thread executor,
so the event loop keeps serving while it computes. Rows of a client that went away are removed
with :meth:`DynamicBatcher.drop` and never reach the model.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from teacher_service.service.metrics import ServiceMetrics

__all__ = ["BatcherClosedError", "DynamicBatcher", "QueueFullError", "RowResult"]

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The queue cannot take the request's rows now (answer 429)."""


class BatcherClosedError(Exception):
    """The batcher is not running (starting up or shutting down; answer 503)."""


@dataclass(frozen=True)
class RowResult:
    """One row's output: ``vector (D,) float32``, seconds queued, seconds of its batch."""

    vector: np.ndarray
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass
class _Row:
    x: torch.Tensor
    future: asyncio.Future[RowResult]
    enqueued: float


class DynamicBatcher:
    """Queue rows and run ``run_batch((B, 3, S, S) rows) -> (B, D) float32`` on closed batches.

    ``max_wait_s`` is measured from the arrival of the oldest row in the queue; ``max_queue`` bounds
    the rows waiting (rows being computed do not count). Start with :meth:`start` inside a running
    event loop, stop with :meth:`stop` (pending rows fail with :class:`BatcherClosedError`).
    """

    def __init__(
        self,
        run_batch: Callable[[torch.Tensor], np.ndarray],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_s >= 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._metrics = metrics
        self._queue: collections.deque[_Row] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._reserved = 0
        self.batches = 0

    @property
    def depth(self) -> int:
        """Rows waiting (not yet handed to the model)."""
        return len(self._queue)

    @property
    def reserved(self) -> int:
        """Rows admitted with :meth:`reserve` and not yet submitted (being decoded/rendered)."""
        return self._reserved

    def reserve(self, k: int) -> None:
        """Admit ``k`` rows before they are rendered, so overload is refused before any work.

        Raises :class:`QueueFullError` when queued + reserved + ``k`` exceeds ``max_queue``;
        pair with :meth:`release` once the rows are submitted or abandoned.
        """
        self._check_room(k)
        self._reserved += k

    def release(self, k: int) -> None:
        """Return ``k`` rows reserved with :meth:`reserve`."""
        self._reserved = max(0, self._reserved - k)

    def _check_room(self, k: int) -> None:
        if not self.running or self._wakeup is None:
            raise BatcherClosedError("the model worker is not running")
        waiting = len(self._queue) + self._reserved
        if waiting + k > self.max_queue:
            raise QueueFullError(
                f"queue full: {waiting} rows waiting, {k} more requested, limit {self.max_queue}"
            )

    @property
    def running(self) -> bool:
        """True while the worker task is alive."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the worker task and the model thread (call from the serving event loop)."""
        if self.running:
            return
        self._wakeup = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="disco-model"
        )
        self._task = asyncio.create_task(self._worker(), name="disco-batcher")

    async def stop(self) -> None:
        """Stop the worker, fail every queued row, and shut the model thread down."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            row = self._queue.popleft()
            if not row.future.done():
                row.future.set_exception(BatcherClosedError("the service is shutting down"))
        self._set_depth()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def submit(self, rows: torch.Tensor) -> list[asyncio.Future[RowResult]]:
        """Queue ``rows (k, 3, S, S)`` (any dtype/device ``run_batch`` takes); one future per row.

        All or nothing: raises :class:`QueueFullError` when queued + reserved + ``k`` exceeds
        ``max_queue`` and :class:`BatcherClosedError` when the worker is not running.
        """
        k = int(rows.shape[0])
        self._check_room(k)
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        futures: list[asyncio.Future[RowResult]] = []
        for i in range(k):
            future: asyncio.Future[RowResult] = loop.create_future()
            self._queue.append(_Row(rows[i], future, now))
            futures.append(future)
        self._set_depth()
        self._wakeup.set()
        return futures

    def drop(self, futures: Sequence[asyncio.Future[RowResult]]) -> int:
        """Remove still-queued rows of ``futures`` and cancel them; returns how many were queued."""
        wanted = {id(f) for f in futures}
        kept = collections.deque(row for row in self._queue if id(row.future) not in wanted)
        dropped = len(self._queue) - len(kept)
        self._queue = kept
        for future in futures:
            future.cancel()
        if dropped and self._metrics is not None:
            self._metrics.dropped.inc(dropped)
        self._set_depth()
        return dropped

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(len(self._queue))

    async def _next_batch(self) -> list[_Row]:
        """Wait until a batch closes; returns 1..max_batch_size live rows."""
        assert self._wakeup is not None
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self._queue[0].enqueued + self.max_wait_s
            while len(self._queue) < self.max_batch_size and self._queue:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            batch: list[_Row] = []
            while self._queue and len(batch) < self.max_batch_size:
                row = self._queue.popleft()
                if not row.future.done():
                    batch.append(row)
            self._set_depth()
            if batch:
                return batch

    def _forward(self, xs: list[torch.Tensor]) -> np.ndarray:
        """Stack rows and run the model (in the model thread, off the event loop)."""
        return self._run_batch(torch.stack(xs))

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            started = time.perf_counter()
            try:
                xs = [row.x for row in batch]
                out = await loop.run_in_executor(self._executor, self._forward, xs)
                if out.shape[0] != len(batch):
                    raise RuntimeError(f"model returned {out.shape[0]} rows for {len(batch)}")
            except asyncio.CancelledError:
                for row in batch:
                    if not row.future.done():
                        row.future.set_exception(BatcherClosedError("the service is shutting down"))
                raise
            except Exception as exc:  # the model failed on a whole batch: fail it, keep serving
                log.exception("model batch of %d rows failed", len(batch))
                for row in batch:
                    if not row.future.done():
                        row.future.set_exception(exc)
                continue
            elapsed = time.perf_counter() - started
            self.batches += 1
            if self._metrics is not None:
                self._metrics.batch_size.observe(len(batch))
                self._metrics.inference_seconds.observe(elapsed)
                self._metrics.images.inc(len(batch))
            for i, row in enumerate(batch):
                queued = started - row.enqueued
                if self._metrics is not None:
                    self._metrics.queue_seconds.observe(queued)
                if not row.future.done():
                    row.future.set_result(RowResult(out[i], queued, elapsed, len(batch)))
