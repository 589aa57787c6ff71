"""`disco demo --quick` runs every stage end to end on mnist5k and writes the result table."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from store.embedding_store import EmbeddingStore
from store.errors import ConfigError
from student_trainer.cli import app
from student_trainer.demo.config import DemoConfig
from student_trainer.demo.service_check import check_service
from teacher_service.checkpoint import file_sha256, save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder
from teacher_service.precompute import PrecomputeConfig, run_precompute

# Figures of the quick runs that involve no training, so they are stable (measured 2026-12-01 with
# `evaluate` on this teacher): weighted 20-NN of the untrained tiny teacher below and of raw pixels.
MNIST_TEACHER_KNN = 0.648
DIGITS_TEACHER_KNN = 0.900
DIGITS_PIXELS_KNN = 0.9833


def _teacher(path: Path) -> Path:
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(arch="tiny", small_stem=True, head_hidden=256))
    save_checkpoint(path, enc, preprocessing={"size": 32, "recipe": "digits"}, meta={"name": "t"})
    return path


def _quick(teacher: Path, out: Path, *extra: str, workers: int = 1) -> list[str]:
    return [
        *("demo", "--quick", "--teacher", str(teacher), "--student-arch", "tiny"),
        *("--out", str(out), "--no-progress", "--workers", str(workers), *extra),
    ]


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    teacher = _teacher(tmp_path / "teacher.pt")
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, _quick(teacher, out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    stages = summary["stage_seconds"]
    assert len(stages) == 7 and all(sec > 0 for sec in stages.values())
    assert any(name.startswith("service:") for name in stages)
    assert "service PASS" in result.output
    records = summary["records"]
    roles = [r["role"] for r in records]
    assert roles.count("teacher") == 1 and roles.count("student") == 3
    assert sorted(r["name"] for r in records if r["role"] == "student") == [
        "disco student",
        "mocov2 student",
        "seed student",
    ]
    baselines = {r["name"]: r for r in records if r["role"] == "baseline"}
    # The raw-pixel rows are DESIGN §12's contract numbers on the mnist5k split.
    assert round(baselines["raw pixels"]["knn_weighted"], 3) == 0.940
    assert round(baselines["raw pixels"]["nn1"], 3) == 0.946
    teacher_row = next(r for r in records if r["role"] == "teacher")
    assert teacher_row["knn_weighted"] == pytest.approx(MNIST_TEACHER_KNN, abs=5e-3)
    for r in records:
        if r["role"] == "student":
            assert 0.1 < r["knn_weighted"] <= 1.0  # above chance (10 classes)
            assert r["params"] < 1_000_000
    table = (out / "results.md").read_text()
    assert "Stage times" in table and "| raw pixels |" in table
    assert len(list(out.glob("neighbours_*.png"))) >= 4
    assert (out / "store.zarr").is_dir()


@pytest.mark.slow
def test_quick_study_end_to_end_and_resumed(tmp_path: Path) -> None:
    """`demo --quick --study` on sklearn digits: the demo, then every study arm kind; a second
    `demo --quick` in the same folder reuses every trained student (the runs ledger)."""
    teacher = _teacher(tmp_path / "teacher.pt")
    out = tmp_path / "study"
    # In-process rendering (--workers 0): ten short runs would each start a worker otherwise.
    args = _quick(teacher, out, "--dataset", "digits", "--study", workers=0)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    study = json.loads((out / "study.json").read_text())
    arms = {a["name"]: a for a in study["arms"]}
    assert set(arms) == {
        *("mocov2", "mocov2-sym", "disco", "disco-lambda2", "disco-V3", "disco-online"),
        *("disco-head128", "disco-weak"),
    }
    assert arms["mocov2"]["seeds"] == [0, 1] and arms["disco"]["seeds"] == [0, 1]
    for arm in arms.values():
        assert all(0.1 < v <= 1.0 for v in arm["knn_weighted"].values()), arm
    # The weak teacher is the seed-0 mocov2 student; V=3 got a store of its own.
    ledger = json.loads((out / "runs.json").read_text())
    weak = EmbeddingStore.open(str(out / "store-weak.zarr")).teacher
    assert weak is not None and weak["sha256"] == file_sha256(ledger["mocov2-s0"]["final"])
    assert set(study["cost"]["builds"]) == {"store.zarr", "store-v3.zarr", "store-weak.zarr"}
    assert study["cost"]["break_even"]["store.zarr"]["build_s"] > 0
    # Every goal's value follows from the run's own figures in study.json.
    assert study["goals"] == study_goals(study)
    for arm in arms.values():
        assert arm["mean"] == pytest.approx(statistics.fmean(arm["knn_weighted"].values()))
    # Figures that do not depend on training (no learned weights move): the raw pixels on
    # sklearn digits, and the untrained tiny teacher.
    assert study["pixels"]["knn_weighted"] == pytest.approx(DIGITS_PIXELS_KNN, abs=1e-3)
    assert study["teacher"]["knn_weighted"] == pytest.approx(DIGITS_TEACHER_KNN, abs=5e-3)
    assert study["goals"]["teacher_knn_at_least_0.97"] is (DIGITS_TEACHER_KNN >= 0.97)
    md = (out / "study.md").read_text()
    assert "## The DisCo claim" in md and "## Weak teacher" in md and "## Cost" in md

    again = CliRunner().invoke(app, _quick(teacher, out, "--dataset", "digits", workers=0))
    assert again.exit_code == 0, again.output
    assert again.output.count("already trained") == 3


def study_goals(study: dict[str, Any]) -> dict[str, bool]:
    """The study's goals recomputed from the figures study.json reports (DESIGN's targets)."""
    mean = {a["name"]: a["mean"] for a in study["arms"]}
    t, px = study["teacher"]["knn_weighted"], study["pixels"]["knn_weighted"]
    learned = [
        r["knn_weighted"]
        for r in study["demo_rows"]
        if not r["name"].startswith("raw pixels") and r["knn_weighted"] is not None
    ]
    return {
        "teacher_knn_at_least_0.97": t >= 0.97,
        "disco_beats_mocov2_by_2_points": mean["disco"] >= mean["mocov2"] + 0.02,
        "disco_within_1_point_of_teacher": mean["disco"] >= t - 0.01,
        "every_learned_demo_model_above_pixels": all(v > px for v in learned),
        "V3_within_1_point_of_online": abs(mean["disco-V3"] - mean["disco-online"]) <= 0.01,
    }


def test_demo_refuses_missing_teacher_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--dataset", "digits", "--out", str(tmp_path), "--no-progress"]
    )
    assert result.exit_code == 1
    assert "give --teacher" in result.output


def test_quick_shrinks_every_stage() -> None:
    cfg = DemoConfig(quick=True, views=32, epochs=15)
    assert (cfg.views, cfg.epochs, cfg.verify_samples) == (2, 1, 16)
    assert cfg.extra == {"queue_size": 512}
    with pytest.raises(ConfigError, match="unknown demo methods"):
        DemoConfig(methods=("mocov2", "byol"))


def test_demo_and_study_students_share_one_config_assembly() -> None:
    """``DemoConfig.student``: shared defaults, then ``extra``, then an arm's overrides."""
    from student_trainer.demo.config import STUDENT_DEFAULTS

    cfg = DemoConfig(out="runs/x", quick=True, student_arch="tiny", epochs=3, workers=0)
    plain = cfg.student("disco", 5, "disco-s5", {"store": "s.zarr"})
    assert (plain.method, plain.arch, plain.seed, plain.epochs) == ("disco", "tiny", 5, 1)
    assert plain.out == str(Path("runs/x") / "students" / "disco-s5") and plain.store == "s.zarr"
    assert plain.queue_size == 512  # quick's extra beats STUDENT_DEFAULTS' 4096
    assert plain.lr == STUDENT_DEFAULTS["lr"] and plain.distill_weight == cfg.distill_weight
    arm = cfg.student("disco", 0, "lam2-s0", {"store": "s.zarr"}, {"distill_weight": 2.0})
    assert arm.distill_weight == 2.0 and arm.num_workers == 0


def test_service_stage_checks_the_cache_over_http_and_can_fail(tmp_path: Path) -> None:
    """The demo's service stage: `disco serve` on the store's teacher answers planned views
    equal to the cached targets; a store whose targets were overwritten fails the check."""
    teacher = _teacher(tmp_path / "teacher.pt")
    store = str(tmp_path / "stores" / "s.zarr")
    run_precompute(
        PrecomputeConfig(
            teacher=str(teacher), dataset="synthetic:8", store=store, views=2, workers=0,
            device="cpu", shard_size=4, progress=False,
        )
    )  # fmt: skip
    good = check_service(store, str(teacher), samples=6, device="cpu")
    assert good.passed, good.summary()
    assert good.samples == 6 and good.cos_min >= 0.999 and good.control_max < 0.999
    assert good.ready_s > 0 and (tmp_path / "stores" / "service.log").is_file()
    # Overwrite the cached targets with other unit vectors: the HTTP answers no longer match.
    writer = EmbeddingStore.open(store, mode="r+")
    rng = torch.Generator().manual_seed(1)
    for shard in range(writer.num_shards):
        a, b = writer.shard_bounds(shard)
        fake = torch.nn.functional.normalize(
            torch.randn(b - a, 2, writer.dim or 0, generator=rng), dim=2
        )
        writer.write_shard(shard, fake.numpy(), written=np.ones((b - a, 2), dtype=bool))
    bad = check_service(store, str(teacher), samples=6, device="cpu")
    assert not bad.passed and bad.cos_min < 0.999
