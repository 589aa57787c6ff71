"""``disco serve`` option handling: bad settings exit 1 with one line, no traceback."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from teacher_service.serve_cli import serve_command


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("serve")(serve_command)
    app.command("noop")(lambda: None)  # a second command keeps "serve" a subcommand
    return app


def test_missing_teacher_file_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["serve", "--teacher", str(tmp_path / "nope.pt")])
    assert result.exit_code == 1
    assert "teacher" in result.output and "Traceback" not in result.output


def test_out_of_range_setting_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "t.pt"
    ckpt.write_bytes(b"x")
    result = CliRunner().invoke(_app(), ["serve", "--teacher", str(ckpt), "--max-batch-size", "0"])
    assert result.exit_code == 1
    assert "max_batch_size" in result.output and "Traceback" not in result.output


def test_root_cli_registers_serve() -> None:
    from student_trainer.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    assert "--store-root" in result.output and "--max-wait-ms" in result.output
