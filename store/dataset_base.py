"""What every dataset is: :class:`ImageDataset` (keys, labels, content hashes, a fixed order) and
the one split rule all datasets share.

The dataset modules (built-ins, ImageFolder, ...) import this base; the registry in
:mod:`store.datasets` imports them, so no dataset imports the registry.
"""

from __future__ import annotations

import hashlib

import numpy as np

from store.errors import DatasetError, DecodeError

__all__ = ["SPLITS", "ImageDataset", "array_sha256", "split_indices"]

SPLITS = ("all", "train", "test")


def split_indices(n: int, split: str) -> np.ndarray:
    """Indices (int64) of ``split`` in a dataset of ``n`` samples, in permutation order.

    The rule (contract, DESIGN §12): ``perm = RandomState(0).permutation(n)``; train =
    ``perm[:int(0.8n)]``, test = ``perm[int(0.8n):]``; ``all`` = ``arange(n)`` in dataset order.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if split == "all":
        return np.arange(n, dtype=np.int64)
    perm = np.random.RandomState(0).permutation(n).astype(np.int64)
    cut = int(0.8 * n)
    return perm[:cut] if split == "train" else perm[cut:]


class ImageDataset:
    """Base class: an indexed collection of RGB images with keys, labels and content hashes.

    Subclasses set ``spec``, ``keys`` (N), ``labels`` (N,) int64, ``classes`` and implement
    :meth:`load_with_hash`.
    """

    spec: str
    keys: list[str]
    labels: np.ndarray
    classes: list[str]
    probe_in_pool: bool = False
    """True when :meth:`probe` reads files (worth a process pool for a manifest); in-memory
    datasets probe in the calling process."""

    def __len__(self) -> int:
        """Number of samples N."""
        return len(self.keys)

    def load_with_hash(self, i: int) -> tuple[np.ndarray, str]:
        """Decode sample ``i`` once and hash its source: ((H, W, 3) uint8, sha256 hex).

        Raises ``DecodeError`` when the sample cannot be decoded (the hash is then unavailable;
        use :meth:`sha256`).
        """
        raise NotImplementedError

    def probe(self, i: int) -> tuple[int, int, str, str | None]:
        """What a manifest records of sample ``i``: ``(height, width, sha256 hex, error)``.

        ``error`` is None for a usable sample, else the reason it is not (height and width are
        then 0; sha256 is "" when the source cannot be read at all). Never raises for a bad
        sample. This default decodes the sample; datasets of encoded files override it to read
        only the header (:class:`store.imagefolder.ImageFolder`).
        """
        try:
            img, digest = self.load_with_hash(i)
        except DecodeError as exc:
            try:
                digest = self.sha256(i)
            except DecodeError:
                digest = ""
            return 0, 0, digest, exc.reason
        return int(img.shape[0]), int(img.shape[1]), digest, None

    def load(self, i: int) -> np.ndarray:
        """Sample ``i`` as an (H, W, 3) uint8 RGB array; raises ``DecodeError`` if undecodable."""
        return self.load_with_hash(i)[0]

    def sha256(self, i: int) -> str:
        """Hex sha256 of sample ``i``'s source bytes (built-ins: of its (H, W, 3) uint8 pixel
        bytes)."""
        return self.load_with_hash(i)[1]

    def split_indices(self, split: str) -> np.ndarray:
        """Dataset indices (int64) of ``split`` in {"all", "train", "test"}; see
        :func:`split_indices`."""
        return split_indices(len(self), split)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, n={len(self)})"


def array_sha256(arr: np.ndarray) -> str:
    """Hex sha256 of a C-contiguous array's raw bytes."""
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
