"""EmbeddingStore: round trips (also across processes and fsspec URLs), refusals, written mask."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from store.datasets import open_dataset
from store.embedding_store import SCHEMA, EmbeddingStore, int8_scales
from store.errors import ConfigError, StoreError, StoreMismatchError, StoreNotFoundError
from store.manifest import Manifest, build_manifest
from store.views import get_recipe, plan_views

TEACHER = {"arch": "tiny", "sha256": "a" * 64, "bn_mode": "eval"}


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return build_manifest(open_dataset("synthetic:40"), progress=False)


def _unit(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _make(url: str, manifest: Manifest, **kw: object) -> EmbeddingStore:
    opts: dict = {"seed": 3, "views": 4, "shard_size": 16, **kw}
    return EmbeddingStore.create(url, manifest=manifest, recipe=get_recipe("mocov2", 32), **opts)


def _fill(store: EmbeddingStore) -> np.ndarray:
    full = _unit((store.n, store.views, store.dim or 0), seed=1)
    for s in range(store.num_shards):
        a, b = store.shard_bounds(s)
        store.write_shard(s, full[a:b])
    return full


def test_create_records_attrs_and_plan(tmp_path: Path, manifest: Manifest) -> None:
    store = _make(str(tmp_path / "s.zarr"), manifest)
    attrs = EmbeddingStore.open(str(tmp_path / "s.zarr")).attrs
    assert attrs["schema"] == SCHEMA
    assert attrs["dataset"] == {
        "spec": "synthetic:40",
        "split": "all",
        "n": 40,
        "manifest_hash": manifest.hash,
        "row_order": "permuted",
        "validity": "decode",  # synthetic: in memory, decoded
    }
    assert attrs["recipe"]["name"] == "mocov2" and attrs["recipe"]["views"] == 4
    assert attrs["teacher"] is None and set(attrs["versions"]) >= {"torch", "zarr", "pillow"}
    expect = plan_views(get_recipe("mocov2", 32), 3, manifest.heights, manifest.widths, 4)
    assert np.array_equal(store.params, expect)
    assert (store.n, store.views, store.num_params, store.num_shards) == (40, 4, 16, 3)
    assert store.shard_bounds(2) == (32, 40)
    assert store.dim is None
    with pytest.raises(StoreError, match="already exists"):
        _make(str(tmp_path / "s.zarr"), manifest)
    _make(str(tmp_path / "s.zarr"), manifest, overwrite=True)


def test_round_trip_in_another_process(tmp_path: Path, manifest: Manifest) -> None:
    url = str(tmp_path / "rt.zarr")
    store = _make(url, manifest)
    store.attach_teacher(TEACHER, dim=8, features_dim=5)
    full = _unit((40, 4, 8))
    feats = np.random.default_rng(2).standard_normal((40, 4, 5)).astype(np.float32)
    for s in range(store.num_shards):
        a, b = store.shard_bounds(s)
        store.write_shard(s, full[a:b], features=feats[a:b])
    np.save(tmp_path / "expect.npy", full.astype(np.float16).astype(np.float32))
    script = (
        "import sys, numpy as np\n"
        "from store.embedding_store import EmbeddingStore\n"
        "st = EmbeddingStore.open(sys.argv[1])\n"
        "emb = np.concatenate([st.read_shard(s).embeddings for s in range(st.num_shards)])\n"
        "assert st.written_mask().all() and st.missing_shards() == []\n"
        "assert np.array_equal(emb, np.load(sys.argv[2]))\n"
        "print(st.manifest.hash, st.read_features(1).shape)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, url, str(tmp_path / "expect.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == manifest.hash
    assert "(16, 4, 5)" in res.stdout
    again = EmbeddingStore.open(url)
    assert np.allclose(again.read_features(0), feats[:16], atol=1e-2)
    assert again.manifest.keys.tolist() == manifest.keys.tolist()
    assert np.array_equal(again.manifest.valid, manifest.valid)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("teacher.sha256", "b" * 64),
        ("recipe.name", "digits"),
        ("recipe.seed", 4),
        ("recipe.views", 8),
        ("dataset.manifest_hash", "0" * 64),
    ],
)
def test_open_refuses_mismatch_naming_field(
    tmp_path: Path, manifest: Manifest, field: str, value: object
) -> None:
    url = str(tmp_path / "m.zarr")
    _make(url, manifest).attach_teacher(TEACHER, dim=8)
    good = {
        "teacher.sha256": TEACHER["sha256"],
        "recipe.name": "mocov2",
        "recipe.seed": 3,
        "recipe.views": 4,
        "dataset.manifest_hash": manifest.hash,
    }
    EmbeddingStore.open(url, expect=good)
    with pytest.raises(StoreMismatchError) as info:
        EmbeddingStore.open(url, expect={**good, field: value})
    assert info.value.field == field
    assert field in str(info.value)


def test_missing_store_and_schema(tmp_path: Path, manifest: Manifest) -> None:
    with pytest.raises(StoreNotFoundError):
        EmbeddingStore.open(str(tmp_path / "nope.zarr"))
    url = str(tmp_path / "s.zarr")
    store = _make(url, manifest)
    store.group.attrs.update({"schema": "disco-store/0"})
    with pytest.raises(StoreMismatchError) as info:
        EmbeddingStore.open(url)
    assert info.value.field == "schema"


def test_attach_teacher_idempotent_or_refused(tmp_path: Path, manifest: Manifest) -> None:
    store = _make(str(tmp_path / "t.zarr"), manifest)
    store.attach_teacher(TEACHER, dim=8)
    store.attach_teacher(dict(TEACHER), dim=8)
    with pytest.raises(StoreMismatchError) as info:
        store.attach_teacher({**TEACHER, "sha256": "c" * 64}, dim=8)
    assert info.value.field == "teacher.sha256"
    with pytest.raises(StoreMismatchError) as info:
        store.attach_teacher(TEACHER, dim=16)
    assert info.value.field == "teacher.embed_dim"
    reopened = EmbeddingStore.open(str(tmp_path / "t.zarr"))
    assert reopened.teacher is not None and reopened.teacher["sha256"] == TEACHER["sha256"]
    with pytest.raises(StoreError, match="read-only"):
        reopened.write_shard(0, np.zeros((16, 4, 8), dtype=np.float32))


def test_half_written_shard_is_missing_not_data(tmp_path: Path, manifest: Manifest) -> None:
    url = str(tmp_path / "h.zarr")
    store = _make(url, manifest)
    store.attach_teacher(TEACHER, dim=8)
    assert store.missing_shards() == [0, 1, 2]
    full = _unit((40, 4, 8))
    store.write_shard(0, full[:16])
    partial = np.ones((16, 4), dtype=bool)
    partial[5, 2] = False
    store.write_shard(1, full[16:32], written=partial)
    # Shard 2: data written directly but the mask never set (a writer killed in between).
    raw_array = store.group["embeddings"]
    assert isinstance(raw_array, zarr.Array)
    raw_array[32:40] = full[32:40].astype(np.float16)
    reopened = EmbeddingStore.open(url)
    assert reopened.missing_shards() == [1, 2]
    mask = reopened.written_mask()
    assert mask[:16].all() and not mask[21, 2] and not mask[32:].any()
    block = reopened.read_shard(2)
    assert not block.written.any()  # the data is there, but it is not reported as written
    # A zero vector is data when the mask says so.
    store.write_shard(2, np.zeros((8, 4, 8), dtype=np.float32))
    assert EmbeddingStore.open(url).missing_shards() == [1]


def test_invalid_rows_do_not_count_as_missing(tmp_path: Path, manifest: Manifest) -> None:
    valid = manifest.valid.copy()
    valid[3] = False
    m = Manifest(**{**manifest.__dict__, "valid": valid})
    store = _make(str(tmp_path / "v.zarr"), m)
    store.attach_teacher(TEACHER, dim=8)
    _fill(store)
    assert not store.written_mask()[3].any()
    assert store.missing_shards() == []


def test_iter_blocks_seeded_order_covers_all(tmp_path: Path, manifest: Manifest) -> None:
    store = _make(str(tmp_path / "i.zarr"), manifest, shard_size=8)
    store.attach_teacher(TEACHER, dim=8)
    full = _fill(store)
    order = [b.shard for b in store.iter_blocks(seed=1)]
    assert sorted(order) == list(range(5))
    assert order == [b.shard for b in store.iter_blocks(seed=1)]
    orders = {tuple(b.shard for b in store.iter_blocks(seed=s)) for s in range(6)}
    assert len(orders) > 1
    for b in store.iter_blocks(seed=0, shards=[3, 1]):
        assert b.shard in (1, 3)
        assert np.allclose(b.embeddings, full[b.start : b.stop], atol=1e-3)
        assert np.array_equal(b.params, store.params[b.start : b.stop])


def test_write_slot_read_modify_write(tmp_path: Path, manifest: Manifest) -> None:
    store = _make(str(tmp_path / "w.zarr"), manifest)
    store.attach_teacher(TEACHER, dim=8)
    full = _unit((40, 4, 8))
    store.write_shard(1, full[16:32])
    vec = _unit((8,), seed=7)
    store.write_slot(35, 2, vec)
    store.write_slot(17, 0, vec)
    mask = store.written_mask()
    assert mask[35, 2] and mask[35].sum() == 1 and mask[17:32].all()
    b1 = store.read_shard(1)
    assert np.allclose(b1.embeddings[1, 0], vec, atol=1e-3)
    assert np.allclose(b1.embeddings[2:], full[18:32], atol=1e-3)  # neighbours untouched
    with pytest.raises(StoreError, match="out of range"):
        store.write_slot(40, 0, vec)


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_fsspec_urls(tmp_path: Path, manifest: Manifest, scheme: str) -> None:
    url = f"memory://disco-test-{tmp_path.name}" if scheme == "memory" else f"file://{tmp_path}/f"
    store = _make(url, manifest)
    store.attach_teacher(TEACHER, dim=8)
    full = _fill(store)
    again = EmbeddingStore.open(url, expect={"recipe.seed": 3})
    emb = np.concatenate([again.read_shard(s).embeddings for s in range(again.num_shards)])
    assert np.allclose(emb, full, atol=1e-3)
    assert again.missing_shards() == []
    if scheme == "file":
        assert (tmp_path / "f" / "zarr.json").exists()


def test_int8_halves_bytes_and_keeps_cosine(tmp_path: Path, manifest: Manifest) -> None:
    full = _unit((40, 4, 128), seed=3)
    store = _make(str(tmp_path / "q.zarr"), manifest)
    scales = int8_scales(full.reshape(-1, 128))
    store.attach_teacher(TEACHER, dim=128, dtype="int8", int8_scale=scales)
    for s in range(store.num_shards):
        a, b = store.shard_bounds(s)
        store.write_shard(s, full[a:b])
    emb = np.concatenate([store.read_shard(s).embeddings for s in range(store.num_shards)])
    cos = (emb * full).sum(-1) / np.linalg.norm(emb, axis=-1)
    assert cos.min() > 0.999
    assert store.read_shard_raw(0).dtype == np.int8
    default = _make(str(tmp_path / "q2.zarr"), manifest)
    default.attach_teacher(TEACHER, dim=128, dtype="int8")
    filled = _fill(default)
    back = default.read_shard(0).embeddings
    cos = (back * filled[:16]).sum(-1) / np.linalg.norm(back, axis=-1)
    assert cos.min() > 0.995
    assert default.read_shard_raw(0).dtype == np.int8
    with pytest.raises(ConfigError):
        _make(str(tmp_path / "q3.zarr"), manifest).attach_teacher(TEACHER, dim=8, dtype="bf16")


def test_bad_shapes_refused(tmp_path: Path, manifest: Manifest) -> None:
    store = _make(str(tmp_path / "b.zarr"), manifest)
    with pytest.raises(StoreError, match="no teacher"):
        store.written_mask()
    store.attach_teacher(TEACHER, dim=8)
    with pytest.raises(StoreError, match="shape"):
        store.write_shard(0, np.zeros((15, 4, 8), dtype=np.float32))
    with pytest.raises(ConfigError, match="divide"):
        _make(str(tmp_path / "c.zarr"), manifest, shard_size=16, chunk_size=5)
    with pytest.raises(ConfigError, match="params shape"):
        _make(str(tmp_path / "d.zarr"), manifest, params=np.zeros((40, 4, 3), dtype=np.float32))
    assert json.dumps(EmbeddingStore.open(str(tmp_path / "b.zarr")).attrs)
