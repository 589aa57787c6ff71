"""One precision vocabulary in every command: ``--precision fp32|bf16|fp16``, the same clear error
for bf16/fp16 off CUDA in train, precompute, verify and serve, and the old flags still accepted
with one deprecation line (train ``--amp``, precompute ``--amp MODE``, serve ``--dtype``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from store.errors import ConfigError
from student_trainer.cli import app
from student_trainer.train.config import TrainConfig
from student_trainer.train.loop import _check_resumable, train
from teacher_service.config import PrecomputeConfig

TINY: dict[str, Any] = dict(
    method="mocov2", arch="tiny", dataset="synthetic:32", size=16, batch_size=8, epochs=1,
    queue_size=16, head_hidden=16, num_workers=0, progress=False, device="cpu",
)  # fmt: skip


def test_train_precision_and_the_old_amp_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert TrainConfig(out=str(tmp_path), **TINY).precision == "fp32"
    old = TrainConfig(out=str(tmp_path), amp=True, **TINY)
    assert (old.precision, old.amp) == ("bf16", False)
    assert "--amp is deprecated; use --precision bf16" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="valid: fp32, bf16, fp16"):
        TrainConfig(out=str(tmp_path), precision="half", **TINY)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_train_refuses_reduced_precision_on_cpu_before_any_work(
    tmp_path: Path, precision: str
) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=rf"--precision {precision} needs a CUDA device"):
        train(TrainConfig(out=str(out), precision=precision, **TINY))
    assert not out.exists()


def test_train_cli_bf16_on_cpu_is_one_line(tmp_path: Path) -> None:
    args = ["train", "--method", "mocov2", "--dataset", "synthetic:32", "--arch", "tiny",
            "--size", "16", "--batch-size", "8", "--epochs", "1", "--device", "cpu",
            "--out", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--precision", "bf16"])
    assert result.exit_code == 1, result.output
    assert "--precision bf16 needs a CUDA device" in result.output
    assert "Traceback" not in result.output
    old = CliRunner().invoke(app, [*args, "--amp"])
    assert old.exit_code == 1
    assert "--amp is deprecated; use --precision bf16" in old.output
    assert "--precision bf16 needs a CUDA device" in old.output


def test_a_run_written_with_the_old_amp_resumes_with_precision_bf16(tmp_path: Path) -> None:
    cfg = TrainConfig(out=str(tmp_path), precision="bf16", **TINY)
    saved = {k: v for k, v in cfg.to_dict().items() if k != "precision"} | {"amp": True}
    _check_resumable(saved, cfg)  # no error: the old flag meant bf16
    with pytest.raises(ConfigError, match="precision"):
        _check_resumable(saved, TrainConfig(out=str(tmp_path), **TINY))


def test_precompute_old_amp_spelling(capsys: pytest.CaptureFixture[str]) -> None:
    base = dict(teacher="t.pt", dataset="synthetic:4", store="s.zarr")
    assert PrecomputeConfig(**base, amp="none").precision == "fp32"  # type: ignore[arg-type]
    assert "--amp none is deprecated; use --precision fp32" in capsys.readouterr().err
    assert PrecomputeConfig(**base, precision="bf16").precision == "bf16"  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown precision"):
        PrecomputeConfig(**base, amp="int8")  # type: ignore[arg-type]
