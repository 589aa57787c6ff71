"""``store.memory.InMemoryStore`` / ``disco train --store-in-ram``: the store's blocks from RAM,
read-only, and a training run that sees exactly the streaming run's steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import ConfigError, StoreError
from store.manifest import build_manifest
from store.memory import InMemoryStore
from store.views import get_recipe
from student_trainer.train.config import TrainConfig
from student_trainer.train.loop import train

DIM = 8


pytestmark = pytest.mark.usefixtures("one_thread")


def _store(url: str, teacher: bool = True) -> EmbeddingStore:
    """synthetic:40, V=3 at 16 px, shards of 16 rows, fp16 random unit targets; row 5 has
    views 1 and 2 unwritten (so the written mask is not all True)."""
    manifest = build_manifest(open_dataset("synthetic:40"), "all", progress=False)
    store = EmbeddingStore.create(
        url, manifest=manifest, recipe=get_recipe("mocov2", 16), seed=3, views=3, shard_size=16
    )
    if not teacher:
        return store
    store.attach_teacher({"arch": "tiny", "sha256": "cd" * 32}, dim=DIM)
    rng = np.random.default_rng(1)
    for s in range(store.num_shards):
        a, b = store.shard_bounds(s)
        emb = rng.standard_normal((b - a, 3, DIM)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=2, keepdims=True)
        written = np.ones((b - a, 3), dtype=bool)
        if a <= 5 < b:
            written[5 - a, 1:] = False
        store.write_shard(s, emb, written=written)
    return store


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("mem") / "s.zarr")
    _store(url)
    return url


def test_in_memory_store_serves_the_stores_blocks_read_only(store_url: str) -> None:
    store = EmbeddingStore.open(store_url)
    mem = InMemoryStore.load(store)
    assert isinstance(mem, EmbeddingStore) and mem.teacher == store.teacher
    assert mem.nbytes == sum(
        b.embeddings.nbytes + b.written.nbytes + b.params.nbytes
        for b in map(store.read_shard, range(store.num_shards))
    )
    np.testing.assert_array_equal(mem.written_mask(), store.written_mask())
    assert not mem.written_mask()[5, 1:].any()
    np.testing.assert_array_equal(mem.params, store.params)
    for got, want in zip(mem.iter_blocks(seed=7), store.iter_blocks(seed=7), strict=True):
        assert (got.shard, got.start, got.stop) == (want.shard, want.start, want.stop)
        np.testing.assert_array_equal(got.embeddings, want.embeddings)
        np.testing.assert_array_equal(got.written, want.written)
        np.testing.assert_array_equal(got.params, want.params)
        with pytest.raises(ValueError, match="read-only"):
            got.embeddings[0, 0, 0] = 1.0
    reopened = InMemoryStore.open(store_url, mode="r+")  # EmbeddingStore's constructor path
    np.testing.assert_array_equal(reopened.read_shard(1).embeddings, mem.read_shard(1).embeddings)
    with pytest.raises(StoreError, match="out of range"):
        mem.read_shard(store.num_shards)
    with pytest.raises(StoreError, match="read-only"):
        mem.write_shard(0, np.zeros((16, 3, DIM), np.float32))


def test_store_without_teacher_cannot_be_held_in_ram(tmp_path: Path) -> None:
    bare = _store(str(tmp_path / "bare.zarr"), teacher=False)
    with pytest.raises(StoreError, match="no teacher embeddings"):
        InMemoryStore.load(bare)
    with pytest.raises(ConfigError, match="store_in_ram needs a store"):
        TrainConfig(method="mocov2", arch="tiny", out="x", dataset="digits", store_in_ram=True)


def test_store_in_ram_trains_exactly_the_streaming_runs_steps(
    store_url: str, tmp_path: Path
) -> None:
    """Two epochs (the second re-reads every shard when streaming): the same rows, views and
    targets at every step, the same losses."""
    seen: dict[bool, list[tuple[list[int], list[list[int]], np.ndarray]]] = {}
    results = {}
    for in_ram in (False, True):
        steps: list[tuple[list[int], list[list[int]], np.ndarray]] = []

        def hook(step: int, batch: Any, output: Any, steps: list[Any] = steps) -> None:
            steps.append((batch.rows.tolist(), batch.views.tolist(), batch.target1.numpy()))

        cfg = TrainConfig(
            method="disco", arch="tiny", out=str(tmp_path / str(in_ram)), store=store_url,
            batch_size=8, epochs=2, queue_size=16, head_hidden=32, num_workers=0,
            progress=False, store_in_ram=in_ram,
        )  # fmt: skip
        results[in_ram] = train(cfg, step_hook=hook)
        seen[in_ram] = steps
    assert len(seen[True]) == 2 * results[True].steps_per_epoch == results[True].steps
    for (r1, v1, t1), (r2, v2, t2) in zip(seen[False], seen[True], strict=True):
        assert r1 == r2 and v1 == v2
        np.testing.assert_array_equal(t1, t2)
    assert results[True].last_terms == results[False].last_terms
    assert results[True].data_seconds > 0 and results[True].teacher_seconds == 0.0
