"""Image datasets addressed by a spec string, and the one split rule every dataset shares.

Specs (``open_dataset``): ``mnist5k``, ``digits``, ``synthetic`` / ``synthetic:N``,
``imagefolder:PATH`` (PATH local or an fsspec URL such as ``s3://bucket/prefix``). Each dataset
has a fixed order, string keys, int64 labels (-1 = none) and a
content hash per sample, so a manifest built from it identifies the data exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from store.errors import DatasetError

__all__ = ["DATASETS", "SPLITS", "ImageDataset", "open_dataset", "split_indices"]

SPLITS = ("all", "train", "test")


def split_indices(n: int, split: str) -> np.ndarray:
    """Indices (int64) of ``split`` in a dataset of ``n`` samples, in permutation order.

    The rule (contract, DESIGN §12): ``perm = RandomState(0).permutation(n)``; train =
    ``perm[:int(0.8n)]``,
    test = ``perm[int(0.8n):]``; ``all`` = ``arange(n)`` in dataset order.
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
    ``load_with_hash``.
    """

    spec: str
    keys: list[str]
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        """Number of samples N."""
        return len(self.keys)

    def load_with_hash(self, i: int) -> tuple[np.ndarray, str]:
        """Decode sample ``i`` once and hash its source: ((H, W, 3) uint8, sha256 hex).

        Raises ``DecodeError`` when the sample cannot be decoded (the hash is then unavailable;
        use :meth:`sha256`).
        """
        raise NotImplementedError

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


def _open_mnist5k(arg: str | None, storage_options: StorageOptions = None) -> ImageDataset:
    from store.builtin import Mnist5k

    if arg:
        raise DatasetError("mnist5k takes no argument")
    return Mnist5k()


def _open_digits(arg: str | None, storage_options: StorageOptions = None) -> ImageDataset:
    from store.builtin import Digits

    if arg:
        raise DatasetError("digits takes no argument")
    return Digits()


def _open_synthetic(arg: str | None, storage_options: StorageOptions = None) -> ImageDataset:
    from store.builtin import Synthetic

    if arg is None or arg == "":
        return Synthetic()
    try:
        n = int(arg)
    except ValueError as exc:
        raise DatasetError(f"synthetic:N needs an integer N, got {arg!r}") from exc
    return Synthetic(n)


def _open_imagefolder(arg: str | None, storage_options: StorageOptions = None) -> ImageDataset:
    from store.imagefolder import ImageFolder

    if not arg:
        raise DatasetError("imagefolder needs a path: imagefolder:PATH")
    return ImageFolder(arg, storage_options=storage_options)


StorageOptions = Mapping[str, Any] | None
"""fsspec options for a dataset at a URL (None: from the environment; see ``store.remote``)."""

DATASETS: dict[str, Callable[[str | None, StorageOptions], ImageDataset]] = {
    "mnist5k": _open_mnist5k,
    "digits": _open_digits,
    "synthetic": _open_synthetic,
    "imagefolder": _open_imagefolder,
}


def open_dataset(spec: str, storage_options: StorageOptions = None) -> ImageDataset:
    """Open the dataset named by ``spec`` (``name`` or ``name:ARG``); unknown names raise
    DatasetError. ``storage_options`` reach a reader whose ARG is an fsspec URL."""
    name, sep, arg = spec.partition(":")
    if name not in DATASETS:
        valid = "mnist5k, digits, synthetic[:N], imagefolder:PATH"
        raise DatasetError(f"unknown dataset {spec!r}; valid: {valid}")
    return DATASETS[name](arg if sep else None, storage_options)
