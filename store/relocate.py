"""Data that moved: read a store's samples from a new place, checked against its manifest first.

A store records the dataset spec it was created from (``imagefolder:/data/imagenet/train``). When
the images move (copied to a bucket, mounted elsewhere, a colleague's machine), ``disco train``,
``disco store verify`` and ``disco store check`` take ``--dataset NEW_SPEC``. Before any pixel of it
is used, :func:`open_moved_dataset` checks it is the same data:

- every manifest key must sit at the manifest's dataset index in the new dataset (all rows; keys
  are in memory, so this is one vectorised comparison);
- the content sha256 of a sample of rows (``sample`` rows drawn with a fixed seed, spread over the
  store) or of every row (``full``) must equal the recorded one. Hashing reads whole files, so it
  runs in a thread pool (object storage reads wait on the network, not the GIL).

The first mismatch (in row order) raises :class:`DatasetMismatchError` naming the row and key; the
store is never touched. The store's recorded spec does not change (the new place may be
temporary); pass ``--dataset`` again on the next run.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from store.dataset_base import ImageDataset
from store.datasets import open_dataset
from store.errors import DatasetError, DecodeError
from store.manifest import Manifest

__all__ = ["DEFAULT_SAMPLE", "DatasetMismatchError", "check_dataset", "open_moved_dataset"]

DEFAULT_SAMPLE = 64
"""Rows whose content hash is checked when a moved dataset is not checked in full."""
_THREADS = 8


class DatasetMismatchError(DatasetError):
    """A dataset given for a store is not the data its manifest recorded; ``key`` names the first
    differing sample, ``row`` its store row."""

    def __init__(self, spec: str, row: int, key: str, reason: str) -> None:
        super().__init__(
            f"dataset {spec!r} does not match the store's manifest at row {row}, key {key!r}: "
            f"{reason}; nothing was read from it"
        )
        self.row = row
        self.key = key


def _sample_rows(n: int, sample: int | None, seed: int) -> np.ndarray:
    """Rows to hash, ascending: all (``sample`` None) or ``sample`` drawn without replacement."""
    if sample is None or sample >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))


def check_dataset(
    manifest: Manifest, dataset: ImageDataset, sample: int | None = DEFAULT_SAMPLE, seed: int = 0
) -> int:
    """Check that ``dataset`` holds ``manifest``'s samples: every key at its recorded index, and
    the sha256 of ``sample`` rows (None: all) equal to the recorded ones.

    Returns the number of rows hashed. Raises :class:`DatasetMismatchError` for the first
    mismatch in row order (a key missing or elsewhere, content changed, a file that no longer
    reads)."""
    spec = dataset.spec
    n_ds = len(dataset)
    indices = np.asarray(manifest.indices, dtype=np.int64)
    keys = manifest.keys
    inside = indices < n_ds
    found = np.full(len(indices), "", dtype=object)
    found[inside] = np.asarray(dataset.keys, dtype=object)[indices[inside]]
    bad_keys = np.flatnonzero(found != keys.astype(object))
    first_bad_key = int(bad_keys[0]) if len(bad_keys) else len(indices)

    rows = _sample_rows(len(indices), sample, seed)
    rows = rows[rows < first_bad_key]  # hash only rows before the first key problem
    rows = rows[manifest.sha256[rows] != ""]  # unreadable at create: nothing recorded to compare

    def digest(row: int) -> str:
        try:
            return dataset.sha256(int(indices[row]))
        except DecodeError as exc:
            return f"!{exc.reason}"

    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        digests = list(pool.map(digest, rows.tolist()))
    for row, got in zip(rows.tolist(), digests, strict=True):
        key = str(keys[row])
        if got.startswith("!"):
            raise DatasetMismatchError(spec, row, key, f"it no longer reads ({got[1:]})")
        if got != manifest.sha256[row]:
            recorded = str(manifest.sha256[row])
            raise DatasetMismatchError(
                spec,
                row,
                key,
                f"content changed (sha256 {got[:12]}... != recorded {recorded[:12]}...)",
            )
    if len(bad_keys):
        # A file gone (or renamed) shifts every later index: name a key that is gone, if any.
        gone = np.flatnonzero(~np.isin(keys[bad_keys], np.asarray(dataset.keys, dtype=str)))
        row = int(bad_keys[gone[0]]) if len(gone) else first_bad_key
        if len(gone):
            raise DatasetMismatchError(spec, row, str(keys[row]), "key not found: no such sample")
        where = f"index {int(indices[row])}"
        reason = (
            f"the dataset has {len(dataset)} samples, none at {where}"
            if not inside[row]
            else f"{where} holds {found[row]!r}"
        )
        raise DatasetMismatchError(
            spec, row, str(keys[row]), f"key not found where recorded: {reason}"
        )
    return len(rows)


def open_moved_dataset(
    manifest: Manifest,
    spec: str | None = None,
    *,
    full: bool = False,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    storage_options: Mapping[str, Any] | None = None,
) -> ImageDataset:
    """The dataset of a store's ``manifest``: the recorded spec when ``spec`` is None (or the
    same), else ``spec`` (the data at its new place) after :func:`check_dataset` (``full``: every
    row hashed, else ``sample`` rows). Raises DatasetMismatchError naming the first mismatch."""
    if spec is None or spec == manifest.dataset:
        return open_dataset(manifest.dataset, storage_options)
    dataset = open_dataset(spec, storage_options)
    check_dataset(manifest, dataset, None if full else sample, seed)
    return dataset
