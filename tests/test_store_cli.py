"""``disco store create|info|check`` through the typer app, in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from store.cli import app
from store.embedding_store import EmbeddingStore
from store.inspection import check_store, store_info

runner = CliRunner()


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            img = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / cls / f"{i}.png")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def _fill(url: str) -> np.ndarray:
    store = EmbeddingStore.open(url, mode="r+")
    store.attach_teacher({"arch": "tiny", "sha256": "f" * 64}, dim=8)
    x = np.random.default_rng(1).standard_normal((store.n, store.views, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    for s in range(store.num_shards):
        a, b = store.shard_bounds(s)
        store.write_shard(s, x[a:b])
    return x


def test_create_info_check_round(tmp_path: Path) -> None:
    data = _folder(tmp_path / "imgs")
    url = str(tmp_path / "s.zarr")
    res = runner.invoke(
        app,
        [
            "create", url, "--dataset", f"imagefolder:{data}", "--split", "all",
            "--views", "3", "--shard-size", "4", "--size", "16", "--interpolation", "bicubic",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert EmbeddingStore.open(url).recipe.interpolation == "bicubic"
    assert "N=11" in res.output and "1 undecodable" in res.output and "b/broken.png" in res.output
    res = runner.invoke(app, ["info", url])
    assert res.exit_code == 0, res.output
    for needle in ("N (rows)", "11", "bytes on disk", "compression ratio", "% written", "mocov2"):
        assert needle in res.output
    _fill(url)
    info = store_info(url)
    assert info["written_fraction"] == 30 / 33  # the broken row is masked
    # Uncompressed; tiny shards carry a visible shard-index overhead.
    assert info["compression_ratio"] is not None and 0.6 < info["compression_ratio"] <= 1.0
    assert info["missing_shards"] == []
    res = runner.invoke(app, ["check", url])
    assert res.exit_code == 0, res.output
    assert "30/33 slots written" in res.output and "OK" in res.output


def test_check_finds_bad_rows_and_changed_files(tmp_path: Path) -> None:
    data = _folder(tmp_path / "imgs")
    url = str(tmp_path / "s.zarr")
    args = ["create", url, "--dataset", f"imagefolder:{data}", "--split", "all"]
    assert runner.invoke(app, args).exit_code == 0
    x = _fill(url)
    assert check_store(url).ok
    store = EmbeddingStore.open(url, mode="r+")
    bad = x[:].copy()
    bad[1, 0] = 0.0
    bad[2, 1, 3] = np.nan
    store.write_shard(0, bad)
    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(data / "a" / "3.png")
    report = check_store(url)
    assert not report.ok and report.bad_rows == 2 and report.dataset_checked
    text = "\n".join(report.problems)
    assert "row 1" in text and "row 2" in text and "a/3.png" in text and "content changed" in text
    res = runner.invoke(app, ["check", url])
    assert res.exit_code == 1 and "problem" in res.output
    assert check_store(url, check_dataset=False).bad_rows == 2


def test_errors_are_one_line_exit_1(tmp_path: Path) -> None:
    res = runner.invoke(app, ["info", str(tmp_path / "missing.zarr")])
    assert res.exit_code == 1 and "no store at" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["create", str(tmp_path / "x.zarr"), "--dataset", "nope"])
    assert res.exit_code == 1 and "unknown dataset" in res.output
    res = runner.invoke(app, ["create", str(tmp_path / "y.zarr"), "--recipe", "simclr"])
    assert res.exit_code == 1 and "unknown view recipe" in res.output
