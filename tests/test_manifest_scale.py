"""ImageNet-sized creation: the manifest from headers + byte hashes in a pool, rows in a seeded
permutation, a torchrun precompute whose manifest outlasts ``wait_timeout``, and a file that only
fails at precompute time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_precompute import make_teacher

from store.datasets import open_dataset, split_indices
from store.decode import decode_image, image_size
from store.embedding_store import EmbeddingStore
from store.manifest import build_manifest, manifest_rows, store_rows
from teacher_service.precompute import PrecomputeConfig, heartbeat_path, run_precompute

REPO = Path(__file__).resolve().parents[1]


def _jpeg(path: Path, h: int, w: int, seed: int, exif_orientation: int | None = None) -> None:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(rgb)
    if exif_orientation is None:
        img.save(path, quality=85)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(path, quality=85, exif=exif)


def class_sorted_folder(root: Path, classes: int, per_class: int) -> Path:
    for c in range(classes):
        for i in range(per_class):
            _jpeg(root / f"c{c:02d}" / f"{i:03d}.jpg", 12 + i % 5, 16 + c % 3, seed=c * 100 + i)
    return root


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def test_header_sizes_match_decoded_ones_and_pool_equals_one_process(tmp_path: Path) -> None:
    root = class_sorted_folder(tmp_path / "f", classes=3, per_class=7)
    _jpeg(root / "c01" / "rot.jpg", 10, 30, seed=7, exif_orientation=6)  # upright: 30 x 10
    (root / "c02" / "bad.jpg").write_bytes(b"not an image at all")
    ds = open_dataset(f"imagefolder:{root}")
    one = build_manifest(ds, "all", progress=False, workers=1)
    pool = manifest_rows(ds, store_rows(len(ds), "all"), progress=False, workers=2, chunk=3)
    pool.row_order = "permuted"
    assert one.hash == pool.hash
    for name in ("indices", "heights", "widths", "valid"):
        np.testing.assert_array_equal(getattr(one, name), getattr(pool, name))
    assert one.errors == pool.errors and list(one.errors) == ["c02/bad.jpg"]
    # The header's size is the decoded (EXIF-upright) size, for every valid file.
    for row in np.flatnonzero(one.valid):
        data = (root / one.keys[row]).read_bytes()
        img = decode_image(data)
        assert (one.heights[row], one.widths[row]) == img.shape[:2] == image_size(data)
    rot = one.keys.tolist().index("c01/rot.jpg")
    assert (one.heights[rot], one.widths[rot]) == (30, 10)
    assert one.sha256[one.keys.tolist().index("c02/bad.jpg")] != ""  # hashed though unusable


def test_rows_are_a_seeded_permutation_and_splits_keep_their_contract(tmp_path: Path) -> None:
    root = class_sorted_folder(tmp_path / "f", classes=4, per_class=8)
    ds = open_dataset(f"imagefolder:{root}")
    n = len(ds)
    perm = np.random.RandomState(0).permutation(n)
    full = build_manifest(ds, "all", progress=False, workers=1)
    np.testing.assert_array_equal(full.indices, perm)
    np.testing.assert_array_equal(full.labels, ds.labels[perm])
    assert full.keys.tolist() == [ds.keys[i] for i in perm]
    # train/test: the split contract, unchanged (DESIGN §12); `all` = train rows, then test rows.
    for split in ("train", "test"):
        part = build_manifest(ds, split, progress=False, workers=1)
        np.testing.assert_array_equal(part.indices, split_indices(n, split))
    np.testing.assert_array_equal(
        full.indices, np.concatenate([split_indices(n, "train"), split_indices(n, "test")])
    )
    # Every 8-row shard of the class-sorted folder now mixes classes.
    shards = full.labels.reshape(-1, 8)
    assert min(len(np.unique(s)) for s in shards) >= 2
    store = EmbeddingStore.create(
        str(tmp_path / "s.zarr"), manifest=full, recipe=_recipe(), seed=0, views=2, shard_size=8
    )
    opened = EmbeddingStore.open(store.url)
    assert opened.schema == "disco-store/3" and opened.row_order == "permuted"
    assert opened.attrs["dataset"]["validity"] == "header"  # ImageFolder: headers, not decodes
    assert opened.attrs["storage"]["slot_log"] == ".wal"
    np.testing.assert_array_equal(opened.manifest.labels, ds.labels[perm])
    # An older store says nothing about its rows: they are in dataset order.
    old = build_manifest(ds, "all", progress=False, workers=1, row_order="dataset")
    np.testing.assert_array_equal(old.indices, np.arange(n))
    legacy = dict(opened.attrs["dataset"])
    legacy.pop("row_order")
    store.group.attrs.update({"dataset": legacy, "schema": "disco-store/2"})
    assert EmbeddingStore.open(store.url).row_order == "dataset"


def _recipe():  # type: ignore[no-untyped-def]
    from store.views import get_recipe

    return get_recipe("mocov2", 16)


SLOW_RANK = """
import json, sys, time
from store.imagefolder import ImageFolder
probe = ImageFolder.probe
def slow_probe(self, i):
    time.sleep(0.05)  # a slow disk: the manifest outlasts wait_timeout several times over
    return probe(self, i)
ImageFolder.probe = slow_probe
from teacher_service.precompute import PrecomputeConfig, run_precompute
report = run_precompute(PrecomputeConfig(**json.loads(sys.argv[1])))
print("REPORT " + json.dumps(report.to_dict()), flush=True)
"""


def test_torchrun_precompute_waits_for_a_manifest_longer_than_wait_timeout(
    teacher: Path, tmp_path: Path
) -> None:
    root = class_sorted_folder(tmp_path / "f", classes=4, per_class=25)  # 100 files: >= 5 s
    store = tmp_path / "s.zarr"
    cfg = PrecomputeConfig(
        teacher=str(teacher), dataset=f"imagefolder:{root}", store=str(store), views=2,
        size=16, shard_size=16, batch_size=16, workers=0, device="cpu", progress=False,
        wait_timeout=2.0, manifest_workers=1,
    )  # fmt: skip
    script = tmp_path / "rank.py"
    script.write_text(SLOW_RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script), json.dumps(cfg.__dict__)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("REPORT ")]
    assert sorted(r["worker"] for r in reports) == [0, 1]
    assert all(r["workers"] == 2 and r["shards_computed"] > 0 for r in reports)
    done = EmbeddingStore.open(str(store))
    assert done.written_mask().all() and done.n == 100
    assert heartbeat_path(str(store)) is not None and not heartbeat_path(str(store)).exists()


def test_a_file_that_fails_only_at_precompute_is_recorded_not_written(
    teacher: Path, tmp_path: Path
) -> None:
    root = class_sorted_folder(tmp_path / "f", classes=2, per_class=6)
    victim = root / "c01" / "002.jpg"
    _jpeg(victim, 40, 40, seed=99)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # good header, pixel data cut short
    store = tmp_path / "s.zarr"
    cfg = PrecomputeConfig(
        teacher=str(teacher), dataset=f"imagefolder:{root}", store=str(store), views=2,
        size=16, shard_size=4, batch_size=8, workers=0, device="cpu", progress=False,
    )  # fmt: skip
    report = run_precompute(cfg)
    assert list(report.errors) == ["c01/002.jpg"]
    opened = EmbeddingStore.open(str(store))
    row = opened.manifest.keys.tolist().index("c01/002.jpg")
    assert not opened.manifest.valid[row] and "c01/002.jpg" in opened.manifest.errors
    mask = opened.written_mask()
    assert not mask[row].any() and mask[opened.manifest.valid].all()
    assert opened.missing_shards() == []  # the job is complete: nothing waits for that row
    assert run_precompute(cfg).views_computed == 0
