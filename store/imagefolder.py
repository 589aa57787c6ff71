"""A directory of image files: class subfolders give labels, a flat folder gives label -1.

The directory is a local path or an fsspec URL (``s3://bucket/prefix``, ``gs://``...; options from
``store.remote``): one recursive listing at open, one whole-object read per sample. Keys are the
same relative paths either way, so a copy moved between disk and a bucket keeps its manifest."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from store.dataset_base import ImageDataset
from store.decode import decode_image, probe_bytes
from store.errors import DatasetError, DecodeError
from store.remote import is_remote, storage_errors, storage_options_for, url_to_fs

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder"]

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
)  # fmt: skip


def _image_files(root: Path) -> list[str]:
    """Relative POSIX paths of files under ``root`` with an image extension, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                out.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(out)


def _is_image(rel: str) -> bool:
    """The local walk's rules: an image extension, no hidden file name, no hidden class folder."""
    parts = rel.split("/")
    return (
        rel.lower().endswith(IMAGE_EXTENSIONS)
        and not parts[-1].startswith(".")
        and not parts[0].startswith(".")
    )


def _remote_files(url: str, storage_options: Mapping[str, Any]) -> list[str]:
    """Relative POSIX paths of the image objects under ``url`` (one recursive listing), sorted."""
    fs, root = url_to_fs(url, storage_options)
    root = root.rstrip("/")
    with storage_errors(url, "imagefolder: cannot list"):
        fs.invalidate_cache(root)  # fsspec caches listings per process: see what is there now
        found = fs.find(root, detail=False)
    rels = (str(p)[len(root) :].lstrip("/") for p in found)
    return sorted(r for r in rels if _is_image(r))


class ImageFolder(ImageDataset):
    """Images under ``root``. With class subfolders (``root/<class>/**/<file>``) labels are the
    sorted class index and files directly in ``root`` are ignored; without subfolders every file
    gets label -1.

    Keys are POSIX paths relative to ``root``, sorted. Files are decoded lazily; a corrupt file
    raises ``DecodeError`` naming its key on ``load`` (a manifest records it and masks the row).
    """

    probe_in_pool = True

    def __init__(
        self,
        root: str | Path,
        max_pixels: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = f"imagefolder:{root}"
        self.max_pixels = max_pixels
        if is_remote(str(root)):
            self.url: str | None = str(root).rstrip("/")
            # Resolved now (env or caller), so pickled copies in workers read with the same ones.
            self.storage_options = storage_options_for(self.url, storage_options)
            self._init_remote()
            return
        self.url = None
        self.storage_options = {}
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"imagefolder: {str(self.root)!r} is not a directory")
        subdirs = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        keys: list[str] = []
        labels: list[int] = []
        if subdirs:
            classes: list[str] = []
            for name in subdirs:
                files = _image_files(self.root / name)
                if not files:
                    continue
                classes.append(name)
                keys.extend(f"{name}/{f}" for f in files)
                labels.extend([len(classes) - 1] * len(files))
            self.classes = classes
        else:
            keys = _image_files(self.root)
            labels = [-1] * len(keys)
            self.classes = []
        if not keys:
            raise DatasetError(f"imagefolder: no image files under {str(self.root)!r}")
        self.keys = keys
        self.labels = np.asarray(labels, dtype=np.int64)

    def _init_remote(self) -> None:
        """Keys, labels and classes from one listing of the object prefix (the local rules: class
        folders give labels and top-level files are ignored; a flat prefix gives label -1)."""
        assert self.url is not None
        files = _remote_files(self.url, self.storage_options)
        # Sorted as the local walk sorts: by class folder, then path inside it.
        nested = sorted((f for f in files if "/" in f), key=lambda f: tuple(f.split("/", 1)))
        if nested:
            classes = sorted({f.split("/", 1)[0] for f in nested})
            index = {c: k for k, c in enumerate(classes)}
            self.keys = nested
            self.labels = np.array([index[f.split("/", 1)[0]] for f in nested], dtype=np.int64)
            self.classes = classes
        else:
            self.keys = files
            self.labels = np.full(len(files), -1, dtype=np.int64)
            self.classes = []
        if not self.keys:
            raise DatasetError(f"imagefolder: no image files under {self.url!r}")

    def _read(self, i: int) -> bytes:
        key = self.keys[i]
        if self.url is not None:
            url = f"{self.url}/{key}"
            fs, path = url_to_fs(url, self.storage_options)
            try:
                with storage_errors(url, "cannot read"):  # no endpoint etc.: stop, do not mask
                    return bytes(fs.cat_file(path))
            except FileNotFoundError as exc:  # gone since the listing: like a local file
                raise DecodeError(key, f"cannot read object: {exc}") from exc
        try:
            return (self.root / key).read_bytes()
        except OSError as exc:
            raise DecodeError(key, f"cannot read file: {exc.strerror or exc}") from exc

    def sha256(self, i: int) -> str:
        """Hex sha256 of file ``i``'s bytes (also for files that do not decode)."""
        return hashlib.sha256(self._read(i)).hexdigest()

    def probe(self, i: int) -> tuple[int, int, str, str | None]:
        """``(height, width, sha256 hex, error)`` of file ``i`` from one read of its bytes: the
        hash of all bytes, the size from the image header (no pixel decode; see
        :func:`store.decode.image_size`). A file whose pixel data is damaged behind a good
        header passes here; the precompute job records it when it fails to decode."""
        return probe_bytes(lambda: self._read(i), self.keys[i], self.max_pixels)

    def load_with_hash(self, i: int) -> tuple[np.ndarray, str]:
        """Read file ``i`` once: ((H, W, 3) uint8, sha256 hex of the file bytes)."""
        data = self._read(i)
        return decode_image(data, self.keys[i], self.max_pixels), hashlib.sha256(data).hexdigest()
