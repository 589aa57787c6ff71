"""`disco demo --quick` runs every stage end to end on mnist5k and writes the result table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from store.errors import ConfigError
from student_trainer.cli import app
from student_trainer.demo import DemoConfig
from teacher_service.checkpoint import save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder


def _teacher(path: Path) -> Path:
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(arch="tiny", small_stem=True, head_hidden=256))
    save_checkpoint(path, enc, preprocessing={"size": 32, "recipe": "digits"}, meta={"name": "t"})
    return path


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    teacher = _teacher(tmp_path / "teacher.pt")
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app,
        [
            *("demo", "--quick", "--teacher", str(teacher), "--student-arch", "tiny"),
            *("--out", str(out), "--no-progress", "--workers", "1"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    stages = summary["stage_seconds"]
    assert len(stages) == 6 and all(sec > 0 for sec in stages.values())
    records = summary["records"]
    roles = [r["role"] for r in records]
    assert roles.count("teacher") == 1 and roles.count("student") == 3
    assert sorted(r["method"] for r in records if r["role"] == "student") == [
        "disco",
        "mocov2",
        "seed",
    ]
    baselines = {r["name"]: r for r in records if r["role"] == "baseline"}
    # The raw-pixel rows are DESIGN §12's contract numbers on the mnist5k split.
    assert round(baselines["raw pixels"]["knn_weighted"], 3) == 0.940
    for r in records:
        if r["role"] == "student":
            assert 0.1 < r["knn_weighted"] <= 1.0  # above chance (10 classes)
            assert r["params"] < 1_000_000
    table = (out / "results.md").read_text()
    assert "Stage times" in table and "| raw pixels |" in table
    assert len(list(out.glob("neighbours_*.png"))) >= 4
    assert (out / "store.zarr").is_dir()


def test_demo_refuses_missing_teacher_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--dataset", "digits", "--out", str(tmp_path), "--no-progress"]
    )
    assert result.exit_code == 1
    assert "give --teacher" in result.output


def test_quick_shrinks_every_stage() -> None:
    cfg = DemoConfig(quick=True, views=32, epochs=15)
    assert (cfg.views, cfg.epochs, cfg.verify_samples) == (2, 1, 16)
    with pytest.raises(ConfigError, match="unknown demo methods"):
        DemoConfig(methods=("mocov2", "byol"))
