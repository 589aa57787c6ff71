"""The import contract: package layers, sub-package layers and no import circles
(``lint-imports`` over pyproject's ``[tool.importlinter]``), and a reason on every
function-level import (``scripts/check_imports.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
sys.path.insert(0, str(ROOT / "scripts"))
from check_imports import main, uncommented_function_imports  # noqa: E402


def test_project_keeps_the_import_contract() -> None:
    run = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert "4 kept, 0 broken" in run.stdout


def test_every_function_level_import_says_why() -> None:
    assert main([str(ROOT / p) for p in ("store", "teacher_service", "student_trainer")]) == 0


def test_uncommented_function_import_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "def a():\n    import json\n    return json\n\n\n"
        "def b():\n    # lazy: a reason\n    import json\n    import os\n    return json, os\n"
    )
    bad = uncommented_function_imports(src)
    assert bad == [f"{src}:2 function-level import of json has no comment"]


def test_a_cycle_hidden_in_a_function_breaks_the_contract(tmp_path: Path) -> None:
    """Two sibling modules importing each other, one of them inside a function (the dodge
    this contract exists to catch)."""
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyc.b import g\n\n\ndef f():\n    return g\n")
    (pkg / "b.py").write_text("def g():\n    from cyc.a import f\n\n    return f\n")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.importlinter]\nroot_packages = ["cyc"]\n\n[[tool.importlinter.contracts]]\n'
        'name = "acyclic"\ntype = "acyclic_siblings"\nancestors = ["cyc"]\n'
    )
    run = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 1, run.stdout[-3000:]
    assert "acyclic BROKEN" in run.stdout
