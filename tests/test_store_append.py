"""Mixed fill, growth: precompute keeps slots others wrote; `disco store append` grows a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_precompute import make_teacher

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.inspection import check_store
from store.manifest import appended_order, store_rows
from store.views import render_view
from teacher_service.precompute import PrecomputeConfig, run_precompute
from teacher_service.sources import load_teacher, to_pixels

V, SHARD = 2, 8


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def config(teacher: Path, store: Path, dataset: str, **kw: Any) -> PrecomputeConfig:
    base: dict[str, Any] = dict(
        teacher=str(teacher), dataset=dataset, store=str(store), views=V, recipe="mocov2",
        size=16, shard_size=SHARD, batch_size=8, workers=0, device="cpu", progress=False,
    )  # fmt: skip
    base.update(kw)
    return PrecomputeConfig(**base)


def live_cosines(store: EmbeddingStore, teacher: Path, slots: np.ndarray) -> np.ndarray:
    """Cosine of each stored (row, view) in ``slots`` (k, 2) to the live teacher's embedding of
    the view re-rendered from the store's plan."""
    ds = open_dataset(store.manifest.dataset)
    views = [
        render_view(ds.load(int(store.manifest.indices[i])), store.params[i, v], store.recipe)
        for i, v in slots
    ]
    pixels = to_pixels(torch.stack(views), store.recipe.mean, store.recipe.std)
    with torch.inference_mode():
        live = torch.nn.functional.normalize(load_teacher(str(teacher)).model(pixels), dim=1)
    cached = np.stack([store.read_shard(i // SHARD).embeddings[i % SHARD, v] for i, v in slots])
    cached /= np.linalg.norm(cached, axis=1, keepdims=True)
    return np.sum(cached * live.numpy(), axis=1)


def raw_all(store: EmbeddingStore) -> np.ndarray:
    return np.concatenate([store.read_shard_raw(s) for s in range(store.num_shards)])


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_precompute_keeps_slots_written_by_others(
    teacher: Path, tmp_path: Path, dtype: str
) -> None:
    path = tmp_path / f"mixed-{dtype}.zarr"
    cfg = config(teacher, path, "synthetic:24", dtype=dtype, max_shards=0)
    run_precompute(cfg)  # creates the store and attaches the teacher; computes nothing
    store = EmbeddingStore.open(str(path), mode="r+")
    # Half the slots filled by "someone else" (service / lazy fill) with known, non-teacher
    # vectors: precompute must neither recompute nor touch them.
    rng = np.random.default_rng(0)
    rows = np.concatenate([np.arange(0, 24, 2), np.arange(8, 16)])
    views = np.concatenate([np.zeros(12, np.int64), np.ones(8, np.int64)])
    vec = rng.standard_normal((len(rows), 16)).astype(np.float32)
    store.write_slots(rows, views, vec / np.linalg.norm(vec, axis=1, keepdims=True))
    before, old = raw_all(store), store.written_mask()
    assert 0 < old.sum() < old.size
    cfg.max_shards = None
    report = run_precompute(cfg)
    assert report.slots_kept == old.sum() and report.views_computed == old.size - old.sum()
    assert report.shards_computed == 3
    after = EmbeddingStore.open(str(path))
    assert after.written_mask().all()
    raw = raw_all(after)
    assert raw[old].tobytes() == before[old].tobytes()  # bitwise untouched
    new = np.argwhere(~old)
    assert live_cosines(after, teacher, new).min() >= 0.999
    assert live_cosines(after, teacher, np.argwhere(old)).max() < 0.9  # really not recomputed
    assert run_precompute(cfg).views_computed == 0
    report_check = check_store(str(path))
    assert report_check.ok, report_check.problems


def cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from store.cli import app

    return CliRunner().invoke(app, list(args))


def test_append_then_precompute_fills_only_new_rows(teacher: Path, tmp_path: Path) -> None:
    from store.manifest import build_manifest, manifest_rows
    from teacher_service.verify import verify_store

    path = tmp_path / "grow.zarr"
    run_precompute(config(teacher, path, "synthetic:20"))  # shards of 8, 8, 4 rows
    store = EmbeddingStore.open(str(path))
    before, params_before = raw_all(store), store.params.copy()
    assert store.written_mask().all()
    result = cli("append", str(path), "--dataset", "synthetic:36")
    assert result.exit_code == 0, result.output
    assert "appended 16 rows" in result.output
    grown = EmbeddingStore.open(str(path))
    assert (grown.n, grown.num_shards) == (36, 5)
    mask = grown.written_mask()
    assert mask[:20].all() and not mask[20:].any()
    assert raw_all(grown)[:20].tobytes() == before.tobytes()
    assert grown.params[:20].tobytes() == params_before.tobytes()
    # Rows 0-19 stay where they were; the 16 new samples (dataset indices 20-35) follow,
    # permuted among themselves by the documented rule (row order "permuted").
    ds36 = open_dataset("synthetic:36")
    assert grown.row_order == "permuted"
    old_rows = build_manifest(open_dataset("synthetic:20"), progress=False).indices
    np.testing.assert_array_equal(grown.manifest.indices[:20], old_rows)
    np.testing.assert_array_equal(grown.manifest.indices[20:], 20 + appended_order(20, 16))
    # Row i's views depend only on (seed, i, v): the appended rows hold what a store created
    # over the grown dataset in the same row order plans for them.
    full = manifest_rows(ds36, grown.manifest.indices, progress=False)
    fresh = EmbeddingStore.create(
        str(tmp_path / "fresh.zarr"), manifest=full, recipe=grown.recipe, seed=grown.seed,
        views=V, shard_size=SHARD,
    )  # fmt: skip
    assert grown.params[20:].tobytes() == fresh.params[20:].tobytes()
    attrs = grown.attrs
    assert attrs["dataset"]["n"] == 36 and attrs["dataset"]["spec"] == "synthetic:36"
    assert attrs["dataset"]["manifest_hash"] == full.hash == grown.manifest.hash
    [step] = attrs["history"]
    assert (step["n_before"], step["n_after"], step["added"]) == (20, 36, 16)
    info = cli("info", str(path))
    assert "appended" in info.output and "+16 rows" in info.output, info.output
    # Precompute computes only the new rows and leaves the old bytes alone.
    report = run_precompute(config(teacher, path, "synthetic:36"))
    assert report.views_computed == 16 * V and report.slots_kept == 4 * V  # shard 2's old rows
    assert report.computed_shards == [2, 3, 4] and report.shards_skipped == 2
    filled = EmbeddingStore.open(str(path))
    assert filled.written_mask().all()
    assert raw_all(filled)[:20].tobytes() == before.tobytes()
    assert live_cosines(filled, teacher, np.argwhere(np.ones((36, V)))[20 * V :]).min() >= 0.999
    result_v = verify_store(str(path), str(teacher), samples=36 * V, device="cpu")
    assert result_v.passed and result_v.samples == 36 * V, result_v.summary()
    assert check_store(str(path)).ok
    # The same dataset again: nothing to do, nothing recorded.
    again = cli("append", str(path), "--dataset", "synthetic:36")
    assert again.exit_code == 0 and "nothing to append" in again.output, again.output
    assert len(EmbeddingStore.open(str(path)).attrs["history"]) == 1


def _png(path: Path, value: int, size: tuple[int, int] = (14, 12)) -> None:
    from PIL import Image

    rgb = np.full((*size, 3), value, np.uint8)
    rgb[::2, :, 0] = 255 - value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def test_append_imagefolder_refuses_changed_or_missing_keys(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    for k in (0, 2, 4, 6, 8):
        _png(folder / "b" / f"{k}.png", 20 * k)
    path = tmp_path / "f.zarr"
    spec = f"imagefolder:{folder}"
    made = cli("create", str(path), "--dataset", spec, "--split", "all", "--views", "2",
               "--size", "16", "--shard-size", "4")  # fmt: skip
    assert made.exit_code == 0, made.output
    store = EmbeddingStore.open(str(path), mode="r+")
    store.attach_teacher({"arch": "tiny", "sha256": "c" * 64}, dim=8)
    vec = np.eye(8, dtype=np.float32)[:2]
    store.write_slots([4, 1], [1, 0], vec)  # row 4 (b/8.png): the old partial last shard
    before = raw_all(store)
    stale = EmbeddingStore.open(str(path), mode="r+")
    stale.written_mask()  # caches the 5-row arrays
    # Files sorted in between old ones, and a new class folder before "b": rows keep their
    # place, indices and labels follow the grown dataset.
    _png(folder / "b" / "5.png", 99)
    _png(folder / "a" / "1.png", 77)
    _png(folder / "b" / "9.png", 55)
    # A changed file is refused, naming its key; nothing is written.
    _png(folder / "b" / "2.png", 1)
    bad = cli("append", str(path))
    assert bad.exit_code == 1 and "'b/2.png'" in bad.output and "changed" in bad.output
    assert "Traceback" not in bad.output
    assert EmbeddingStore.open(str(path)).n == 5
    _png(folder / "b" / "2.png", 40)  # restored (same bytes as before)
    (folder / "b" / "6.png").unlink()
    gone = cli("append", str(path))
    assert gone.exit_code == 1 and "'b/6.png'" in gone.output and "gone" in gone.output
    _png(folder / "b" / "6.png", 120)
    ok = cli("append", str(path), "--json")
    assert ok.exit_code == 0, ok.output
    grown = EmbeddingStore.open(str(path))
    # Old rows: the 5 first files in the create-time permutation; new rows: the 3 new files
    # (dataset order a/1, b/5, b/9) in the appended order of a store of 5 rows.
    old_keys = np.array(["b/0.png", "b/2.png", "b/4.png", "b/6.png", "b/8.png"])
    new_keys = np.array(["a/1.png", "b/5.png", "b/9.png"])
    expected = [*old_keys[store_rows(5, "all")], *new_keys[appended_order(5, 3)]]
    assert grown.n == 8 and grown.manifest.keys.tolist() == expected
    assert grown.manifest.labels.tolist() == [0 if k.startswith("a/") else 1 for k in expected]
    assert raw_all(grown)[:5].tobytes() == before.tobytes()
    mask = grown.written_mask()
    assert mask.sum() == 2 and mask[4, 1] and mask[1, 0]
    report = check_store(str(path))
    assert report.ok, report.problems
    # A handle opened before the append writes into the grown last shard without cutting it.
    assert stale.write_slots([3, 6], [0, 1], vec) == 2
    after = EmbeddingStore.open(str(path))
    assert after.written_mask().sum() == 4 and after.written_mask()[6, 1]
    assert raw_all(after)[4].tobytes() == before[4].tobytes()
    np.testing.assert_allclose(after.read_shard(1).embeddings[2, 1], vec[1], atol=1e-3)
    # A train/test split store cannot grow.
    split = tmp_path / "split.zarr"
    cli("create", str(split), "--dataset", spec, "--split", "train", "--views", "2", "--size", "16")
    refused = cli("append", str(split))
    assert refused.exit_code == 1 and "dataset.split" in refused.output
