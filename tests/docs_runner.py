"""Run the shell blocks a documentation page marks as runnable (the docs-test convention).

A page marks a block by putting the line ``<!-- docs-test -->`` right before its ```` ```bash ````
fence, and declares literal substitutions at its top as ``<!-- docs-sub: FROM => TO -->`` lines
(FROM is replaced by TO in every runnable block before it runs, in the order declared), so a guide
shows real sizes and its test runs tiny ones. The blocks of a page run in order in ONE
``bash -euo pipefail`` process (a variable or a background server of one block is there for the
next), in a fresh directory, with ``disco`` on ``PATH`` and ``$DOCS_IMAGEFOLDER``,
``$DOCS_TEACHER`` and ``$DOCS_PY`` set, and ``$DOCS_PORT``, a free loopback TCP port for a page that
starts a server. The process gets its own session, which is killed when the
page ends, so a server a page starts in the background never outlives it.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TEACHER = ROOT / "student_trainer" / "assets" / "demo_teacher.pt"

MARK = "<!-- docs-test -->"
_SUB = re.compile(r"^<!-- docs-sub: (?P<src>.+?) => (?P<dst>.*?) -->\s*$")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>`{3,}|~{3,})\s*(?P<lang>[\w-]*)")


class DocsFormatError(ValueError):
    """A page breaks the docs-test convention (a marker not followed by a bash fence, ...)."""


@dataclass(frozen=True)
class Block:
    """One runnable block: where it starts on the page (1-based line), its text as run (after
    the substitutions) and as the page shows it."""

    line: int
    text: str
    shown: str = ""


@dataclass
class Page:
    """A page's runnable blocks, with its substitutions already applied."""

    path: Path
    blocks: list[Block] = field(default_factory=list)
    subs: list[tuple[str, str]] = field(default_factory=list)


def parse_page(path: Path) -> Page:
    """The runnable blocks of a markdown page, substitutions applied, in page order.

    Raises :class:`DocsFormatError` (naming the line) for a marker that is not right before a
    ``bash`` fence, an unclosed fence, or a substitution whose FROM text no block contains (a
    stale substitution would silently run the real size).
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    page = Page(path)
    for line in lines:
        m = _SUB.match(line.strip())
        if m:
            page.subs.append((m["src"], m["dst"]))
    raw: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != MARK:
            i += 1
            continue
        fence = _FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if fence is None or fence["lang"] not in ("bash", "sh", "shell"):
            raise DocsFormatError(f"{path}:{i + 1}: {MARK} must be right before a ```bash fence")
        indent, ticks = fence["indent"], fence["ticks"]
        body: list[str] = []
        j = i + 2
        while j < len(lines) and not lines[j].strip().startswith(ticks):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise DocsFormatError(f"{path}:{i + 2}: the runnable block is never closed")
        raw.append(Block(i + 3, "\n".join(body), "\n".join(body)))
        i = j + 1
    for src, _ in page.subs:
        if not any(src in b.text for b in raw):
            raise DocsFormatError(f"{path}: substitution {src!r} matches no runnable block")
    for block in raw:
        text = block.text
        for src, dst in page.subs:
            text = text.replace(src, dst)
        page.blocks.append(Block(block.line, text, block.text))
    return page


def shell_commands(text: str) -> list[str]:
    """The commands of a shell snippet: continuation lines joined, comments and blanks dropped,
    runs of spaces folded (``disco train \\ --epochs 1`` -> ``disco train --epochs 1``)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        if line.strip():
            commands.append(" ".join(line.split()))
    return commands


def fenced_blocks(path: Path, lang: str = "bash") -> list[str]:
    """The text of every ```` ```lang ```` fenced block of a markdown file, runnable or not."""
    blocks: list[str] = []
    body: list[str] = []
    inside = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if not inside and line.strip() == f"```{lang}":
            inside, body = True, []
        elif inside and line.strip().startswith("```"):
            inside = False
            blocks.append("\n".join(body))
        elif inside:
            body.append(line)
    return blocks


def runnable_pages(root: Path = DOCS) -> list[Path]:
    """Every markdown page under ``root`` with at least one ``<!-- docs-test -->`` marker."""
    return sorted(
        p
        for p in root.rglob("*.md")
        if any(ln.strip() == MARK for ln in p.read_text().splitlines())
    )


def make_imagefolder(root: Path, classes: int = 2, per_class: int = 12, size: int = 32) -> Path:
    """A class-sorted ImageFolder of generated RGB PNGs: ``root/class_<c>/img_<k>.png``.

    Class c draws stripes of one orientation (horizontal for 0, vertical for 1, ...) in random
    colours over noise, so a learned model can tell them apart. Deterministic (seeded).
    """
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            img = rng.integers(0, 64, size=(size, size, 3), dtype=np.uint8)
            period = int(rng.integers(4, 9))
            stripes = (np.arange(size) // (period // 2)) % 2 == 0
            mask = stripes[:, None] if c % 2 == 0 else stripes[None, :]
            mask = np.broadcast_to(mask, (size, size))
            img[mask] = rng.integers(128, 256, size=3, dtype=np.uint8)
            Image.fromarray(img).save(folder / f"img_{k:02d}.png")
    return root


@dataclass(frozen=True)
class PageResult:
    """What running a page gave: exit code, the block that ran last (None: all passed), output."""

    returncode: int
    failed_block: Block | None
    output: str
    seconds: float

    def report(self, page: Page) -> str:
        """A failure message: the page, the block (its line and text) and the output's tail."""
        where = f"{page.path}"
        if self.failed_block is not None:
            where += f", block at line {self.failed_block.line}"
        tail = self.output[-6000:]
        block = self.failed_block.text if self.failed_block else ""
        return (
            f"{where} failed with exit code {self.returncode} after {self.seconds:.0f} s\n"
            f"--- block ---\n{block}\n--- output (tail) ---\n{tail}"
        )


def run_page(page: Page, workdir: Path, env: dict[str, str], timeout: float = 600) -> PageResult:
    """Run the page's blocks in order in one ``bash -euo pipefail`` in ``workdir``.

    Each block first writes its number to a progress file, so a failure names the block that
    failed. Output (stdout and stderr interleaved) goes to a file, not a pipe, so a server left
    running in the background cannot hold the run open; the whole session is killed at the end.
    """
    progress = workdir / ".docs-block"
    parts = ["set -euo pipefail"]
    for n, block in enumerate(page.blocks):
        parts.append(f"echo {n} > {shlex.quote(str(progress))}")
        parts.append(f"# --- block {n}, line {block.line} ---")
        parts.append(block.text)
    parts.append(f"echo done > {shlex.quote(str(progress))}")
    script = workdir / ".docs-page.sh"
    script.write_text("\n".join(parts) + "\n")
    log = workdir / ".docs-output.log"
    start = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", str(script)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = 124
        finally:
            _kill_session(proc.pid)
            proc.wait()
    seconds = time.monotonic() - start
    state = progress.read_text().strip() if progress.exists() else "0"
    failed = None
    if returncode != 0 or state != "done":
        failed = page.blocks[int(state)] if state.isdigit() else None
        returncode = returncode or 1
    output = log.read_text(errors="replace")
    return PageResult(returncode, failed, output, seconds)


def _kill_session(pgid: int, wait_s: float = 10.0) -> None:
    """SIGKILL every process of the group ``pgid`` and wait until none is left."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def page_env(imagefolder: Path, home: Path) -> dict[str, str]:
    """The environment a page runs in: the venv's ``disco`` first on PATH and the DOCS_* names."""
    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCO_")}
    env.update(
        PATH=bindir + os.pathsep + env.get("PATH", ""),
        DOCS_IMAGEFOLDER=str(imagefolder),
        DOCS_TEACHER=str(TEACHER),
        DOCS_PY=sys.executable,
        DOCS_PORT=str(free_port()),
        # Feature caches and the like stay inside the test's folders.
        DISCO_FEATURE_CACHE=str(home / "feature-cache"),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        NO_COLOR="1",
        COLUMNS="120",
    )
    return env
