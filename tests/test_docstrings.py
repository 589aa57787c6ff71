"""Docstrings keep their prose whole: no line of a docstring paragraph is one lone word left by
re-wrapping (a word in mid-paragraph on its own line, or a last word that fits on the line
before)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 100


def lone_word_lines(path: Path) -> list[str]:
    """``path:line word`` for each docstring line of ``path`` that is a lone re-wrapped word."""
    source = path.read_text()
    lines = source.splitlines()
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        body = node.body[0] if node.body else None
        if not isinstance(body, ast.Expr) or not isinstance(body.value, ast.Constant):
            continue
        if not isinstance(body.value.value, str) or body.end_lineno is None:
            continue
        first, last = body.lineno, body.end_lineno
        for n in range(first + 1, last + 1):  # 1-based; the opening line never counts
            text = lines[n - 1].strip()
            word = text.removesuffix('"""')
            prev = lines[n - 2].rstrip()
            if not word or " " in word or not prev.strip() or prev.strip().endswith("::"):
                continue
            if word.startswith((">>>", "-", "*", "|", "..", ":")) or prev.strip() == '"""':
                continue
            following = lines[n].strip() if n < last else ""
            mid_paragraph = not text.endswith('"""') and bool(following)
            fits = len(prev) + 1 + len(text) <= WIDTH
            if (mid_paragraph and not following.startswith(("-", "*", "|", ">>>"))) or fits:
                bad.append(f"{path.relative_to(ROOT)}:{n} {word}")
    return bad


def test_no_docstring_line_is_a_lone_word() -> None:
    bad = [
        line
        for pkg in ("store", "teacher_service", "student_trainer", "tests", "bench", "scripts")
        for f in sorted((ROOT / pkg).rglob("*.py"))
        for line in lone_word_lines(f)
    ]
    assert not bad, "re-wrap these docstring lines:\n" + "\n".join(bad)


def test_a_lone_word_is_found(tmp_path: Path) -> None:
    src = ROOT / "tests" / "_lone_word_probe.py"
    try:
        src.write_text(
            'def f() -> None:\n    """Sum the rows of the block, one value a row, in order\n'
            '    and return it as a plain\n    float.\n    """\n\n\n'
            'def g() -> None:\n    """Labels are the\n    sorted\n    class index."""\n'
        )
        assert [line.split()[-1] for line in lone_word_lines(src)] == ["float.", "sorted"]
    finally:
        src.unlink()
