"""The manifest: which dataset samples a store holds, in which order, and what their bytes were.

Built at the speed of the disk: each sample is read once, hashed, and sized from its header (no
pixel decode for encoded files) in a process pool. Validity is the header's: a file Pillow cannot
identify, with a non-positive size or over the pixel limit is recorded invalid here; a file whose
pixel data is damaged behind a good header is recorded by the precompute job when it fails to
decode (``EmbeddingStore.mark_invalid``: ``valid`` False, its reason in ``manifest`` attrs
``errors``; its slots are never marked written).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import multiprocessing.context
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np
from rich.progress import Progress

from store.dataset_base import ImageDataset, split_indices
from store.errors import ConfigError

__all__ = [
    "ROW_ORDER",
    "ROW_ORDERS",
    "Manifest",
    "appended_order",
    "build_manifest",
    "default_workers",
    "manifest_rows",
    "sha256_from_bytes",
    "sha256_to_bytes",
    "store_rows",
]


def sha256_to_bytes(hexes: np.ndarray) -> np.ndarray:
    """(N,) hex sha256 strings -> (N, 32) uint8 digests; "" (unreadable source) -> 32 zero bytes.

    This is how ``disco-store/2`` stores ``manifest/sha256`` (a zarr v3 core data type)."""
    out = np.zeros((len(hexes), 32), dtype=np.uint8)
    for row, h in enumerate(np.asarray(hexes).tolist()):
        if h:
            out[row] = np.frombuffer(bytes.fromhex(str(h)), dtype=np.uint8)
    return out


def sha256_from_bytes(digests: np.ndarray) -> np.ndarray:
    """(N, 32) uint8 digests -> (N,) hex strings; all-zero rows -> "" (the inverse of
    :func:`sha256_to_bytes`)."""
    arr = np.asarray(digests, dtype=np.uint8).reshape(-1, 32)
    return np.array([row.tobytes().hex() if row.any() else "" for row in arr], dtype=str)


def _str_array(values: object) -> np.ndarray:
    """Any sequence of strings (incl. numpy StringDType from zarr) -> fixed-width unicode array."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "U":
        return values
    seq = values.tolist() if isinstance(values, np.ndarray) else list(values)  # type: ignore[call-overload]
    return np.array([str(v) for v in seq], dtype=str) if seq else np.array([], dtype=str)


@dataclass
class Manifest:
    """Rows of a store. Arrays all have length N (rows), in store order."""

    dataset: str
    """Dataset spec the rows come from (e.g. ``mnist5k``)."""
    split: str
    """Split of the dataset: ``all``, ``train`` or ``test``."""
    indices: np.ndarray
    """(N,) int64 dataset index of each row."""
    keys: np.ndarray
    """(N,) str sample keys (relative path or index)."""
    labels: np.ndarray
    """(N,) int64 labels, -1 = none."""
    sha256: np.ndarray
    """(N,) str hex sha256 of each source ("" if the file could not be read)."""
    heights: np.ndarray
    """(N,) int32 decoded image height in pixels (0 if undecodable)."""
    widths: np.ndarray
    """(N,) int32 decoded image width in pixels (0 if undecodable)."""
    valid: np.ndarray
    """(N,) bool, False for rows whose image did not decode."""
    errors: dict[str, str] = field(default_factory=dict)
    """key -> reason for each undecodable row."""
    row_order: str = "dataset"
    """The rule that ordered the rows (:data:`ROW_ORDERS`); set by :func:`build_manifest`."""
    validity: str = "decode"
    """How ``valid`` was decided: ``header`` (the file reads and its image header gives a size
    within the limits; pixel data is checked when precompute decodes it) or ``decode`` (the
    sample was decoded)."""

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.keys = _str_array(self.keys)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.sha256 = _str_array(self.sha256)
        self.heights = np.asarray(self.heights, dtype=np.int32)
        self.widths = np.asarray(self.widths, dtype=np.int32)
        self.valid = np.asarray(self.valid, dtype=bool)
        n = len(self.indices)
        for name in ("keys", "labels", "sha256", "heights", "widths", "valid"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"manifest field {name} has length {len(getattr(self, name))} != {n}"
                )

    def __len__(self) -> int:
        """Number of rows N."""
        return len(self.indices)

    @property
    def hash(self) -> str:
        """Hex sha256 over (key, content sha256, label) of every row, in order."""
        h = hashlib.sha256()
        for key, sha, label in zip(
            self.keys.tolist(), self.sha256.tolist(), self.labels.tolist(), strict=True
        ):
            h.update(f"{key}\x00{sha}\x00{label}\n".encode())
        return h.hexdigest()

    @property
    def num_invalid(self) -> int:
        """Number of rows whose image did not decode."""
        return int((~self.valid).sum())


ROW_ORDERS = ("dataset", "permuted")
"""Rules that map a split's samples to store rows (recorded as ``dataset.row_order``):

- ``dataset`` (``disco-store/1`` and ``/2``): rows in :func:`store.datasets.split_indices` order;
  for split ``all`` that is the dataset's own order (class-sorted for an ImageFolder).
- ``permuted`` (``disco-store/3``): every split's rows follow one seeded permutation of the
  dataset, ``perm = RandomState(0).permutation(n)``: ``train`` = ``perm[:int(0.8n)]``, ``test`` =
  ``perm[int(0.8n):]`` (the split contract, unchanged) and ``all`` = ``perm`` (train rows, then test
  rows). Rows a store gains by ``disco store append`` are the new samples in dataset order,
  permuted among themselves by :func:`appended_order`.
"""
ROW_ORDER = "permuted"
"""The rule new stores use."""
DEFAULT_CHUNK = 256
"""Samples per pool task: large enough to amortise the pickling, small enough to balance."""


def store_rows(n: int, split: str, row_order: str = ROW_ORDER) -> np.ndarray:
    """(m,) int64 dataset indices of the rows of a store over ``split`` of an ``n``-sample dataset,
    in row order, under ``row_order`` (one of :data:`ROW_ORDERS`)."""
    if row_order not in ROW_ORDERS:
        raise ConfigError(f"unknown row order {row_order!r}; valid: {', '.join(ROW_ORDERS)}")
    if row_order == "permuted" and split == "all":
        return np.random.RandomState(0).permutation(n).astype(np.int64)
    return split_indices(n, split)


def appended_order(n_before: int, m: int) -> np.ndarray:
    """(m,) int64 permutation placing ``m`` appended samples (in dataset order) after row
    ``n_before - 1`` of a ``permuted`` store: ``default_rng([0, n_before]).permutation(m)``.

    Seeded by the store size, so the same append gives the same rows in any process; mixed only
    among themselves (old rows never move, DESIGN §4)."""
    return np.random.default_rng([0, int(n_before)]).permutation(m).astype(np.int64)


def build_manifest(
    dataset: ImageDataset,
    split: str = "all",
    progress: bool = True,
    *,
    workers: int | None = None,
    row_order: str = ROW_ORDER,
    on_progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Probe every sample of ``split`` once (size from the header, sha256 of the bytes; see
    :meth:`store.datasets.ImageDataset.probe`) in ``workers`` processes (None: all cores) and
    record keys, labels, hashes, sizes and validity, rows ordered by ``row_order``.

    Unusable samples are recorded (``valid`` False, size 0, ``errors[key]``); this never raises
    for a bad image. Raises ``DatasetError`` for an unknown split. ``on_progress(done, total)``
    is called in this process after each finished chunk of samples.
    """
    rows = store_rows(len(dataset), split, row_order)
    out = manifest_rows(dataset, rows, split, progress, workers=workers, on_progress=on_progress)
    out.row_order = row_order
    return out


def default_workers() -> int:
    """Processes for per-file work: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_POOL_DATASET: ImageDataset | None = None


def _init_pool(dataset: ImageDataset | None) -> None:
    global _POOL_DATASET
    _POOL_DATASET = dataset


def _probe_chunk(indices: list[int]) -> list[tuple[int, int, str, str | None]]:
    assert _POOL_DATASET is not None
    return [_POOL_DATASET.probe(i) for i in indices]


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork hands the dataset listing (built once, here) to the workers without pickling it;
    # spawn (other platforms) pickles it once per worker through the initializer.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def manifest_rows(
    dataset: ImageDataset,
    indices: np.ndarray,
    split: str = "all",
    progress: bool = True,
    *,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> Manifest:
    """The manifest of the samples ``indices`` (int64 dataset indices, in row order) of
    ``dataset``, built as :func:`build_manifest` does (``disco store append`` builds its new rows
    with it). ``workers`` processes (None: all cores for datasets of files, else this process;
    1: this process) each probe ``chunk`` samples per task; the result depends on neither."""
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    if workers is not None and workers < 1:
        raise ConfigError(f"manifest workers must be >= 1, got {workers}")
    if chunk < 1:
        raise ConfigError(f"manifest chunk must be >= 1, got {chunk}")
    procs = min(workers or default_workers(), -(-n // chunk)) if n else 1
    if not dataset.probe_in_pool and workers is None:
        procs = 1  # in memory: forking would cost more than it saves
    keys = [dataset.keys[int(i)] for i in indices]
    labels = dataset.labels[indices]
    sha: list[str] = [""] * n
    heights = np.zeros(n, dtype=np.int32)
    widths = np.zeros(n, dtype=np.int32)
    valid = np.zeros(n, dtype=bool)
    errors: dict[str, str] = {}
    tasks = [indices[a : a + chunk].tolist() for a in range(0, n, chunk)]

    def take(start: int, probed: list[tuple[int, int, str, str | None]]) -> None:
        for row, (h, w, digest, err) in enumerate(probed, start):
            sha[row] = digest
            if err is None:
                heights[row], widths[row], valid[row] = h, w, True
            else:
                errors[keys[row]] = err

    done = 0
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"manifest {dataset.spec} [{split}] x{procs}", total=n)

        def advance(k: int) -> None:
            nonlocal done
            done += k
            bar.advance(task, k)
            if on_progress is not None:
                on_progress(done, n)

        if procs <= 1:
            _init_pool(dataset)
            try:
                for t, items in enumerate(tasks):
                    take(t * chunk, _probe_chunk(items))
                    advance(len(items))
            finally:
                _init_pool(None)
        else:
            with ProcessPoolExecutor(
                procs, mp_context=_pool_context(), initializer=_init_pool, initargs=(dataset,)
            ) as pool:
                futures = {pool.submit(_probe_chunk, items): t for t, items in enumerate(tasks)}
                for fut in as_completed(futures):
                    t = futures[fut]
                    take(t * chunk, fut.result())
                    advance(len(tasks[t]))
    header = type(dataset).probe is not ImageDataset.probe
    return Manifest(
        dataset=dataset.spec,
        split=split,
        validity="header" if header else "decode",
        indices=indices,
        keys=np.array(keys, dtype=str),
        labels=labels,
        sha256=np.array(sha, dtype=str),
        heights=heights,
        widths=widths,
        valid=valid,
        errors=errors,
    )
