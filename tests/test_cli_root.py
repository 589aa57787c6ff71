"""The console script exists after install and lists every command group."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from student_trainer.cli import app

EXPECTED = ("store", "precompute", "train", "eval", "serve", "demo")


def test_disco_help_lists_command_groups() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for name in EXPECTED:
        assert name in result.output, f"`disco --help` does not list {name!r}"


def test_console_script_installed() -> None:
    script = Path(sys.executable).with_name("disco")
    if not script.exists():
        pytest.fail(f"console script missing at {script}: is the package installed?")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "store" in out.stdout
