"""Slot log: write_slots appends to a per-shard log; kill -9 loses nothing acknowledged, readers
(read_shard, written_mask, check, verify's sampling) see logged slots, first writer wins."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.inspection import check_store
from store.manifest import build_manifest
from store.slotlog import WAL_DIR, wal_path
from store.views import get_recipe

REPO = Path(__file__).resolve().parents[1]
N, V, D, SHARD = 64, 4, 16, 16


def expected(rows: np.ndarray, views: np.ndarray, salt: int = 0) -> np.ndarray:
    """The unit vector a writer puts in slot (row, view): a function of the slot alone."""
    out = np.empty((len(rows), D), np.float32)
    for k, (r, v) in enumerate(zip(rows.tolist(), views.tolist(), strict=True)):
        x = np.random.default_rng([salt, r, v]).standard_normal(D)
        out[k] = x / np.linalg.norm(x)
    return out


def make_store(path: Path) -> EmbeddingStore:
    manifest = build_manifest(open_dataset(f"synthetic:{N}"), progress=False, workers=1)
    store = EmbeddingStore.create(
        str(path), manifest=manifest, recipe=get_recipe("digits", 16), seed=0, views=V,
        shard_size=SHARD,
    )  # fmt: skip
    store.attach_teacher({"arch": "tiny", "sha256": "d" * 64}, dim=D)
    return store


WRITER = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from test_store_slotlog import expected, N, V
from store.embedding_store import EmbeddingStore
store = EmbeddingStore.open(sys.argv[1], mode="r+")
rng = np.random.default_rng(5)
for k in range(10_000):
    slots = rng.choice(N * V, size=12, replace=False)
    rows, views = slots // V, slots % V
    store.write_slots(rows, views, expected(rows, views))
    print("ACK " + ",".join(map(str, slots.tolist())), flush=True)
"""


def test_sigkill_loses_no_acknowledged_slot_and_tears_none(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    make_store(path)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(Path(__file__).parent)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    acked: list[int] = []
    assert proc.stdout is not None
    # Kill while it writes: after enough requests that some shards' logs were merged (a shard
    # merges at 1/4 of its 64 slots) and others hold a log.
    while len(acked) < 12 * 14:
        line = proc.stdout.readline()
        assert line.startswith("ACK "), proc.stderr.read() if proc.stderr else line
        acked.extend(int(x) for x in line[4:].split(","))
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    store = EmbeddingStore.open(str(path))
    mask = store.written_mask()
    rows, views = np.divmod(np.array(sorted(set(acked))), V)
    assert mask[rows, views].all()  # nothing acknowledged is lost
    # Every slot marked written (acknowledged or in flight) holds exactly its writer's bytes.
    emb = np.concatenate([store.read_shard(s).embeddings for s in range(store.num_shards)])
    w_rows, w_views = np.nonzero(mask)
    want = expected(w_rows, w_views).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(emb[w_rows, w_views], want)
    assert not emb[~mask].any()
    assert list((path / WAL_DIR).glob("*.log")), "expected some shards still logged"
    assert check_store(str(path), check_dataset=False).ok
    # A torn tail (a record cut short) is ignored by readers and cut by the next writer.
    s = next(int(p.name[6:11]) for p in (path / WAL_DIR).glob("*.log"))
    log = wal_path(str(path), s)
    size = log.stat().st_size
    with open(log, "ab") as f:
        f.write(b"DWAL\x01\x00\x00\x00garbage")
    again = EmbeddingStore.open(str(path), mode="r+")
    assert (again.written_mask() == mask).all()
    # First writer wins: other values for written slots change nothing; free slots are taken.
    a = s * SHARD
    free = np.argwhere(~mask[a : a + SHARD])[:1]
    taken = np.argwhere(mask[a : a + SHARD])[:2]
    both = np.concatenate([taken, free])
    r, v = both[:, 0] + a, both[:, 1]
    assert again.write_slots(r, v, expected(r, v, salt=1)) == 1
    assert log.stat().st_size > size  # appended after the cut garbage
    block = again.read_shard(s)
    np.testing.assert_array_equal(
        block.embeddings[taken[:, 0], taken[:, 1]],
        expected(r[:2], v[:2]).astype(np.float16).astype(np.float32),
    )
    np.testing.assert_allclose(
        block.embeddings[free[0, 0], free[0, 1]], expected(r[2:], v[2:], 1)[0], atol=1e-3
    )
    # Merging every log leaves what readers see unchanged.
    before = np.concatenate([again.read_shard_raw(k) for k in range(again.num_shards)])
    seen = again.written_mask()
    again.compact()
    assert not list((path / WAL_DIR).glob("*.log"))
    after = np.concatenate([again.read_shard_raw(k) for k in range(again.num_shards)])
    assert after.tobytes() == before.tobytes() and (again.written_mask() == seen).all()


def test_precompute_merge_folds_the_log(tmp_path: Path) -> None:
    store = make_store(tmp_path / "m.zarr")
    rows, views = np.array([1, 2, 3]), np.array([0, 1, 2])
    store.write_slots(rows, views, expected(rows, views))
    assert wal_path(store.url, 0).exists()
    # A whole-shard writer (precompute) fills the rest: logged slots keep their bytes.
    full = expected(np.repeat(np.arange(SHARD), V), np.tile(np.arange(V), SHARD), salt=2)
    assert (
        store.merge_shard(0, full.reshape(SHARD, V, D), np.ones((SHARD, V), bool)) == SHARD * V - 3
    )
    assert not wal_path(store.url, 0).exists()
    block = store.read_shard(0)
    assert block.written.all()
    np.testing.assert_array_equal(
        block.embeddings[rows, views], expected(rows, views).astype(np.float16).astype(np.float32)
    )


@pytest.mark.parametrize("dtype", ["int8"])
def test_int8_store_logs_encoded_slots(tmp_path: Path, dtype: str) -> None:
    manifest = build_manifest(open_dataset("synthetic:20"), progress=False, workers=1)
    store = EmbeddingStore.create(
        str(tmp_path / "q.zarr"), manifest=manifest, recipe=get_recipe("digits", 16), seed=0,
        views=2, shard_size=8,
    )  # fmt: skip
    store.attach_teacher({"arch": "tiny", "sha256": "e" * 64}, dim=D, dtype=dtype)
    rows, views = np.array([0, 9, 19]), np.array([1, 0, 1])
    store.write_slots(rows, views, expected(rows, views))
    emb = np.concatenate([store.read_shard(s).embeddings for s in range(store.num_shards)])
    np.testing.assert_allclose(emb[rows, views], expected(rows, views), atol=0.05)
    assert store.written_mask().sum() == 3
