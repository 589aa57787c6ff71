"""Data that moved: a store's images at a new place are checked against its manifest first."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_precompute import make_teacher
from typer.testing import CliRunner

from store.datasets import open_dataset
from store.manifest import build_manifest
from store.relocate import DatasetMismatchError, check_dataset, open_moved_dataset
from student_trainer.cli import app
from teacher_service.precompute import PrecomputeConfig, run_precompute

runner = CliRunner()


def write_images(root: Path, per_class: int = 6) -> Path:
    for c, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.random.default_rng([c, i]).integers(0, 256, (16, 18, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{i:02d}.png")
    return root


def change(path: Path) -> None:
    """Same size, other pixels: a file whose name and shape stay but whose content changed."""
    img = np.asarray(Image.open(path)).copy()
    img[0, 0] ^= 255
    Image.fromarray(img).save(path)


def test_moved_copy_accepted_changed_file_refused_by_key(tmp_path: Path) -> None:
    here = write_images(tmp_path / "here")
    manifest = build_manifest(open_dataset(f"imagefolder:{here}"), "all", progress=False)
    there = tmp_path / "there"
    shutil.copytree(here, there)
    moved = open_moved_dataset(manifest, f"imagefolder:{there}", full=True)
    assert moved.spec == f"imagefolder:{there}" and len(moved) == 12
    assert check_dataset(manifest, moved, sample=4) == 4  # a sample by default, all with full
    assert check_dataset(manifest, moved, sample=None) == 12

    change(there / "b" / "03.png")
    with pytest.raises(DatasetMismatchError, match=r"'b/03.png': content changed") as exc:
        open_moved_dataset(manifest, f"imagefolder:{there}", full=True)
    assert exc.value.key == "b/03.png"
    assert exc.value.row == manifest.keys.tolist().index("b/03.png")  # rows are permuted
    shutil.copy(here / "b" / "03.png", there / "b" / "03.png")

    (there / "a" / "04.png").unlink()  # later keys shift too: the one gone is named
    with pytest.raises(DatasetMismatchError, match=r"key 'a/04.png': key not found"):
        open_moved_dataset(manifest, f"imagefolder:{there}")
    shutil.rmtree(there / "a")
    first_a = next(k for k in manifest.keys.tolist() if k.startswith("a/"))
    with pytest.raises(DatasetMismatchError, match=rf"key '{first_a}': key not found"):
        open_moved_dataset(manifest, f"imagefolder:{there}")


def test_store_check_and_verify_take_the_moved_dataset(tmp_path: Path) -> None:
    here = write_images(tmp_path / "here")
    teacher = make_teacher(tmp_path / "teacher.pt")
    store = str(tmp_path / "s.zarr")
    run_precompute(PrecomputeConfig(
        teacher=str(teacher), dataset=f"imagefolder:{here}", store=store, views=2,
        recipe="mocov2", size=16, shard_size=4, batch_size=8, workers=0, device="cpu",
        progress=False,
    ))  # fmt: skip
    there = tmp_path / "there"
    here.rename(there)  # the recorded path is gone

    res = runner.invoke(app, ["store", "verify", store, "--teacher", str(teacher), "--samples",
                              "6", "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 1 and "error:" in res.output and "Traceback" not in res.output
    moved = ["--dataset", f"imagefolder:{there}"]
    verify = ["store", "verify", store, "--teacher", str(teacher), "--samples", "6", "--device",
              "cpu", *moved, "--full-check"]  # fmt: skip
    res = runner.invoke(app, verify)
    assert res.exit_code == 0 and res.output.startswith("PASS"), res.output
    res = runner.invoke(app, ["store", "check", store, *moved])
    assert res.exit_code == 0 and "OK" in res.output, res.output
    base = ["train", "--method", "disco", "--arch", "tiny", "--store", store, "--epochs", "1",
            "--batch-size", "4", "--queue-size", "8", "--head-hidden", "32", "--workers", "0",
            "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    res = runner.invoke(app, base)  # the recorded folder is gone: one line, no traceback
    assert res.exit_code == 1 and "is not a directory" in res.output, res.output
    train = [*base, *moved]
    res = runner.invoke(app, train)
    assert res.exit_code == 0 and "trained disco tiny: 3 steps" in res.output, res.output

    change(there / "a" / "02.png")
    res = runner.invoke(app, [*train, "--full-check"])
    assert res.exit_code == 1 and "'a/02.png': content changed" in res.output, res.output
    res = runner.invoke(app, verify)
    assert res.exit_code == 1 and "'a/02.png': content changed" in res.output, res.output
    res = runner.invoke(app, ["store", "check", store, *moved])
    assert res.exit_code == 1 and "(a/02.png): content changed" in res.output, res.output
