"""Datasets, the shared split rule and manifests (corrupt ImageFolder files are masked, by key)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from store.datasets import open_dataset, split_indices
from store.errors import DatasetError
from store.manifest import build_manifest


def _png(path: Path, value: int, size: tuple[int, int] = (10, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)


def _corrupt_folder(root: Path) -> Path:
    _png(root / "cat" / "a.png", 10)
    _png(root / "cat" / "b.png", 20)
    _png(root / "dog" / "c.png", 30, (7, 5))
    good = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(good).save(root / "dog" / "full.jpg", quality=90)
    data = (root / "dog" / "full.jpg").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "dog" / "zero.png").write_bytes(b"")
    (root / "cat" / "text.png").write_text("this is not a png\n")
    (root / "cat" / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_split_rule_is_the_contract() -> None:
    n = 5000
    perm = np.random.RandomState(0).permutation(n)
    train, test = split_indices(n, "train"), split_indices(n, "test")
    assert len(train) == 4000 and len(test) == 1000
    assert np.array_equal(train, perm[:4000]) and np.array_equal(test, perm[4000:])
    assert train.dtype == np.int64
    assert np.array_equal(split_indices(7, "all"), np.arange(7))
    with pytest.raises(DatasetError, match="valid: all, train, test"):
        split_indices(5, "val")


def test_unknown_spec_lists_valid_names() -> None:
    with pytest.raises(DatasetError) as info:
        open_dataset("cifar10")
    assert "mnist5k" in str(info.value) and "imagefolder:PATH" in str(info.value)
    with pytest.raises(DatasetError):
        open_dataset("synthetic:abc")


def test_synthetic_deterministic_labelled_varied() -> None:
    a, b = open_dataset("synthetic:24"), open_dataset("synthetic:24")
    assert len(a) == 24 and a.spec == "synthetic:24"
    assert set(a.labels.tolist()) == {0, 1, 2, 3}
    shapes = {a.load(i).shape for i in range(24)}
    assert len(shapes) > 5
    for i in range(24):
        assert np.array_equal(a.load(i), b.load(i))
        assert a.sha256(i) == b.sha256(i)
    assert len(open_dataset("synthetic")) == 256


def test_digits_builtin() -> None:
    ds = open_dataset("digits")
    assert len(ds) == 1797
    img = ds.load(0)
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    assert max(int(ds.load(i).max()) for i in range(50)) == 255  # 16 -> 255
    assert ds.labels[:3].tolist() == [0, 1, 2]


def test_mnist5k_builtin_and_split() -> None:
    ds = open_dataset("mnist5k")
    assert len(ds) == 5000
    assert ds.load(0).shape == (28, 28, 3)
    assert len(ds.split_indices("train")) == 4000
    assert np.bincount(ds.labels, minlength=10).min() > 400


def test_imagefolder_corrupt_files_masked_by_key(tmp_path: Path) -> None:
    ds = open_dataset(f"imagefolder:{_corrupt_folder(tmp_path / 'data')}")
    assert ds.classes == ["cat", "dog"]
    assert "cat/notes.txt" not in ds.keys
    m = build_manifest(ds, progress=False)
    assert len(m) == 7
    bad = {"dog/truncated.jpg", "dog/zero.png", "cat/text.png"}
    assert set(m.errors) == bad
    assert "empty" in m.errors["dog/zero.png"]
    for row, key in enumerate(m.keys.tolist()):
        assert m.valid[row] == (key not in bad)
        assert len(m.sha256[row]) == 64  # even corrupt files are hashed
    row_c = m.keys.tolist().index("dog/c.png")
    assert (m.heights[row_c], m.widths[row_c], m.labels[row_c]) == (7, 5, 1)
    assert m.num_invalid == 3


def test_imagefolder_flat_and_errors(tmp_path: Path) -> None:
    _png(tmp_path / "flat" / "x.png", 1)
    _png(tmp_path / "flat" / "y.png", 2)
    ds = open_dataset(f"imagefolder:{tmp_path / 'flat'}")
    assert ds.labels.tolist() == [-1, -1] and ds.classes == []
    with pytest.raises(DatasetError, match="not a directory"):
        open_dataset(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        open_dataset(f"imagefolder:{tmp_path / 'empty'}")


def test_manifest_hash_tracks_content(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _png(root / "a" / "1.png", 5)
    _png(root / "b" / "2.png", 6)
    ds = open_dataset(f"imagefolder:{root}")
    h1 = build_manifest(ds, progress=False).hash
    assert build_manifest(ds, progress=False).hash == h1
    _png(root / "b" / "2.png", 7)
    assert build_manifest(open_dataset(f"imagefolder:{root}"), progress=False).hash != h1


def test_manifest_split_rows() -> None:
    ds = open_dataset("synthetic:20")
    m = build_manifest(ds, "test", progress=False)
    assert np.array_equal(m.indices, split_indices(20, "test"))
    assert m.keys.tolist() == [ds.keys[i] for i in m.indices]
    assert m.valid.all() and (m.heights >= 12).all()
