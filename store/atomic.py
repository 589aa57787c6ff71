"""Atomic file writes: a file is either its old self or completely the new one, never truncated.

The one helper every package uses (checkpoints, training state, feature caches, results, ledgers):
write a temporary file in the target's directory, flush and fsync it, ``os.replace`` it over the
target, then fsync the directory so the rename itself survives a power cut (zarr's
``storage/_local.py`` does the same). On an error the temporary file is removed and the target is
untouched. Local paths only (object stores have their own atomic puts).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync directory ``path`` (makes a rename inside it durable); a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Binary file handle whose content replaces ``path`` atomically when the block exits cleanly.

    The parent directory is created if missing. The temporary file ``.NAME.*.tmp`` lives beside
    ``path`` (same filesystem, so the rename is atomic); on an exception it is deleted and
    ``path`` keeps its previous content (or stays absent).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (see :func:`atomic_write`)."""
    with atomic_write(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace ``path`` with ``text`` encoded as UTF-8 (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))
