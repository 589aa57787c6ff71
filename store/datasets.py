"""Image datasets addressed by a spec string: the registry ``DATASETS`` and ``open_dataset``.

Specs (``open_dataset``): ``mnist5k``, ``digits``, ``synthetic`` / ``synthetic:N``,
``imagefolder:PATH``. Each dataset has a fixed order, string keys, int64 labels (-1 = none) and a
content hash per sample, so a manifest built from it identifies the data exactly. The base class
and the split rule live in :mod:`store.dataset_base` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable

from store.builtin import Digits, Mnist5k, Synthetic
from store.dataset_base import SPLITS, ImageDataset, array_sha256, split_indices
from store.errors import DatasetError
from store.imagefolder import ImageFolder

__all__ = [
    "DATASETS",
    "SPLITS",
    "ImageDataset",
    "array_sha256",
    "open_dataset",
    "split_indices",
]


def _open_mnist5k(arg: str | None) -> ImageDataset:
    if arg:
        raise DatasetError("mnist5k takes no argument")
    return Mnist5k()


def _open_digits(arg: str | None) -> ImageDataset:
    if arg:
        raise DatasetError("digits takes no argument")
    return Digits()


def _open_synthetic(arg: str | None) -> ImageDataset:
    if arg is None or arg == "":
        return Synthetic()
    try:
        n = int(arg)
    except ValueError as exc:
        raise DatasetError(f"synthetic:N needs an integer N, got {arg!r}") from exc
    return Synthetic(n)


def _open_imagefolder(arg: str | None) -> ImageDataset:
    if not arg:
        raise DatasetError("imagefolder needs a path: imagefolder:PATH")
    return ImageFolder(arg)


DATASETS: dict[str, Callable[[str | None], ImageDataset]] = {
    "mnist5k": _open_mnist5k,
    "digits": _open_digits,
    "synthetic": _open_synthetic,
    "imagefolder": _open_imagefolder,
}


def open_dataset(spec: str) -> ImageDataset:
    """Open the dataset named by ``spec`` (``name`` or ``name:ARG``); unknown names raise
    DatasetError."""
    name, sep, arg = spec.partition(":")
    if name not in DATASETS:
        valid = "mnist5k, digits, synthetic[:N], imagefolder:PATH"
        raise DatasetError(f"unknown dataset {spec!r}; valid: {valid}")
    return DATASETS[name](arg if sep else None)
