"""Image datasets addressed by a spec string, and the one split rule every dataset shares.

Specs (``open_dataset``, registry ``DATASETS``): ``mnist5k``, ``digits``, ``synthetic`` /
``synthetic:N``, ``imagefolder:PATH``, ``hfds:PATH``, ``wds:PATTERN``, ``parquet:PATH``,
``py:MODULE:FUNCTION`` (``store.readers``), each with ``?key=value`` options. Each dataset has a
fixed order, string keys, int64 labels (-1 = none) and a content hash per sample, so a manifest
built from it identifies the data exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from store.errors import DatasetError
from store.readers.options import (
    LABELS_OPTION,
    check_options,
    read_label_file,
    relabel,
    split_options,
)

__all__ = [
    "DATASETS",
    "DATASET_HELP",
    "SPLITS",
    "DatasetSource",
    "ImageDataset",
    "open_dataset",
    "split_indices",
    "valid_datasets",
]

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


Opener = Callable[[str, "str | None", dict[str, str], "Mapping[str, Any] | None"], ImageDataset]
"""``opener(spec, arg, options, storage_options)``: the dataset of one spec prefix."""


@dataclass(frozen=True)
class DatasetSource:
    """One spec prefix of the registry: how it is written and how it is opened."""

    usage: str
    """The spelling shown in help and errors, e.g. ``imagefolder:PATH``."""
    opener: Opener
    """Builds the dataset from (full spec, text after the first ``:`` or None, options, storage
    options); raises DatasetError for bad input."""


def _no_options(spec: str, options: Mapping[str, str]) -> None:
    check_options(spec, options, ())


def _open_mnist5k(
    spec: str, arg: str | None, options: dict[str, str], so: Mapping[str, Any] | None
) -> ImageDataset:
    from store.builtin import Mnist5k

    _no_options(spec, options)
    if arg:
        raise DatasetError("mnist5k takes no argument")
    return Mnist5k()


def _open_digits(
    spec: str, arg: str | None, options: dict[str, str], so: Mapping[str, Any] | None
) -> ImageDataset:
    from store.builtin import Digits

    _no_options(spec, options)
    if arg:
        raise DatasetError("digits takes no argument")
    return Digits()


def _open_synthetic(
    spec: str, arg: str | None, options: dict[str, str], so: Mapping[str, Any] | None
) -> ImageDataset:
    from store.builtin import Synthetic

    _no_options(spec, options)
    if arg is None or arg == "":
        return Synthetic()
    try:
        n = int(arg)
    except ValueError as exc:
        raise DatasetError(f"synthetic:N needs an integer N, got {arg!r}") from exc
    return Synthetic(n)


def _open_imagefolder(
    spec: str, arg: str | None, options: dict[str, str], so: Mapping[str, Any] | None
) -> ImageDataset:
    from store.imagefolder import ImageFolder

    _no_options(spec, options)
    if not arg:
        raise DatasetError("imagefolder needs a path: imagefolder:PATH")
    return ImageFolder(arg)


def _open_reader(name: str) -> Opener:
    """The opener of ``store.readers``' ``open_<name>`` (imported on use: pyarrow, fsspec)."""

    def opener(
        spec: str, arg: str | None, options: dict[str, str], so: Mapping[str, Any] | None
    ) -> ImageDataset:
        import store.readers

        result: ImageDataset = getattr(store.readers, f"open_{name}")(spec, arg, options, so)
        return result

    return opener


DATASETS: dict[str, DatasetSource] = {
    "mnist5k": DatasetSource("mnist5k", _open_mnist5k),
    "digits": DatasetSource("digits", _open_digits),
    "synthetic": DatasetSource("synthetic[:N]", _open_synthetic),
    "imagefolder": DatasetSource("imagefolder:PATH", _open_imagefolder),
    "hfds": DatasetSource("hfds:PATH", _open_reader("hfds")),
    "wds": DatasetSource("wds:PATTERN", _open_reader("wds")),
    "parquet": DatasetSource("parquet:PATH", _open_reader("parquet")),
    "py": DatasetSource("py:MODULE:FUNCTION", _open_reader("python")),
}


def valid_datasets() -> str:
    """The registry's spellings, comma-separated (for help texts and errors)."""
    return ", ".join(source.usage for source in DATASETS.values())


DATASET_HELP = (
    f"Dataset spec: {valid_datasets()}; reader options after '?' (hfds:PATH?image=img&label=y), "
    f"any spec ?{LABELS_OPTION}=FILE.csv for key,label rows."
)
"""Help text of every ``--dataset`` option (derived from the registry)."""


def open_dataset(spec: str, storage_options: Mapping[str, Any] | None = None) -> ImageDataset:
    """Open the dataset named by ``spec``: ``name``, ``name:ARG``, each with ``?key=value`` options.

    The option ``labels=FILE`` (a CSV/TSV of ``key,label`` rows, local or an fsspec URL) works on
    every spec and replaces the dataset's labels and class names (``store.readers.relabel``).
    ``storage_options`` (fsspec keyword arguments: endpoint, credentials) reach the readers that
    use them. Unknown names or options raise DatasetError listing the valid ones.
    """
    base, options = split_options(spec)
    name, sep, arg = base.partition(":")
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {spec!r}; valid: {valid_datasets()}")
    labels_file = options.pop(LABELS_OPTION, None)
    dataset = DATASETS[name].opener(spec, arg if sep else None, options, storage_options)
    if labels_file:
        table = read_label_file(labels_file, storage_options)
        dataset.labels, dataset.classes = relabel(dataset.keys, table, labels_file)
    dataset.spec = spec
    return dataset
