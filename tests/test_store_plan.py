"""StorePlan (store-plan/2): the epoch planned from metadata, the same in any process; batches
read only the shards they need, hold only the chosen slots, and match the store."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from store.embedding_store import EmbeddingStore
from store.manifest import Manifest
from store.views import get_recipe
from student_trainer.train.data import StorePlan

N, V, D, SHARD = 300, 4, 6, 32
BATCH, BUFFER = 8, 20


def _manifest(n: int) -> Manifest:
    valid = np.ones(n, bool)
    valid[[3, 77, 250]] = False
    m = Manifest(
        dataset=f"fabricated:{n}", split="all", indices=np.arange(n, dtype=np.int64),
        keys=np.array([f"c{i % 5}/{i}" for i in range(n)]), labels=np.arange(n) % 5,
        sha256=np.full(n, "ab" * 32), heights=np.full(n, 40, np.int32),
        widths=np.full(n, 30, np.int32), valid=valid,
    )  # fmt: skip
    return m


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """300 rows (3 invalid), V 4, 10 shards of 32; some rows with views 0 and 2 unwritten."""
    url = str(tmp_path_factory.mktemp("plan") / "s.zarr")
    store = EmbeddingStore.create(
        url, manifest=_manifest(N), recipe=get_recipe("mocov2", 16), seed=1, views=V,
        shard_size=SHARD,
    )  # fmt: skip
    store.attach_teacher({"arch": "tiny", "sha256": "cd" * 32}, dim=D)
    rng = np.random.default_rng(0)
    for s in range(store.num_shards):
        a, b = store.shard_bounds(s)
        emb = rng.standard_normal((b - a, V, D)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=2, keepdims=True)
        written = np.ones((b - a, V), bool)
        written[::7, 0] = False
        written[::11, 2] = False
        written[::13, 1:] = False  # one usable view: never planned
        store.write_shard(s, emb, written=written)
    return url


def _digest(plan: StorePlan, epoch: int) -> str:
    p = plan.plan_epoch(epoch)
    return hashlib.sha256(p.rows.tobytes() + p.views.tobytes()).hexdigest()


def test_plan_is_the_same_in_another_process(store_url: str) -> None:
    mine = [_digest(StorePlan(EmbeddingStore.open(store_url), seed=4, batch=BATCH, rank=r,
                              world=2, buffer_size=BUFFER), 3) for r in (0, 1)]  # fmt: skip
    code = (
        "import sys; from tests.test_store_plan import _digest; "
        "from store.embedding_store import EmbeddingStore; "
        "from student_trainer.train.data import StorePlan; "
        f"print(*[_digest(StorePlan(EmbeddingStore.open({store_url!r}), seed=4, batch={BATCH}, "
        f"rank=r, world=2, buffer_size={BUFFER}), 3) for r in (0, 1)])"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == mine and mine[0] != mine[1]


def test_plan_rows_views_ranks_and_window(store_url: str) -> None:
    store = EmbeddingStore.open(store_url)
    usable = store.written_mask() & store.manifest.valid[:, None]
    seen_pairs: set[tuple[int, int]] = set()
    for rank in (0, 1):
        plan = StorePlan(store, seed=2, batch=BATCH, rank=rank, world=2, buffer_size=BUFFER)
        p = plan.plan_epoch(0)
        assert len(p.rows) == plan.steps_per_epoch * BATCH and len(set(p.rows.tolist())) == len(
            p.rows
        )
        assert np.all((p.rows // SHARD) % 2 == rank)  # this rank's shards only
        v1, v2 = p.views[:, 0], p.views[:, 1]
        assert np.all(v1 != v2) and usable[p.rows, v1].all() and usable[p.rows, v2].all()
        seen_pairs |= set(map(tuple, p.views.tolist()))
        # the window: a row lands at most `buffer_size` places from its place in the shard stream
        stream = np.concatenate(
            [s * SHARD + np.flatnonzero(plan.usable_rows[s * SHARD : (s + 1) * SHARD])
             for s in plan.shard_order(0)]
        )  # fmt: skip
        where = {r: q for q, r in enumerate(stream.tolist())}
        moved = np.array([abs(where[r] - k) for k, r in enumerate(p.rows.tolist())])
        assert moved.max() <= BUFFER and moved.max() > BUFFER // 2  # shuffled, within the window
        assert not np.array_equal(p.rows, plan.plan_epoch(1).rows)
    assert seen_pairs == {(a, b) for a in range(V) for b in range(V) if a != b}


def test_batches_carry_the_stores_slots_as_batch_sized_copies(store_url: str) -> None:
    store = EmbeddingStore.open(store_url)
    blocks = {s: store.read_shard(s) for s in range(store.num_shards)}
    plan = StorePlan(store, seed=5, batch=BATCH, buffer_size=BUFFER)
    p = plan.plan_epoch(2)
    batches = list(plan.batches(2))
    assert len(batches) == plan.steps_per_epoch
    items = [i for b in batches for i in b]
    assert [i.row for i in items] == p.rows.tolist()
    assert [list(i.views) for i in items] == p.views.tolist()
    for batch in batches:
        base = batch[0].targets[0].base
        assert base is not None and base.shape == (BATCH, 2, D)  # one (b, 2, D) copy, no block
        for item in batch:
            blk = blocks[item.row // SHARD]
            local = item.row - blk.start
            assert item.targets[0].base is base and item.targets[1].base is base
            for k, v in enumerate(item.views):
                assert np.array_equal(item.targets[k], blk.embeddings[local, v])
                assert np.array_equal(item.params[k], blk.params[local, v])
    # at most the shards a batch's window spans are held (not the epoch's)
    assert plan.live_peak <= -(-(BATCH + 2 * BUFFER) // (SHARD - 5)) + 2 < store.num_shards


def test_resume_jump_reads_no_shard_only_earlier_batches_needed(store_url: str) -> None:
    store = EmbeddingStore.open(store_url)
    full = StorePlan(store, seed=7, batch=BATCH, buffer_size=BUFFER)
    whole = [[(i.row, i.views) for i in b] for b in full.batches(1)]
    skip = full.steps_per_epoch - 4
    jumper = StorePlan(EmbeddingStore.open(store_url), seed=7, batch=BATCH, buffer_size=BUFFER)
    tail = [[(i.row, i.views) for i in b] for b in jumper.batches(1, skip=skip)]
    assert tail == whole[skip:]
    needed = {r // SHARD for b in tail for r, _ in b}
    assert set(jumper.shards_read) == needed and len(jumper.shards_read) == len(needed)
    assert len(needed) < len(set(full.shards_read)) == store.num_shards  # earlier ones unread


def test_lazy_fill_plan_is_the_full_stores(store_url: str) -> None:
    """fill_dim: the (i, v1, v2) sequence is a full store's whatever is written; each item says
    which of its two slots are written (the filler fetches the others)."""
    store = EmbeddingStore.open(store_url)
    lazy = StorePlan(store, seed=3, batch=BATCH, buffer_size=BUFFER, fill_dim=D)
    full = StorePlan(store, seed=3, batch=BATCH, buffer_size=BUFFER, use_targets=False)
    a, b = lazy.plan_epoch(0), full.plan_epoch(0)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.views, b.views)
    written = store.written_mask()
    for item in next(iter(lazy.batches(0))):
        for k, v in enumerate(item.views):
            assert item.written[k] == written[item.row, v]


def test_full_store_fast_path_is_the_general_rule(store_url: str) -> None:
    """A store whose usable rows all have views 0..V-1 takes a scalar-count path; the general
    per-row path gives the very same pairs (one rule)."""
    store = EmbeddingStore.open(store_url)
    fast = StorePlan(store, seed=9, batch=BATCH, buffer_size=BUFFER, use_targets=False)
    assert fast.uniform_count == V
    general = StorePlan(store, seed=9, batch=BATCH, buffer_size=BUFFER, use_targets=False)
    general.uniform_count = 0
    a, b = fast.plan_epoch(4), general.plan_epoch(4)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.views, b.views)
    assert StorePlan(store, seed=9, batch=BATCH).uniform_count == 0  # some views unwritten
