"""A directory of image files: class subfolders give labels, a flat folder gives label -1."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from store.dataset_base import ImageDataset
from store.decode import decode_image
from store.errors import DatasetError, DecodeError

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


class ImageFolder(ImageDataset):
    """Images under ``root``. With class subfolders (``root/<class>/**/<file>``) labels are the
    sorted class index and files directly in ``root`` are ignored; without subfolders every file
    gets label -1.

    Keys are POSIX paths relative to ``root``, sorted. Files are decoded lazily; a corrupt file
    raises ``DecodeError`` naming its key on ``load`` (a manifest records it and masks the row).
    """

    def __init__(self, root: str | Path, max_pixels: int | None = None) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"imagefolder: {str(self.root)!r} is not a directory")
        self.spec = f"imagefolder:{root}"
        self.max_pixels = max_pixels
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

    def _read(self, i: int) -> bytes:
        key = self.keys[i]
        try:
            return (self.root / key).read_bytes()
        except OSError as exc:
            raise DecodeError(key, f"cannot read file: {exc.strerror or exc}") from exc

    def sha256(self, i: int) -> str:
        """Hex sha256 of file ``i``'s bytes (also for files that do not decode)."""
        return hashlib.sha256(self._read(i)).hexdigest()

    def load_with_hash(self, i: int) -> tuple[np.ndarray, str]:
        """Read file ``i`` once: ((H, W, 3) uint8, sha256 hex of the file bytes)."""
        data = self._read(i)
        return decode_image(data, self.keys[i], self.max_pixels), hashlib.sha256(data).hexdigest()
