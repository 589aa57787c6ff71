"""`disco eval` names each row from the checkpoint's own metadata (role, method, run folder),
not from its file name: the shipped demo teacher evaluated alone is a teacher row, students are
named by method and run folder."""

from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner

from student_trainer.cli import app
from student_trainer.eval.evaluate import evaluate
from teacher_service.checkpoint import save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder

DEMO_TEACHER = Path(__file__).resolve().parents[1] / "student_trainer/assets/demo_teacher.pt"
PRE = {"size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "recipe": "digits"}


def _tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_encoder(EncoderConfig(arch="tiny", small_stem=True, head=False))


def test_rows_are_named_from_checkpoint_metadata(tmp_path: Path) -> None:
    student = tmp_path / "runs" / "disco-s3" / "deployed.pt"
    save_checkpoint(student, _tiny(0), PRE, train={"method": "disco"}, meta={"method": "disco"})
    final = tmp_path / "runs" / "seed-s1" / "final.pt"
    save_checkpoint(final, _tiny(1), PRE, train={"method": "seed"}, meta={"method": "seed"})
    records = evaluate(
        [DEMO_TEACHER, student, final],
        "synthetic:60",
        pixels=False,
        probe=None,
        device="cpu",
        cache_dir=tmp_path / "cache",
        figures=False,
        progress=False,
    )
    rows = [(r["name"], r["role"], r["method"]) for r in records]
    assert rows == [
        ("demo teacher", "teacher", "mocov2"),
        ("disco student (disco-s3)", "student", "disco"),
        ("seed student (seed-s1/final)", "student", "seed"),
    ]
    assert all("agreement_at_10" not in r or r["agreement_at_10"] is None for r in records)


def test_eval_cli_rows_and_explicit_teacher(tmp_path: Path) -> None:
    student = tmp_path / "mocov2-s0" / "deployed.pt"
    save_checkpoint(student, _tiny(0), PRE, train={"method": "mocov2"}, meta={"method": "mocov2"})
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(student),
            "--teacher",
            str(student),
            "--dataset",
            "synthetic:60",
            "--no-pixels",
            "--no-probe",
            "--no-figures",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| mocov2 teacher (mocov2-s0) | teacher |" in result.output
    assert "| mocov2 student (mocov2-s0) | student |" in result.output
    assert "deployed |" not in result.output
