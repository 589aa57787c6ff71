"""DynamicBatcher: batches close at size or wait, bounded queue, dropped rows, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest
import torch

from teacher_service.service.batching import BatcherClosedError, DynamicBatcher, QueueFullError
from teacher_service.service.metrics import ServiceMetrics

T = TypeVar("T")


class Recorder:
    """A fake model: row r -> [sum of its pixels, batch size]; remembers every batch."""

    def __init__(self, fail_first: bool = False) -> None:
        self.batches: list[list[float]] = []
        self.fail_first = fail_first

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("boom")
        sums = x.flatten(1).sum(1).numpy()
        self.batches.append(sums.tolist())
        return np.stack([sums, np.full_like(sums, len(sums))], axis=1).astype(np.float32)


def rows(*values: float) -> torch.Tensor:
    return torch.stack([torch.full((3, 2, 2), v / 12.0) for v in values])


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_batch_closes_at_max_size_and_keeps_order() -> None:
    async def main() -> tuple[list[list[float]], list[float]]:
        model = Recorder()
        batcher = DynamicBatcher(model, max_batch_size=4, max_wait_s=30.0, max_queue=64)
        await batcher.start()
        futures = batcher.submit(rows(*range(8)))
        results = await asyncio.wait_for(asyncio.gather(*futures), timeout=20)
        await batcher.stop()
        return model.batches, [float(r.vector[0]) for r in results]

    batches, sums = run(main())
    assert [len(b) for b in batches] == [4, 4]
    assert sums == pytest.approx([float(v) for v in range(8)])


def test_batch_closes_at_max_wait_with_one_row() -> None:
    async def main() -> tuple[int, float]:
        batcher = DynamicBatcher(Recorder(), max_batch_size=64, max_wait_s=0.02, max_queue=64)
        await batcher.start()
        (future,) = batcher.submit(rows(5))
        result = await asyncio.wait_for(future, timeout=20)
        await batcher.stop()
        return result.batch_size, result.queue_s

    size, queued = run(main())
    assert size == 1
    assert queued >= 0.02 * 0.9


def test_concurrent_submitters_share_a_batch() -> None:
    async def one(batcher: DynamicBatcher, value: float) -> int:
        (future,) = batcher.submit(rows(value))
        return (await future).batch_size

    async def main() -> list[int]:
        batcher = DynamicBatcher(Recorder(), max_batch_size=8, max_wait_s=0.5, max_queue=64)
        await batcher.start()
        sizes = await asyncio.wait_for(
            asyncio.gather(*(one(batcher, v) for v in range(8))), timeout=20
        )
        await batcher.stop()
        return list(sizes)

    assert run(main()) == [8] * 8


def test_queue_is_bounded_all_or_nothing() -> None:
    async def main() -> tuple[int, int]:
        batcher = DynamicBatcher(Recorder(), max_batch_size=64, max_wait_s=30.0, max_queue=3)
        await batcher.start()
        first = batcher.submit(rows(1, 2))
        with pytest.raises(QueueFullError):
            batcher.submit(rows(3, 4))
        depth = batcher.depth
        batcher.submit(rows(3))
        full = batcher.depth
        batcher.drop(first)
        await batcher.stop()
        return depth, full

    assert run(main()) == (2, 3)


def test_dropped_rows_never_reach_the_model() -> None:
    async def main() -> tuple[list[list[float]], float, list[float]]:
        model = Recorder()
        metrics = ServiceMetrics()
        batcher = DynamicBatcher(
            model, max_batch_size=64, max_wait_s=0.2, max_queue=64, metrics=metrics
        )
        await batcher.start()
        gone = batcher.submit(rows(100, 200))
        kept = batcher.submit(rows(7))
        assert batcher.drop(gone) == 2
        result = await asyncio.wait_for(kept[0], timeout=20)
        await batcher.stop()
        dropped = metrics.registry.get_sample_value("disco_dropped_rows_total")
        return model.batches, float(dropped or 0), [float(result.vector[0])]

    batches, dropped, kept = run(main())
    assert batches == [[pytest.approx(7.0)]]
    assert dropped == 2.0
    assert kept == [pytest.approx(7.0)]


def test_model_failure_fails_that_batch_only() -> None:
    async def main() -> float:
        batcher = DynamicBatcher(
            Recorder(fail_first=True), max_batch_size=1, max_wait_s=0.0, max_queue=8
        )
        await batcher.start()
        (bad,) = batcher.submit(rows(1))
        with pytest.raises(RuntimeError, match="boom"):
            await asyncio.wait_for(bad, timeout=20)
        (good,) = batcher.submit(rows(2))
        value = float((await asyncio.wait_for(good, timeout=20)).vector[0])
        await batcher.stop()
        return value

    assert run(main()) == pytest.approx(2.0)


def test_stop_fails_pending_and_refuses_new_rows() -> None:
    async def main() -> None:
        batcher = DynamicBatcher(Recorder(), max_batch_size=64, max_wait_s=30.0, max_queue=8)
        with pytest.raises(BatcherClosedError):
            batcher.submit(rows(1))
        await batcher.start()
        (pending,) = batcher.submit(rows(1))
        await batcher.stop()
        with pytest.raises(BatcherClosedError):
            await pending
        with pytest.raises(BatcherClosedError):
            batcher.submit(rows(1))

    run(main())


def test_metrics_record_batches_and_queue_depth() -> None:
    async def main() -> ServiceMetrics:
        metrics = ServiceMetrics()
        batcher = DynamicBatcher(
            Recorder(), max_batch_size=4, max_wait_s=30.0, max_queue=8, metrics=metrics
        )
        await batcher.start()
        futures = batcher.submit(rows(1, 2, 3))
        assert metrics.registry.get_sample_value("disco_queue_depth") == 3.0
        futures += batcher.submit(rows(4))
        await asyncio.wait_for(asyncio.gather(*futures), timeout=20)
        await batcher.stop()
        return metrics

    metrics = run(main())
    get = metrics.registry.get_sample_value
    assert get("disco_batch_size_count") == 1.0
    assert get("disco_batch_size_sum") == 4.0
    assert get("disco_images_embedded_total") == 4.0
    assert get("disco_queue_seconds_count") == 4.0
    assert get("disco_queue_depth") == 0.0
