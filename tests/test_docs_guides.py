"""Guides that cannot rot: every runnable block of every docs page runs, at a tiny size.

One test per page that has ``<!-- docs-test -->`` blocks (the convention: ``tests/docs_runner.py``);
it fails with the block and its output when a command fails. The runner itself is tested on pages
written here (a failing block is caught and named, substitutions apply, background jobs die), and
the README is held under 200 lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs_runner import (
    DOCS,
    ROOT,
    DocsFormatError,
    fenced_blocks,
    make_imagefolder,
    page_env,
    parse_page,
    run_page,
    runnable_pages,
    shell_commands,
)

PAGES = runnable_pages()


@pytest.fixture(scope="session")
def docs_imagefolder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$DOCS_IMAGEFOLDER``: 2 classes x 12 generated 32-px PNGs, class-sorted."""
    return make_imagefolder(tmp_path_factory.mktemp("docs-data") / "imagefolder")


def test_some_pages_are_runnable() -> None:
    """The guides written with runnable blocks are found (a broken finder would pass vacuously)."""
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert {"guides/own-teacher.md", "guides/growing-stores.md"} <= names


@pytest.mark.parametrize("path", PAGES, ids=[p.relative_to(DOCS).as_posix() for p in PAGES])
def test_page_runs(path: Path, docs_imagefolder: Path, tmp_path: Path) -> None:
    page = parse_page(path)
    assert page.blocks, f"{path} has a marker but no block"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    result = run_page(page, workdir, page_env(docs_imagefolder, tmp_path))
    if result.returncode != 0 or result.failed_block is not None:
        pytest.fail(result.report(page), pytrace=False)


def test_readme_disco_commands_are_run_by_a_guide() -> None:
    """Every ``disco`` command in the README's shell blocks is run, as written, by some guide's
    runnable block, so the quickstarts cannot rot either (``make demo``/``docker`` lines aside)."""
    tested = {
        command
        for path in PAGES
        for block in parse_page(path).blocks
        for command in shell_commands(block.shown)
    }
    readme = [
        command
        for block in fenced_blocks(ROOT / "README.md")
        for command in shell_commands(block)
        if command.startswith("disco ")
    ]
    assert readme, "the README shows no disco command"
    untested = [c for c in readme if c not in tested]
    assert not untested, f"README commands no runnable docs block runs: {untested}"


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines; move detail into docs/"


# ---- the runner itself ------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text)
    return page


def test_runner_names_the_failing_block(tmp_path: Path, docs_imagefolder: Path) -> None:
    page = parse_page(
        _write(
            tmp_path,
            "# t\n\n<!-- docs-test -->\n```bash\necho first-ok\n```\n\n"
            "<!-- docs-test -->\n```bash\necho about-to-fail\nls /no/such/dir\n"
            "echo unreached\n```\n",
        )
    )
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    result = run_page(page, workdir, page_env(docs_imagefolder, tmp_path))
    assert result.returncode != 0
    assert result.failed_block is page.blocks[1]
    report = result.report(page)
    assert "ls /no/such/dir" in report and "about-to-fail" in report and "line 10" in report
    assert "unreached" not in result.output


def test_runner_substitutes_shares_state_and_sees_the_environment(
    tmp_path: Path, docs_imagefolder: Path
) -> None:
    page = parse_page(
        _write(
            tmp_path,
            "<!-- docs-sub: /data/imagenet/train => $DOCS_IMAGEFOLDER -->\n"
            "<!-- docs-sub: --epochs 100 => --epochs 1 -->\n# t\n\n"
            "```bash\necho not-runnable > never.txt\n```\n\n"
            "<!-- docs-test -->\n```bash\nN=$(ls /data/imagenet/train/class_0 | wc -l)\n"
            "echo --epochs 100 > epochs.txt\n```\n"
            '<!-- docs-test -->\n```bash\ntest "$N" -eq 12\ncommand -v disco\n'
            'test -f "$DOCS_TEACHER"\n"$DOCS_PY" -c "print(1)"\n```\n',
        )
    )
    assert len(page.blocks) == 2
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    result = run_page(page, workdir, page_env(docs_imagefolder, tmp_path))
    assert result.returncode == 0, result.report(page)
    assert (workdir / "epochs.txt").read_text().strip() == "--epochs 1"
    assert not (workdir / "never.txt").exists()


def test_runner_kills_background_jobs(tmp_path: Path, docs_imagefolder: Path) -> None:
    page = parse_page(
        _write(
            tmp_path,
            "<!-- docs-test -->\n```bash\n(sleep 300; touch late.txt) &\necho $! > bg.pid\n```\n",
        )
    )
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    result = run_page(page, workdir, page_env(docs_imagefolder, tmp_path), timeout=60)
    assert result.returncode == 0, result.report(page)
    pid = int((workdir / "bg.pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


@pytest.mark.parametrize(
    "text, message",
    [
        ("<!-- docs-test -->\n```python\nprint(1)\n```\n", "must be right before"),
        ("<!-- docs-test -->\n\n```bash\necho\n```\n", "must be right before"),
        ("<!-- docs-test -->\n```bash\necho\n", "never closed"),
        ("<!-- docs-sub: gone => x -->\n<!-- docs-test -->\n```bash\necho\n```\n", "matches no"),
    ],
)
def test_runner_refuses_malformed_pages(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DocsFormatError, match=message):
        parse_page(_write(tmp_path, text))
