"""Cross-process write safety: shard locks, write_slots, merge_shard, no torn slot for readers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.errors import ZarrUserWarning

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import StoreError
from store.inspection import check_store, store_info
from store.locks import LOCK_DIR, StoreBusyError, shard_lock, store_lock
from store.manifest import Manifest, build_manifest
from store.views import get_recipe

REPO = Path(__file__).resolve().parents[1]
TEACHER = {"arch": "tiny", "sha256": "b" * 64, "bn_mode": "eval"}
N, V, D, SHARD = 40, 4, 8, 16


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return build_manifest(open_dataset(f"synthetic:{N}"), progress=False)


def _unit(shape: tuple[int, ...], seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _make(path: Path, manifest: Manifest, dtype: str = "float16") -> EmbeddingStore:
    store = EmbeddingStore.create(
        str(path), manifest=manifest, recipe=get_recipe("mocov2", 16), seed=0, views=V,
        shard_size=SHARD,
    )  # fmt: skip
    store.attach_teacher(TEACHER, dim=D, dtype=dtype, features_dim=4)
    return store


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_write_slots_one_log_append_per_shard_keeps_written_bytes(
    tmp_path: Path, manifest: Manifest, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _make(tmp_path / "s.zarr", manifest, dtype)
    first = _unit((N, V, D), seed=1)
    store.write_shard(
        1, first[16:32], written=np.zeros((16, V), bool) | (np.arange(16) < 8)[:, None]
    )
    before = store.read_shard_raw(1).copy()
    calls: list[int] = []
    append = EmbeddingStore._log_slots

    def counting(self: EmbeddingStore, s: int, *a: object) -> int:
        calls.append(s)
        return append(self, s, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(EmbeddingStore, "_log_slots", counting)
    shard_file = tmp_path / "s.zarr" / "embeddings" / "c" / "1" / "0" / "0"
    file_before = shard_file.read_bytes()
    idx = np.array([3, 26, 17, 30, 5, 39, 26])
    vw = np.array([0, 1, 2, 3, 1, 0, 1])
    vec = _unit((7, D), seed=2)
    feats = _unit((7, 4), seed=3)
    # Row 17 (local 1) is written by write_shard: kept; (26, 1) twice: counted once.
    assert store.write_slots(idx, vw, vec, features=feats) == 5
    assert sorted(calls) == [0, 1, 2]
    assert shard_file.read_bytes() == file_before  # logged, the shard file is not rewritten
    raw = store.read_shard_raw(1)
    assert raw[:8].tobytes() == before[:8].tobytes()  # written rows: bitwise untouched
    mask = store.written_mask()
    assert mask[[3, 26, 17, 30, 5, 39], [0, 1, 2, 3, 1, 0]].all() and mask.sum() == 8 * V + 5
    block = store.read_shard(1)
    tol = 1e-3 if dtype == "float16" else 0.05
    np.testing.assert_allclose(block.embeddings[30 - 16, 3], vec[3], atol=tol)
    np.testing.assert_allclose(block.embeddings[1, 2], first[17, 2], atol=tol)
    np.testing.assert_allclose(store.read_features(2)[39 - 32, 0], feats[5], atol=1e-3)
    # overwrite=True replaces a written slot (write_slot is that, for one slot).
    store.write_slot(17, 2, vec[0])
    np.testing.assert_allclose(store.read_shard(1).embeddings[1, 2], vec[0], atol=tol)
    # Merging the logs into the shard files changes nothing a reader sees.
    seen = [store.read_shard_raw(s).copy() for s in range(3)], store.written_mask()
    feats_seen = store.read_features(2)
    assert store.compact() == 3 and not list((tmp_path / "s.zarr" / ".wal").glob("*.log"))
    assert shard_file.read_bytes() != file_before
    for s in range(3):
        assert store.read_shard_raw(s).tobytes() == seen[0][s].tobytes()
    assert (store.written_mask() == seen[1]).all()
    np.testing.assert_array_equal(store.read_features(2), feats_seen)
    with pytest.raises(StoreError, match="out of range"):
        store.write_slots([40], [0], vec[:1])
    with pytest.raises(StoreError, match="do not match"):
        store.write_slots([1, 2], [0], vec[:2])


def test_merge_shard_writes_only_unwritten_slots(tmp_path: Path, manifest: Manifest) -> None:
    store = _make(tmp_path / "m.zarr", manifest)
    old = _unit((SHARD, V, D), seed=4)
    store.write_slots(
        np.arange(SHARD), np.arange(SHARD) % V, old[np.arange(SHARD), np.arange(SHARD) % V]
    )
    before = store.read_shard_raw(0).copy()
    old_mask = store.written_mask()[:SHARD].copy()
    new = _unit((SHARD, V, D), seed=5)
    want = np.ones((SHARD, V), bool)
    want[3] = False
    assert store.merge_shard(0, new, want) == int((want & ~old_mask).sum())
    raw = store.read_shard_raw(0)
    assert raw[old_mask].tobytes() == before[old_mask].tobytes()
    fresh = want & ~old_mask
    np.testing.assert_allclose(store.read_shard(0).embeddings[fresh], new[fresh], atol=1e-3)
    assert (store.written_mask()[:SHARD] == (old_mask | want)).all()


CHILD = """
import sys
import numpy as np
from store.embedding_store import EmbeddingStore
path, parity = sys.argv[1], int(sys.argv[2])
x = np.random.default_rng(9).standard_normal((16, 4, 8)).astype(np.float32)
x /= np.linalg.norm(x, axis=-1, keepdims=True)
store = EmbeddingStore.open(path, mode="r+")
print("ready", flush=True)
sys.stdin.readline()
for _ in range(3):
    for k in range(parity, 64, 2):
        i, v = divmod(k, 4)
        store.write_slots([i], [v], x[i, v][None], overwrite=True)
"""


def test_two_processes_one_shard_lose_nothing_and_readers_see_final_bytes(
    tmp_path: Path, manifest: Manifest
) -> None:
    path = tmp_path / "c.zarr"
    store = _make(path, manifest)
    x = _unit((16, 4, 8), seed=9)
    expect = x.astype(np.float16)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # The child writes the even slots of shard 0, a thread here the odd ones, both 3 times over,
    # read-modify-write each time; without the cross-process shard lock updates get lost.
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "0"], env=env, cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "ready"
    mine = EmbeddingStore.open(str(path), mode="r+")

    def odd() -> None:
        for _ in range(3):
            for k in range(1, 64, 2):
                i, v = divmod(k, 4)
                mine.write_slots([i], [v], x[i, v][None], overwrite=True)

    thread = threading.Thread(target=odd)
    child.stdin.write("go\n")
    child.stdin.flush()
    thread.start()
    reads = 0
    while thread.is_alive() or child.poll() is None:
        block = store.read_shard(0)
        raw = block.embeddings[:16].astype(np.float16)
        # Every slot the mask calls written holds its final bytes (written read first).
        assert (raw[block.written[:16]] == expect[block.written[:16]]).all()
        reads += 1
        time.sleep(0.005)
    thread.join()
    assert child.wait() == 0
    mask = store.written_mask()
    assert mask[:16].all() and not mask[16:].any()  # no update lost between the two writers
    assert store.read_shard_raw(0).tobytes() == expect.tobytes()
    assert reads > 0
    # Lock files live under .locks: zarr skips it (with a warning when listing members), info
    # and check ignore it.
    assert (path / LOCK_DIR / "shard-00000.lock").exists()
    with pytest.warns(ZarrUserWarning, match=LOCK_DIR):
        names = {name for name, _ in zarr.open_group(str(path), mode="r").members()}
    assert names == {"manifest", "views", "embeddings", "features", "written"}
    report = check_store(str(path), check_dataset=True)
    assert report.ok, report.problems
    assert store_info(str(path))["written_fraction"] == pytest.approx(16 * V / (N * V))


def test_store_lock_waits_for_shard_writers(tmp_path: Path, manifest: Manifest) -> None:
    store = _make(tmp_path / "l.zarr", manifest)
    url = store.url
    held = threading.Event()
    release = threading.Event()

    def writer() -> None:
        with shard_lock(url, 1):
            held.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    held.wait(10)
    with pytest.raises(StoreBusyError, match="busy"), store_lock(url, timeout=0.2):
        pass
    release.set()
    t.join()
    with store_lock(url, timeout=1.0):
        pass
