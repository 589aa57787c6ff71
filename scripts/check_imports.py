"""Check the import rule that ``lint-imports`` cannot: a function-level import says why.

Imports belong at module level. One inside a function is allowed only to keep an optional or
heavy dependency off a path that does not need it (a CLI module stays free of torch so ``--help``
is instant; faiss, matplotlib, scikit-learn, safetensors load only when used), and it carries a
comment saying so: on its own line, on the line above, or above the run of imports it starts.
A function-level import that dodges an import cycle is caught by ``lint-imports`` itself (its
``acyclic_siblings`` contracts see function-level imports too). Prints one line per offence and
exits 1 if there are any.

Usage: ``python scripts/check_imports.py [PACKAGE_DIR ...]`` (default: the three packages).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("store", "teacher_service", "student_trainer")


def uncommented_function_imports(path: Path) -> list[str]:
    """``path:line module`` for each function-level import in ``path`` without a comment."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    imports = [
        node
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(fn)
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]
    import_lines = {n for node in imports for n in range(node.lineno, (node.end_lineno or 0) + 1)}
    bad = []
    for node in imports:
        end = node.end_lineno or node.lineno
        if any("#" in lines[n - 1] for n in range(node.lineno, end + 1)):
            continue
        above = node.lineno - 1
        while above in import_lines:
            above -= 1
        if above >= 1 and "#" in lines[above - 1]:
            continue
        module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
        bad.append(f"{path}:{node.lineno} function-level import of {module} has no comment")
    return bad


def main(argv: list[str]) -> int:
    """Check every ``*.py`` under the given package folders; return the exit status."""
    roots = [Path(a) for a in argv] or [Path(p) for p in PACKAGES]
    bad = [line for root in roots for f in sorted(root.rglob("*.py")) for line in
           uncommented_function_imports(f)]  # fmt: skip
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
