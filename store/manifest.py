"""The manifest: which dataset samples a store holds, in which order, and what their bytes were."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from rich.progress import Progress

from store.datasets import ImageDataset
from store.errors import DecodeError

__all__ = ["Manifest", "build_manifest", "manifest_rows", "sha256_from_bytes", "sha256_to_bytes"]


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


def build_manifest(dataset: ImageDataset, split: str = "all", progress: bool = True) -> Manifest:
    """Decode every image of ``split`` once and record keys, labels, hashes, sizes and validity.

    Undecodable images are recorded (``valid`` False, size 0, ``errors[key]``); this never raises
    for a bad image. Raises ``DatasetError`` for an unknown split.
    """
    return manifest_rows(dataset, dataset.split_indices(split), split, progress)


def manifest_rows(
    dataset: ImageDataset, indices: np.ndarray, split: str = "all", progress: bool = True
) -> Manifest:
    """The manifest of the samples ``indices`` (int64 dataset indices, in row order) of
    ``dataset``, built as :func:`build_manifest` does (``disco store append`` builds its new rows
    with it)."""
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    keys = [dataset.keys[int(i)] for i in indices]
    labels = dataset.labels[indices]
    sha = np.empty(n, dtype=object)
    heights = np.zeros(n, dtype=np.int32)
    widths = np.zeros(n, dtype=np.int32)
    valid = np.zeros(n, dtype=bool)
    errors: dict[str, str] = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"manifest {dataset.spec} [{split}]", total=n)
        for row, idx in enumerate(indices.tolist()):
            try:
                img, digest = dataset.load_with_hash(idx)
            except DecodeError as exc:
                errors[keys[row]] = exc.reason
                try:
                    sha[row] = dataset.sha256(idx)
                except DecodeError:
                    sha[row] = ""
            else:
                sha[row] = digest
                heights[row], widths[row] = img.shape[0], img.shape[1]
                valid[row] = True
            bar.advance(task)
    return Manifest(
        dataset=dataset.spec,
        split=split,
        indices=indices,
        keys=np.array(keys, dtype=str),
        labels=labels,
        sha256=np.array(sha.tolist(), dtype=str),
        heights=heights,
        widths=widths,
        valid=valid,
        errors=errors,
    )
