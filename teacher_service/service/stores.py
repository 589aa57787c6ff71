"""Stores under the configured root: strict name resolution and serialised write-through.

A store name is one path component (letters, digits, ``.``, ``_``, ``-``; not starting with a
dot). It is joined to the root and the resolved path must stay inside the resolved root, so
neither ``..``, absolute paths, separators nor symlinks lead a request out of it.

The root may be an object-storage URL (``s3://bucket/prefix``; options from ``store.remote``):
a store is then ``ROOT/NAME`` with a ``zarr.json`` object. Object storage has no locks, so the
service writes there only when started with ``--single-writer`` (it must be the stores' only
writer while it runs).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import torch

from store.embedding_store import EmbeddingStore
from store.remote import is_remote, url_to_fs
from teacher_service.precompute import record_renderer

__all__ = ["InvalidStoreNameError", "StoreRegistry", "UnknownStoreError", "check_store_name"]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")


class InvalidStoreNameError(ValueError):
    """A store name that is not one plain path component (answer 400)."""


class UnknownStoreError(LookupError):
    """No store of that name under the root, or no root configured (answer 404)."""


def check_store_name(name: str) -> str:
    """Return ``name`` if it is a valid store name, else raise :class:`InvalidStoreNameError`."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None or ".." in name:
        raise InvalidStoreNameError(
            f"invalid store name {name[:64]!r}: use one path component of letters, digits, "
            "'.', '_' or '-' (no separators, no '..', not starting with '.')"
        )
    return name


class StoreRegistry:
    """Resolve store names under ``root`` and hand out one shared writer per store.

    Writers are opened once and reused, with one lock per store, so the service is the single
    writer of each store and write-through calls for one shard run one after another.
    """

    def __init__(self, root: Path | str | None) -> None:
        self.url: str | None = None
        """The root as an object-storage URL (None: a local root or none)."""
        self.root: Path | None = None
        if root is not None and is_remote(str(root)):
            self.url = str(root).rstrip("/")
        elif root is not None:
            self.root = Path(root).resolve()
        self._writers: dict[str, EmbeddingStore] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._recorded: set[tuple[str, str, str]] = set()

    def path(self, name: str) -> str:
        """The location of store ``name`` (a directory, or a URL under a remote root); raises
        Invalid (bad name) or Unknown (missing)."""
        check_store_name(name)
        if self.url is not None:
            fs, root = url_to_fs(self.url)
            meta = f"{root}/{name}/zarr.json"
            if not fs.exists(meta):
                fs.invalidate_cache(f"{root}/{name}")  # listed before another process made it?
                if not fs.exists(meta):
                    raise UnknownStoreError(f"no store named {name!r}")
            return f"{self.url}/{name}"
        if self.root is None:
            raise UnknownStoreError("this service has no store root configured")
        path = (self.root / name).resolve()
        if path.parent != self.root:
            raise InvalidStoreNameError(f"store name {name!r} resolves outside the store root")
        if not (path / "zarr.json").is_file():
            raise UnknownStoreError(f"no store named {name!r}")
        return str(path)

    def names(self) -> list[str]:
        """Sorted names of the zarr groups directly under the root (empty without a root)."""
        if self.url is not None:
            fs, root = url_to_fs(self.url)
            fs.invalidate_cache(root)  # another process may have created a store since
            tops = fs.glob(f"{root.rstrip('/')}/*/zarr.json")
            return sorted(
                n for n in (str(p).rstrip("/").split("/")[-2] for p in tops) if _NAME.fullmatch(n)
            )
        if self.root is None:
            return []
        found = []
        for child in self.root.iterdir():
            if _NAME.fullmatch(child.name) and (child / "zarr.json").is_file():
                found.append(child.name)
        return sorted(found)

    def open(self, name: str) -> EmbeddingStore:
        """Open store ``name`` read-only (a fresh view of its current attrs)."""
        return EmbeddingStore.open(self.path(name), mode="r")

    def lock(self, name: str) -> threading.Lock:
        """The lock that serialises writes to store ``name``."""
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def writer(self, name: str) -> EmbeddingStore:
        """The shared writable handle of store ``name`` (call with :meth:`lock` held)."""
        path = self.path(name)
        with self._guard:
            handle = self._writers.get(name)
        if handle is None:
            handle = EmbeddingStore.open(path, mode="r+")
            with self._guard:
                self._writers[name] = handle
        return handle

    def record_renderer(self, name: str, renderer: str, device: torch.device | str) -> None:
        """Record in store ``name``'s ``renderers`` attr that ``renderer`` on ``device``'s type
        produces targets there (precompute's convention:
        :func:`teacher_service.precompute.record_renderer`); once per store and process."""
        key = (name, renderer, torch.device(device).type)
        with self._guard:
            if key in self._recorded:
                return
        with self.lock(name):
            record_renderer(self.writer(name), renderer, device)
        with self._guard:
            self._recorded.add(key)

    def forget(self, name: str) -> None:
        """Drop the cached writer of ``name`` (after attrs changed on disk)."""
        with self._guard:
            self._writers.pop(name, None)
