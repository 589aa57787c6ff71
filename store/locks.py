"""Write locks of a store: per shard, and store-wide for resizes.

Local-path stores lock across processes with ``fcntl.flock`` on small files under
``<store>/.locks/`` (created lazily by the first writer; zarr never lists a directory without a
``zarr.json``, so neither zarr nor ``disco store check`` sees them):

- ``.locks/store.lock``: every writer holds it **shared** for the length of one write call;
  ``disco store append`` holds it **exclusive** while it resizes the arrays, so no shard write
  runs during a resize;
- ``.locks/shard-00012.lock``: **exclusive** around one read-modify-write of shard 12 (all its
  arrays: embeddings, features, written).

Inside one process a ``threading.Lock`` per (store, shard) is taken first, so threads queue
cheaply. ``file://`` URLs lock like local paths. Object-storage URLs (``s3://``, ``gs://``...) and
``memory://`` get only the in-process locks: object storage has no lock, so a writable open of a
remote store needs the user's single-writer promise (``store.remote.single_writer_acknowledged``)
and ``disco precompute`` ranks own whole shards.
Lock order, always: store lock, then one shard lock; never a store lock while a shard lock is held.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from store.errors import StoreError
from store.remote import is_remote

__all__ = ["LOCK_DIR", "StoreBusyError", "is_local", "local_path", "shard_lock", "store_lock"]

LOCK_DIR = ".locks"
"""Directory of lock files inside a local store."""

_THREAD_LOCKS: dict[tuple[str, int | None], threading.Lock] = {}
_GUARD = threading.Lock()


class StoreBusyError(StoreError, TimeoutError):
    """Another process holds a lock of the store for longer than the caller will wait."""


def is_local(url: str) -> bool:
    """True for a local path or ``file://`` URL (cross-process locks), False for other fsspec
    URLs (in-process only)."""
    return not is_remote(url)


def local_path(url: str) -> str:
    """The filesystem path of a local store location (a path, or a ``file://`` URL)."""
    return url[len("file://") :] if url.startswith("file://") else url


def _key(url: str) -> str:
    return os.path.realpath(local_path(url)) if is_local(url) else url


def _thread_lock(url: str, shard: int | None) -> threading.Lock:
    key = (_key(url), shard)
    with _GUARD:
        lock = _THREAD_LOCKS.get(key)
        if lock is None:
            lock = _THREAD_LOCKS[key] = threading.Lock()
        return lock


def _lock_file(url: str, name: str) -> int:
    folder = Path(local_path(url)) / LOCK_DIR
    try:
        folder.mkdir(exist_ok=True)
        return os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise StoreError(
            f"cannot create lock file {str(folder / name)!r}: {exc.strerror or exc}"
        ) from exc


@contextlib.contextmanager
def _flock(url: str, name: str, flags: int, timeout: float | None) -> Iterator[None]:
    fd = _lock_file(url, name)
    try:
        if timeout is None:
            fcntl.flock(fd, flags)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, flags | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        raise StoreBusyError(
                            f"store {url!r} is busy: another process holds {LOCK_DIR}/{name} "
                            f"after {timeout:.0f} s (a writer or an append is running)"
                        ) from None
                    time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def shard_lock(url: str, shard: int) -> Iterator[None]:
    """Hold shard ``shard`` of the store at ``url`` for one read-modify-write: the store lock
    shared (no resize meanwhile), then the shard's lock exclusive (threads, then processes)."""
    with _thread_lock(url, shard):
        if not is_local(url):
            yield
            return
        with (
            _flock(url, "store.lock", fcntl.LOCK_SH, None),
            _flock(url, f"shard-{shard:05d}.lock", fcntl.LOCK_EX, None),
        ):
            yield


@contextlib.contextmanager
def store_lock(url: str, timeout: float | None = 60.0) -> Iterator[None]:
    """Hold the whole store exclusively (no shard writer runs meanwhile), e.g. for a resize.

    Waits up to ``timeout`` s (None: forever) for running writes to finish, then raises
    :class:`StoreBusyError`. In-process only for fsspec URLs.
    """
    with _thread_lock(url, None):
        if not is_local(url):
            yield
            return
        with _flock(url, "store.lock", fcntl.LOCK_EX, timeout):
            yield
