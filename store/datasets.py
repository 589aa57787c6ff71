"""Image datasets addressed by a spec string: the registry ``DATASETS`` and ``open_dataset``.

Specs (``open_dataset``, registry ``DATASETS``): ``mnist5k``, ``digits``, ``synthetic`` /
``synthetic:N``, ``imagefolder:PATH``, ``hfds:PATH``, ``wds:PATTERN``, ``parquet:PATH``,
``py:MODULE:FUNCTION`` (``store.readers``), each with ``?key=value`` options. Each dataset has a
fixed order, string keys, int64 labels (-1 = none) and a content hash per sample, so a manifest
built from it identifies the data exactly. The base class and the split rule live in
:mod:`store.dataset_base` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from store.builtin import Digits, Mnist5k, Synthetic
from store.dataset_base import SPLITS, ImageDataset, array_sha256, split_indices
from store.errors import DatasetError
from store.imagefolder import ImageFolder
from store.readers.options import (
    LABELS_OPTION,
    check_options,
    read_label_file,
    relabel,
    split_options,
)
from store.readers.python import open_python
from store.readers.table import open_hfds, open_parquet
from store.readers.wds import open_wds

__all__ = [
    "DATASETS",
    "DATASET_HELP",
    "SPLITS",
    "DatasetSource",
    "ImageDataset",
    "array_sha256",
    "open_dataset",
    "split_indices",
    "valid_datasets",
]

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


def _open_mnist5k(
    spec: str, arg: str | None, options: dict[str, str], so: Mapping[str, Any] | None
) -> ImageDataset:
    check_options(spec, options, ())
    if arg:
        raise DatasetError("mnist5k takes no argument")
    return Mnist5k()


def _open_digits(
    spec: str, arg: str | None, options: dict[str, str], so: Mapping[str, Any] | None
) -> ImageDataset:
    check_options(spec, options, ())
    if arg:
        raise DatasetError("digits takes no argument")
    return Digits()


def _open_synthetic(
    spec: str, arg: str | None, options: dict[str, str], so: Mapping[str, Any] | None
) -> ImageDataset:
    check_options(spec, options, ())
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
    check_options(spec, options, ())
    if not arg:
        raise DatasetError("imagefolder needs a path: imagefolder:PATH")
    return ImageFolder(arg, storage_options=so)


DATASETS: dict[str, DatasetSource] = {
    "mnist5k": DatasetSource("mnist5k", _open_mnist5k),
    "digits": DatasetSource("digits", _open_digits),
    "synthetic": DatasetSource("synthetic[:N]", _open_synthetic),
    "imagefolder": DatasetSource("imagefolder:PATH", _open_imagefolder),
    "hfds": DatasetSource("hfds:PATH", open_hfds),
    "wds": DatasetSource("wds:PATTERN", open_wds),
    "parquet": DatasetSource("parquet:PATH", open_parquet),
    "py": DatasetSource("py:MODULE:FUNCTION", open_python),
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
