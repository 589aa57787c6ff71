"""Read-only inspection of a store: size/compression summary (``info``) and integrity ``check``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from store.dataset_base import ImageDataset
from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import DatasetError, DecodeError
from store.manifest import Manifest
from store.remote import url_to_fs

__all__ = ["CheckReport", "check_store", "file_sizes", "store_info"]


def file_sizes(url: str) -> dict[str, int]:
    """Relative key -> size in bytes of every file of the store (local path or fsspec URL)."""
    out: dict[str, int] = {}
    if "://" not in url:
        for dirpath, _dirs, files in os.walk(url):
            for name in files:
                full = os.path.join(dirpath, name)
                out[os.path.relpath(full, url).replace(os.sep, "/")] = os.path.getsize(full)
        return out
    fs, root = url_to_fs(url)
    root = root.rstrip("/")
    for path, info in fs.find(root, detail=True).items():
        rel = str(path)[len(root) :].lstrip("/")
        out[rel] = int(info.get("size") or 0)
    return out


def _array_bytes(sizes: dict[str, int], name: str) -> tuple[int, list[str]]:
    keys = [k for k in sizes if k.startswith(f"{name}/c/")]
    return sum(sizes[k] for k in keys), keys


def store_info(url: str, target: str | None = None) -> dict[str, Any]:
    """Summary of a store: shape, layout, bytes on disk, compression ratio, % written, identity,
    growth ``history`` (one dict per ``disco store append``: time, n_before, n_after, added,
    dataset, manifest_hash), and ``teachers``: one dict per teacher (name, dim, dtype,
    written_fraction, missing_shards, bytes_per_view, bytes_on_disk, teacher identity).

    The top-level ``dim``/``dtype``/``written_fraction``/``teacher`` are those of ``target``
    (default: the store's only teacher; None for a store of several teachers and no name).
    ``compression_ratio`` = uncompressed bytes of the embedding shard files present / their size
    on disk (None when no shard is stored yet).
    """
    store = EmbeddingStore.open(url, target=target)
    sizes = file_sizes(url)
    attrs = store.attrs
    info: dict[str, Any] = {
        "url": url,
        "schema": attrs["schema"],
        "n": store.n,
        "views": store.views,
        "dim": store.dim,
        "params": store.num_params,
        "dtype": store.dtype,
        "codec": attrs["storage"]["codec"],
        "chunk_rows": store.chunk_size,
        "shard_rows": store.shard_size,
        "num_shards": store.num_shards,
        "bytes_on_disk": sum(sizes.values()),
        "compression_ratio": None,
        "written_fraction": 0.0,
        "missing_shards": None,
        "teacher": store.teacher,
        "recipe": attrs["recipe"],
        "dataset": attrs["dataset"],
        "versions": attrs.get("versions", {}),
        "history": list(attrs.get("history") or []),
        "target": store.target,
        "teachers": [_teacher_info(store.for_target(name), sizes) for name in store.teachers],
    }
    if store.dim is not None:
        mine = _teacher_info(store, sizes)
        info["compression_ratio"] = mine["compression_ratio"]
        info["written_fraction"] = mine["written_fraction"]
        info["missing_shards"] = mine["missing_shards"]
    return info


def _teacher_info(store: EmbeddingStore, sizes: dict[str, int]) -> dict[str, Any]:
    """One teacher's part of :func:`store_info`: identity, width, completeness, bytes."""
    prefix = (
        ""
        if store.target is None or store.target not in store.raw_attrs.get("targets", {})
        else f"targets/{store.target}/"
    )
    item = np.dtype(store.dtype).itemsize if store.dtype else 0
    dim = int(store.dim or 0)
    stored, keys = _array_bytes(sizes, prefix + "embeddings")
    raw = 0
    for key in keys:
        s = int(key[len(prefix) :].split("/")[2])
        if s < store.num_shards:
            a, b = store.shard_bounds(s)
            raw += (b - a) * store.views * dim * item
    mask = store.written_mask()
    valid = np.asarray(store.manifest.valid, dtype=bool)
    teacher = store.teacher or {}
    return {
        "name": store.target,
        "root": not prefix,
        "dim": store.dim,
        "dtype": store.dtype,
        "source": teacher.get("source"),
        "teacher_name": teacher.get("name") or teacher.get("arch"),
        "sha256": teacher.get("sha256"),
        "bytes_per_view": dim * item,
        "bytes_on_disk": sum(v for k, v in sizes.items() if k.startswith(prefix + "embeddings/"))
        + sum(v for k, v in sizes.items() if k.startswith(prefix + "written/")),
        "compression_ratio": raw / stored if stored else None,
        "written_fraction": float(mask.mean()) if mask.size else 1.0,
        "written_views": int(mask.sum()),
        "complete": bool(mask[valid].all()),
        "missing_shards": store.missing_shards(),
    }


@dataclass
class CheckReport:
    """Result of :func:`check_store`; ``ok`` is False when any problem was found."""

    url: str
    """Store checked."""
    problems: list[str] = field(default_factory=list)
    """One line per problem."""
    notes: list[str] = field(default_factory=list)
    """Non-fatal observations."""
    written_slots: int = 0
    """Slots marked written."""
    total_slots: int = 0
    """N * V."""
    bad_rows: int = 0
    """Written slots with non-finite or (near) zero-norm embeddings."""
    dataset_checked: bool = False
    """Whether the manifest was compared with the dataset on disk."""

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


_HASH_THREADS = 8
_HASH_CHUNK = 1024


def _dataset_mismatches(manifest: Manifest, ds: ImageDataset) -> Iterator[str]:
    """A one-line problem for each row whose sample is not at its index in ``ds``, no longer
    reads, or whose sha256 changed, in row order. Files are hashed by a thread pool (object
    storage reads wait on the network), a chunk of rows at a time (memory bounded in N)."""
    indices = manifest.indices.tolist()

    def digest(idx: int) -> str:
        try:
            return ds.sha256(idx)
        except DecodeError as exc:
            return f"!{exc.reason}"

    with ThreadPoolExecutor(max_workers=_HASH_THREADS) as pool:
        for start in range(0, len(indices), _HASH_CHUNK):
            rows = range(start, min(start + _HASH_CHUNK, len(indices)))
            present = [
                r for r in rows if indices[r] < len(ds) and ds.keys[indices[r]] == manifest.keys[r]
            ]
            hashed = pool.map(digest, [indices[r] for r in present])
            digests = dict(zip(present, hashed, strict=True))
            for row in rows:
                key = str(manifest.keys[row])
                got = digests.get(row)
                if got is None:
                    yield f"row {row}: dataset has no sample {key!r} at index {indices[row]}"
                elif got.startswith("!"):
                    yield f"row {row} ({key}): {got[1:]}"
                elif got != manifest.sha256[row]:
                    yield f"row {row} ({key}): content changed (sha256 differs)"


def check_store(
    url: str,
    dataset: str | None = None,
    check_dataset: bool = True,
    max_listed: int = 10,
    target: str | None = None,
) -> CheckReport:
    """Check a store: written mask vs data, non-finite or zero-norm embeddings among written slots,
    and (``check_dataset``) each manifest sha256 against the dataset on disk (spec from the store
    attrs, or ``dataset`` for a moved copy). Never raises for data problems; they are listed.
    ``target``: the teacher whose embeddings are checked (default: the only one; a store of
    several teachers and no name has each checked, problems prefixed with its name).
    """
    store = EmbeddingStore.open(url, target=target)
    if store.target is None:  # several teachers, none named: check every one
        report = CheckReport(url=url, total_slots=0)
        for k, name in enumerate(store.teachers):
            part = check_store(url, dataset, check_dataset and k == 0, max_listed, name)
            report.problems += [f"{name}: {p}" for p in part.problems]
            report.notes += [f"{name}: {n}" for n in part.notes]
            report.written_slots += part.written_slots
            report.total_slots += part.total_slots
            report.bad_rows += part.bad_rows
            report.dataset_checked |= part.dataset_checked
        return report
    report = CheckReport(url=url, total_slots=store.n * store.views)
    manifest = store.manifest
    if manifest.num_invalid:
        report.notes.append(f"{manifest.num_invalid} undecodable rows are masked (manifest.valid)")
    if store.dim is not None:
        orphan = 0
        listed = 0
        for s in range(store.num_shards):
            block = store.read_shard(s)
            norms = np.linalg.norm(block.embeddings, axis=-1)
            finite = np.isfinite(block.embeddings).all(axis=-1)
            bad = block.written & (~finite | (norms < 1e-3))
            report.written_slots += int(block.written.sum())
            report.bad_rows += int(bad.sum())
            valid_rows = manifest.valid[block.start : block.stop, None]
            orphan += int((~block.written & valid_rows & (norms > 0)).sum())
            for r, v in zip(*np.nonzero(bad), strict=True):
                if listed < max_listed:
                    key = manifest.keys[block.start + r]
                    report.problems.append(
                        f"row {block.start + r} ({key}) view {v}: non-finite or zero-norm embedding"
                    )
                listed += 1
            invalid_written = block.written & ~manifest.valid[block.start : block.stop, None]
            if invalid_written.any():
                report.problems.append(f"shard {s}: slots of undecodable rows marked written")
        if report.bad_rows > max_listed:
            report.problems.append(f"... {report.bad_rows - max_listed} more bad slots")
        if orphan:
            report.notes.append(f"{orphan} unwritten slots hold data (interrupted writes; ignored)")
        missing = store.missing_shards()
        if missing:
            report.notes.append(f"{len(missing)} shards not fully written: {missing[:20]}")
    else:
        report.notes.append("no teacher attached: no embeddings to check")
    if check_dataset:
        spec = dataset or manifest.dataset
        try:
            ds = open_dataset(spec)
        except DatasetError as exc:
            report.problems.append(f"cannot open dataset {spec!r}: {exc}")
            return report
        report.dataset_checked = True
        listed = 0
        for msg in _dataset_mismatches(manifest, ds):
            if listed < max_listed:
                report.problems.append(msg)
            listed += 1
        if listed > max_listed:
            report.problems.append(f"... {listed - max_listed} more dataset mismatches")
    return report
