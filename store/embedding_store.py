"""The zarr v3 store of teacher embeddings: manifest, view plan, embeddings, written mask.

Layout (group attrs carry ``schema: disco-store/2``)::

    manifest/{indices,labels}          (N,) int64
    manifest/{heights,widths}          (N,) int32
    manifest/valid                     (N,) bool
    manifest/sha256                    (N, 32) uint8 content digests (all zero: unreadable file)
    manifest/keys                      (N,) variable-length UTF-8 strings (zarr-python's string
                                       dtype: the only array outside the zarr v3 core spec)
    views/params          (N, V, P) float32, one chunk per shard of rows
    embeddings            (N, V, D) float16 (or int8), chunks (c, V, D) inside shards (s, V, D)
    embeddings_scale      (D,) float32, int8 only: value = int8 * scale
    features              (N, V, F) float16, optional, same row sharding
    written               (N, V) bool, one chunk per shard, set only after the data write returned
    targets/<NAME>/...    embeddings, embeddings_scale, features, written: the same arrays for
                          each further teacher (``disco-store/4``)

Several teachers (``disco-store/4``): the first teacher's arrays stay at the root (so a
single-teacher store of an earlier version *is* a one-teacher store: it opens unchanged, and adding
a teacher never moves its bytes); each further teacher NAME has the same arrays under
``targets/NAME/`` and its identity record in the group attrs ``targets[NAME]`` (``teacher``,
``dtype``); ``root_target`` names the root teacher (default ``"default"``). A handle is opened for
one teacher (``EmbeddingStore.open(url, target=NAME)``) and then behaves exactly as a
single-teacher store: its ``attrs["teacher"]``/``dim``/``written_mask``/``read_shard``/
``write_slots`` are that teacher's, its slot log is ``.wal/targets/NAME/``. A store with several
teachers opened without a name answers metadata (``teachers``) and refuses target reads with the
list of names. Shard locks are shared by the teachers (one lock per row range).

Every numeric array uses core data types and core codecs (bytes, sharding, blosc when chosen;
``zstd`` is the one extension codec, used only when a store is created with ``codec="zstd"``), so
independent zarr v3 readers (tensorstore) read them. ``disco-store/1`` stores (``manifest/sha256``
as hex strings) are still read.

Concurrency (see ``store.locks``): a partial write of a shard rewrites the whole shard file, so
every write of a shard (``write_shard``, ``write_slots``, ``merge_shard``) is one read-modify-write
of its arrays under the shard's lock: across processes for local paths (``fcntl.flock`` on
``<store>/.locks/shard-NNNNN.lock``), in-process only for fsspec URLs. Writers write embeddings
(and features) before the ``written`` mask; readers (``read_shard``) read ``written`` before the
embeddings. zarr's LocalStore replaces each chunk/shard file atomically (write + rename), so a
reader sees the old or the new file, never a torn one, and every slot its mask calls written holds
that slot's final bytes (``write_slots``/``merge_shard`` never change a written slot unless asked
to overwrite). Readers take no lock.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
import zarr.storage
from zarr.abc.store import Store
from zarr.core.array_spec import ArrayConfigParams

from store.errors import ConfigError, StoreError, StoreMismatchError, StoreNotFoundError
from store.locks import is_local, local_path, shard_lock, store_lock
from store.manifest import Manifest, sha256_from_bytes, sha256_to_bytes
from store.remote import (
    is_remote,
    protocol,
    single_writer_acknowledged,
    storage_errors,
    storage_options_for,
    url_to_fs,
)
from store.slotlog import WAL_DIR, SlotLog, encode_record, read_slots
from store.targets import ROOT_TARGET, check_target_name, root_target_name, target_names
from store.views import Recipe, plan_views, recipe_from_dict
from store.views.fingerprint import check_render, library_versions, render_record

__all__ = [
    "CODECS",
    "READABLE_SCHEMAS",
    "ROOT_TARGET",
    "SCHEMA",
    "TARGETS_SCHEMA",
    "EmbeddingStore",
    "ShardBlock",
    "check_target_name",
    "int8_scales",
    "open_zarr_store",
    "target_names",
]

SCHEMA = "disco-store/3"
TARGETS_SCHEMA = "disco-store/4"
"""Written once a store holds a teacher under ``targets/NAME`` (older code must not append to
it: it would grow only the root teacher's arrays)."""
READABLE_SCHEMAS = ("disco-store/1", "disco-store/2", SCHEMA, TARGETS_SCHEMA)
"""Layouts this code opens; it creates only ``SCHEMA``."""
CODECS = ("none", "zstd", "blosc-bitshuffle")
COMPACT_FRACTION = 0.25
"""A shard's slot log is merged into its file once it holds this fraction of the shard's slots."""
DEFAULT_CODEC = "none"
_MANIFEST_FIELDS = ("indices", "keys", "labels", "sha256", "heights", "widths", "valid")
_TARGET_ARRAYS = ("embeddings", "embeddings_scale", "features", "written")
# Every write is real data: skip zarr's scan for all-fill chunks (2-3x faster shard writes).
_WRITE_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "torchvision", "pillow", "zarr", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _compressors(codec: str) -> Any:
    """zarr v3 ``compressors`` argument for a codec name."""
    if codec == "none":
        return None
    if codec == "zstd":
        return zarr.codecs.ZstdCodec(level=1)
    if codec == "blosc-bitshuffle":
        return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    raise ConfigError(f"unknown codec {codec!r}; valid: {', '.join(CODECS)}")


def open_zarr_store(
    url: str, read_only: bool, storage_options: Mapping[str, Any] | None = None
) -> Store:
    """A zarr store for a local path or an fsspec URL (``memory://``, ``file://``, ``s3://``...).

    ``storage_options`` (fsspec keyword arguments; None: from the environment, see
    ``store.remote``) reach the URL's filesystem, e.g. an S3 ``endpoint_url``."""
    if "://" in url:
        opts = storage_options_for(url, storage_options)
        if url.startswith("file://"):
            opts["auto_mkdir"] = True
        try:
            return zarr.storage.FsspecStore.from_url(
                url, storage_options=opts or None, read_only=read_only
            )
        except (ImportError, ValueError, TypeError) as exc:
            raise StoreError(f"cannot open store URL {url!r}: {exc}") from exc
    return zarr.storage.LocalStore(url, read_only=read_only)


def _probe_remote(url: str, what: str, storage_options: Mapping[str, Any] | None) -> bool:
    """Whether a remote store's ``zarr.json`` exists: one plain request before zarr starts its
    concurrent ones, so no endpoint / no credentials / no bucket is one clean error."""
    fs, path = url_to_fs(url, storage_options)
    meta = f"{path.rstrip('/')}/zarr.json"
    with storage_errors(url, what):
        if fs.exists(meta):
            return True
        fs.invalidate_cache(path)  # a listing cached before another process made the store
        return bool(fs.exists(meta))


def int8_scales(sample: np.ndarray, headroom: float = 1.0) -> np.ndarray:
    """Per-dimension int8 scales from a sample of embeddings (M, D): (D,) float32 = max|x| / 127.

    Values beyond the scale saturate at +-127. ``headroom`` > 1 widens the range.
    """
    peak = np.abs(np.asarray(sample, dtype=np.float32)).max(axis=0) * headroom
    return (np.maximum(peak, 1e-8) / 127.0).astype(np.float32)


def _default_int8_scales(dim: int) -> np.ndarray:
    """Scales for unit vectors without calibration: components clipped at min(1, 4 / sqrt(D))."""
    return np.full(dim, min(1.0, 4.0 / np.sqrt(dim)) / 127.0, dtype=np.float32)


def _get_path(d: dict[str, Any], dotted: str) -> object:
    cur: object = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _same(expected: object, actual: object) -> bool:
    if isinstance(expected, tuple):
        expected = list(expected)
    if isinstance(expected, float) and isinstance(actual, int | float):
        return abs(expected - float(actual)) <= 1e-12 * max(1.0, abs(expected))
    return expected == actual


@dataclass
class ShardBlock:
    """One shard's rows read as numpy."""

    shard: int
    """Shard number s."""
    start: int
    """First row (inclusive)."""
    stop: int
    """Last row (exclusive)."""
    embeddings: np.ndarray
    """(n, V, D) float32 teacher embeddings (dequantised; unwritten slots are 0)."""
    written: np.ndarray
    """(n, V) bool, True where the slot holds a stored embedding."""
    params: np.ndarray
    """(n, V, P) float32 view parameters."""


class EmbeddingStore:
    """A DisCo store on local disk or any fsspec URL; see the module docstring for the layout."""

    def __init__(self, url: str, group: zarr.Group, mode: str, target: str | None = None) -> None:
        self._url = url
        self._group = group
        self._mode = mode
        self._target = None if target is None else check_target_name(target)
        self._name: str | None = None
        self._prefix: str | None = ""
        self._raw: dict[str, Any] = {}
        self._attrs: dict[str, Any] = self._view(dict(group.attrs))
        self._manifest: Manifest | None = None
        self._params: np.ndarray | None = None
        self._recipe: Recipe | None = None
        self._arrays: dict[str, zarr.Array] = {}
        self._scale_cache: np.ndarray | None = None
        # What this process knows of each shard's slot log: ((inode, size), logged (n, V) bool,
        # slot count, end offset); valid while the file's inode and size are unchanged (only
        # another process can append or merge meanwhile: writers hold the shard lock).
        self._log_cache: dict[int, tuple[tuple[int, int], np.ndarray, int, int]] = {}
        # The shard file's written mask per shard, keyed by its chunk file's identity (zarr's
        # LocalStore replaces a chunk file by rename, so any write changes inode or mtime).
        self._mask_cache: dict[int, tuple[tuple[int, ...], np.ndarray]] = {}
        self._storage_options: dict[str, Any] | None = None

    # ----------------------------------------------------------------- create / open
    @classmethod
    def create(
        cls,
        url: str,
        *,
        manifest: Manifest,
        recipe: Recipe,
        seed: int,
        views: int,
        params: np.ndarray | None = None,
        shard_size: int = 4096,
        overwrite: bool = False,
        codec: str = DEFAULT_CODEC,
        chunk_size: int | None = None,
        progress: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        single_writer: bool | None = None,
        target: str | None = None,
    ) -> EmbeddingStore:
        """Create a store with the manifest arrays and the (N, V, P) float32 view plan; no teacher.

        ``params`` is planned with :func:`plan_views` when None. ``shard_size`` rows per shard file,
        ``chunk_size`` rows per inner chunk (default shard_size; must divide shard_size),
        ``codec`` one of ``CODECS`` for embeddings/features. Raises StoreError if a store exists and
        ``overwrite`` is False. ``storage_options``/``single_writer``/``target``: as in
        :meth:`open`.
        """
        single_writer_acknowledged(url, single_writer)
        n = len(manifest)
        chunk = _check_layout(views, shard_size, chunk_size, codec)
        if params is None:
            params = plan_views(recipe, seed, manifest.heights, manifest.widths, views, progress)
        params = np.asarray(params, dtype=np.float32)
        if params.shape != (n, views, recipe.num_params):
            raise ConfigError(
                f"params shape {params.shape} != (N, V, P) = {(n, views, recipe.num_params)}"
            )
        render = render_record(recipe)  # before the group exists: readers wait for its attrs
        group = _new_group(url, overwrite, storage_options)
        _write_manifest(group, manifest)
        _write_params(group, params, shard_size)
        group.attrs.update(
            {
                "schema": SCHEMA,
                "dataset": {
                    "spec": manifest.dataset,
                    "split": manifest.split,
                    "n": n,
                    "manifest_hash": manifest.hash,
                    "row_order": manifest.row_order,
                    "validity": manifest.validity,
                },
                "recipe": {**recipe.to_dict(), "seed": int(seed), "views": int(views)},
                "teacher": None,
                "storage": {
                    "dtype": None,
                    "shard_size": int(shard_size),
                    "chunk_size": int(chunk),
                    "codec": codec,
                    # Single-slot writes of a local store: store.slotlog records under this
                    # folder, applied over the shard files by every reader of this code (disco
                    # store compact merges them for plain zarr readers).
                    "slot_log": WAL_DIR,
                },
                "versions": _versions(),
                "render": render,
            }
        )
        store = cls(url, group, "r+", target)
        store._storage_options = None if storage_options is None else dict(storage_options)
        store._manifest = manifest
        store._params = params
        store._recipe = recipe
        return store

    @classmethod
    def open(
        cls,
        url: str,
        mode: str = "r",
        expect: dict[str, object] | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        single_writer: bool | None = None,
        target: str | None = None,
    ) -> EmbeddingStore:
        """Open an existing store (``mode`` "r" or "r+"), checking schema and ``expect``.

        ``target``: the teacher this handle reads and writes (see the module docstring; None:
        the store's only teacher). A name the store does not hold is refused in mode "r" (naming
        the teachers it does hold); in mode "r+" the handle has no teacher until
        :meth:`attach_teacher` adds it. ``expect``'s ``teacher.*`` fields are that teacher's.

        ``expect`` maps dotted attr paths (``"teacher.sha256"``, ``"recipe.views"``...) to values;
        the first difference raises ``StoreMismatchError(field, expected, actual)``. A missing store
        raises ``StoreNotFoundError``. ``storage_options``: fsspec options of a URL (None: from
        the environment, ``store.remote``). Mode "r+" on object storage needs ``single_writer``
        (None: ``DISCO_SINGLE_WRITER``), else ``RemoteStorageError``: no lock protects its shards.
        """
        if mode not in ("r", "r+"):
            raise ConfigError(f"mode must be 'r' or 'r+', got {mode!r}")
        if mode == "r+":
            single_writer_acknowledged(url, single_writer)
        remote = is_remote(url) and protocol(url) != "memory"
        if remote and not _probe_remote(url, "cannot open store", storage_options):
            raise StoreNotFoundError(f"no store at {url!r}")
        zstore = open_zarr_store(url, read_only=mode == "r", storage_options=storage_options)
        try:
            with storage_errors(url, "cannot open store"):
                group = zarr.open_group(zstore, mode=mode)  # type: ignore[arg-type]
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as exc:
            raise StoreNotFoundError(f"no store at {url!r}") from exc
        except ValueError as exc:
            raise StoreNotFoundError(f"no store at {url!r}: {exc}") from exc
        raw = dict(group.attrs)
        if raw.get("schema") not in READABLE_SCHEMAS:
            raise StoreMismatchError("schema", " or ".join(READABLE_SCHEMAS), raw.get("schema"))
        store = cls(url, group, mode, target)
        if mode == "r" and target is not None and target not in store.teachers:
            held = ", ".join(store.teachers) or "none"
            raise StoreError(f"store {url!r} has no teacher {target!r} (teachers: {held})")
        attrs = store.attrs
        for field, expected in (expect or {}).items():
            actual = _get_path(attrs, field)
            if not _same(expected, actual):
                raise StoreMismatchError(field, expected, actual)
        store._storage_options = None if storage_options is None else dict(storage_options)
        return store

    # ----------------------------------------------------------------- render fingerprint
    def check_render(self, accept_drift: bool = False) -> str:
        """Refuse replay on an install that renders this store's views differently.

        Recomputes the render fingerprint of the store's recipe (once per process) and compares it
        with the one recorded at create (see :func:`store.views.fingerprint.check_render` for the
        outcomes). Raises ``StoreMismatchError("render.fingerprint", ...)`` on drift unless
        ``accept_drift``. Call it wherever stored targets are paired with fresh renders.
        """
        return check_render(
            self._attrs.get("render"), self.recipe, accept_drift=accept_drift, where=self._url
        )

    def accept_render(self, evidence: dict[str, Any]) -> None:
        """Record this install's render fingerprint as accepted (after ``disco store verify``
        passed on it): later :meth:`check_render` calls here and on installs that render alike
        pass. ``evidence`` (JSON-able, e.g. the verify summary) is stored beside it. A store
        without a render record gets this install's record as its reference."""
        self._require_writable()
        record = self._attrs.get("render")
        mine = render_record(self.recipe)
        if not record or record.get("probe_version") != mine["probe_version"]:
            record = mine
        elif record.get("fingerprint") != mine["fingerprint"]:
            accepted = [a for a in record.get("accepted", []) if isinstance(a, dict)]
            if mine["fingerprint"] not in [a.get("fingerprint") for a in accepted]:
                accepted.append(
                    {
                        "fingerprint": mine["fingerprint"],
                        "versions": library_versions(),
                        "evidence": _jsonable(evidence),
                    }
                )
            record = {**record, "accepted": accepted}
        self._group.attrs.update({"render": record})
        self._attrs = self._view(dict(self._group.attrs))

    # ----------------------------------------------------------------- teacher
    def attach_teacher(
        self,
        teacher: dict[str, Any],
        dim: int,
        dtype: str = "float16",
        features_dim: int | None = None,
        int8_scale: np.ndarray | None = None,
    ) -> None:
        """Create ``embeddings`` (N, V, dim), ``written`` (N, V), optional ``features``; record
        ``teacher`` (JSON-able dict: arch, sha256, preprocessing...).

        ``dtype`` "float16" or "int8"; int8 stores per-dimension scales ``embeddings_scale`` (D,)
        (``int8_scale`` if given, e.g. from :func:`int8_scales`, else min(1, 4/sqrt(D))/127).
        If a teacher is attached already: the same (teacher, dim, dtype, features_dim) is a no-op, a
        different one raises ``StoreMismatchError("teacher.<field>")``.
        """
        self._require_writable()
        if dtype not in ("float16", "int8"):
            raise ConfigError(f"embedding dtype must be 'float16' or 'int8', got {dtype!r}")
        self.require_target()
        if self._attrs.get("teacher") is not None:
            self._attach(teacher, dim, dtype, features_dim, int8_scale)
            return
        # Two processes may attach at once (a batch job and the service): one creates the
        # arrays, the other then sees its record.
        with store_lock(self._url, timeout=None):
            self.refresh(force=True)
            self._attach(teacher, dim, dtype, features_dim, int8_scale)

    def _attach(
        self,
        teacher: dict[str, Any],
        dim: int,
        dtype: str,
        features_dim: int | None,
        int8_scale: np.ndarray | None,
    ) -> None:
        record = {**teacher, "embed_dim": int(dim), "features_dim": features_dim}
        current = self._attrs.get("teacher")
        if current is not None:
            for key in sorted(set(record) | set(current)):
                if not _same(_jsonable(record.get(key)), current.get(key)):
                    raise StoreMismatchError(f"teacher.{key}", record.get(key), current.get(key))
            if self._attrs["storage"]["dtype"] != dtype:
                raise StoreMismatchError("storage.dtype", dtype, self._attrs["storage"]["dtype"])
            return
        self.require_target()  # refreshed attrs: another teacher may have been added meanwhile
        storage = dict(self._attrs["storage"])
        s, c, v = storage["shard_size"], storage["chunk_size"], self.views
        n = self.n
        compressors = _compressors(storage["codec"])
        prefix = self._prefix or ""
        if prefix:
            self._group.require_group(prefix.rstrip("/"))
        self._group.create_array(
            prefix + "embeddings",
            shape=(n, v, dim),
            chunks=(c, v, dim),
            shards=(s, v, dim),
            dtype=dtype,
            compressors=compressors,
            fill_value=0,
            config=_WRITE_CONFIG,
        )
        if dtype == "int8":
            scale = _default_int8_scales(dim) if int8_scale is None else int8_scale
            scale = np.asarray(scale, dtype=np.float32)
            if scale.shape != (dim,) or not np.all(scale > 0):
                raise ConfigError(f"int8_scale must be ({dim},) positive, got {scale.shape}")
            sa = self._group.create_array(
                prefix + "embeddings_scale", shape=(dim,), dtype="float32", compressors=None
            )
            sa[:] = scale
        if features_dim is not None:
            self._group.create_array(
                prefix + "features",
                shape=(n, v, features_dim),
                chunks=(c, v, features_dim),
                shards=(s, v, features_dim),
                dtype="float16",
                compressors=compressors,
                fill_value=0,
                config=_WRITE_CONFIG,
            )
        self._group.create_array(
            prefix + "written",
            shape=(n, v),
            chunks=(s, v),
            dtype=bool,
            fill_value=False,
            compressors=None,
        )
        if prefix:  # a further teacher: its record beside the others', the root's untouched
            targets = dict(self._raw.get("targets") or {})
            targets[str(self._name)] = {"teacher": _jsonable(record), "dtype": dtype}
            self._group.attrs.update({"targets": targets, "schema": TARGETS_SCHEMA})
        else:
            storage["dtype"] = dtype
            update: dict[str, Any] = {"teacher": _jsonable(record), "storage": storage}
            if self._target is not None:
                update["root_target"] = self._target
            self._group.attrs.update(update)
        self._attrs = self._view(dict(self._group.attrs))
        self._arrays = {}

    def mark_invalid(self, rows: np.ndarray, reasons: dict[str, str]) -> None:
        """Record rows (``rows`` (m,) int64) whose samples failed to decode after the manifest
        was built (their header was fine): ``manifest/valid`` False and ``reasons`` (key ->
        reason) merged into the manifest's ``errors`` attr. Their slots stay unwritten; readers
        skip them as they skip rows the manifest found unusable. Under the store-wide lock."""
        self._require_writable()
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows) == 0:
            return
        with store_lock(self._url, timeout=None):
            self.refresh(force=True)
            mgroup: Any = self._group["manifest"]
            valid = np.asarray(mgroup["valid"][: self.n], dtype=bool)
            valid[rows] = False
            lo, hi = int(rows.min()), int(rows.max()) + 1
            mgroup["valid"][lo:hi] = valid[lo:hi]
            errors = {**dict(mgroup.attrs.get("errors", {})), **reasons}
            mgroup.attrs.update({"errors": errors})
            self._manifest = None

    # ----------------------------------------------------------------- properties
    @property
    def url(self) -> str:
        """Where the store lives (path or fsspec URL)."""
        return self._url

    @property
    def target(self) -> str | None:
        """The teacher this handle reads and writes (None: several teachers and none named)."""
        return self._name

    @property
    def teachers(self) -> list[str]:
        """Every teacher the store holds (root first, then ``targets/NAME`` sorted)."""
        return target_names(self._raw)

    @property
    def raw_attrs(self) -> dict[str, Any]:
        """The group attributes as stored (``attrs`` shows this handle's teacher as the
        ``teacher`` record)."""
        return self._raw

    def for_target(self, target: str) -> EmbeddingStore:
        """A handle of the same store (same mode and group) for teacher ``target``."""
        other = type(self)(self._url, self._group, self._mode, target)
        other._storage_options = self._storage_options
        other._manifest, other._params, other._recipe = self._manifest, self._params, self._recipe
        if self._mode == "r" and target not in other.teachers:
            held = ", ".join(other.teachers) or "none"
            raise StoreError(f"store {self._url!r} has no teacher {target!r} (teachers: {held})")
        return other

    def convert(self, name: str | None = None) -> None:
        """Convert a single-teacher store in place: record its root teacher's name (``name``,
        default ``"default"``) and mark the layout ``disco-store/4``. No array is moved or
        rewritten (the bytes stay those of the root arrays). Under the store-wide lock."""
        self._require_writable()
        with store_lock(self._url, timeout=None):
            self.refresh()
            if self._raw.get("teacher") is None:
                raise StoreError(f"store {self._url!r} has no teacher to convert")
            new = check_target_name(name or root_target_name(self._raw))
            if new in (self._raw.get("targets") or {}):
                raise StoreError(f"store {self._url!r} already has a teacher {new!r}")
            self._group.attrs.update({"root_target": new, "schema": TARGETS_SCHEMA})
            if self._name == root_target_name(self._raw):
                self._target = new
            self._attrs = self._view(dict(self._group.attrs))

    def _view(self, raw: dict[str, Any]) -> dict[str, Any]:
        """This handle's attrs from the group's ``raw`` attrs: the chosen teacher's record as
        ``teacher`` and its dtype as ``storage.dtype``; sets ``_name`` and ``_prefix`` (None:
        several teachers, none named)."""
        self._raw = raw
        targets = raw.get("targets") or {}
        names = target_names(raw)
        root = root_target_name(raw)
        want = self._target
        if want is None:
            if len(names) > 1:
                self._name, self._prefix = None, None
                return {**raw, "teacher": None, "target": None}
            want = names[0] if names else root
        if want in targets:
            rec = targets[want]
            self._name, self._prefix = want, f"targets/{want}/"
            storage = {**raw["storage"], "dtype": rec.get("dtype")}
            return {**raw, "teacher": rec.get("teacher"), "storage": storage, "target": want}
        if want == root or raw.get("teacher") is None:
            # the root teacher, or the first teacher of a store without one (it goes to the root)
            self._name, self._prefix = want, ""
            return {**raw, "target": want}
        self._name, self._prefix = want, f"targets/{want}/"  # not attached yet
        storage = {**raw["storage"], "dtype": None}
        return {**raw, "teacher": None, "storage": storage, "target": want}

    def require_target(self) -> None:
        """Raise ``StoreError`` listing the teachers when this handle names none of several."""
        if self._prefix is None:
            raise StoreError(
                f"store {self._url!r} holds several teachers ({', '.join(self.teachers)}); "
                "name one (--target NAME)"
            )

    @property
    def group(self) -> zarr.Group:
        """The underlying zarr group."""
        return self._group

    @property
    def attrs(self) -> dict[str, Any]:
        """Group attributes (schema, dataset, recipe, teacher, storage, versions, render)."""
        return self._attrs

    @property
    def n(self) -> int:
        """Rows N."""
        return int(self._attrs["dataset"]["n"])

    @property
    def views(self) -> int:
        """Views per row V."""
        return int(self._attrs["recipe"]["views"])

    @property
    def schema(self) -> str:
        """Layout version of this store (one of ``READABLE_SCHEMAS``)."""
        return str(self._attrs["schema"])

    @property
    def row_order(self) -> str:
        """The rule that ordered this store's rows (``store.manifest.ROW_ORDERS``): ``permuted``
        for ``disco-store/3`` stores, ``dataset`` for older ones (recorded as
        ``dataset.row_order``)."""
        return str(self._attrs["dataset"].get("row_order", "dataset"))

    @property
    def dim(self) -> int | None:
        """Embedding dimension D (None before a teacher is attached)."""
        t = self._attrs.get("teacher")
        return None if t is None else int(t["embed_dim"])

    @property
    def features_dim(self) -> int | None:
        """Backbone feature dimension F, if features are stored."""
        t = self._attrs.get("teacher")
        return None if t is None or t.get("features_dim") is None else int(t["features_dim"])

    @property
    def dtype(self) -> str | None:
        """Stored embedding dtype ("float16" | "int8"), None before attach."""
        d = self._attrs["storage"]["dtype"]
        return None if d is None else str(d)

    @property
    def num_params(self) -> int:
        """Parameters per view P."""
        return int(self._attrs["recipe"]["num_params"])

    @property
    def shard_size(self) -> int:
        """Rows per shard s."""
        return int(self._attrs["storage"]["shard_size"])

    @property
    def chunk_size(self) -> int:
        """Rows per inner chunk c (divides s)."""
        return int(self._attrs["storage"]["chunk_size"])

    @property
    def num_shards(self) -> int:
        """ceil(N / s)."""
        return -(-self.n // self.shard_size)

    @property
    def seed(self) -> int:
        """Plan seed of the view parameters."""
        return int(self._attrs["recipe"]["seed"])

    @property
    def recipe(self) -> Recipe:
        """The view recipe (checked against this code's registry)."""
        if self._recipe is None:
            try:
                self._recipe = recipe_from_dict(self._attrs["recipe"])
            except ConfigError as exc:
                raise StoreError(f"store {self._url!r}: {exc}") from exc
        return self._recipe

    @property
    def teacher(self) -> dict[str, Any] | None:
        """Teacher identity dict, None before attach."""
        t = self._attrs.get("teacher")
        return None if t is None else dict(t)

    @property
    def manifest(self) -> Manifest:
        """The manifest (read lazily, whole arrays)."""
        if self._manifest is None:
            m = self._group["manifest"]
            # Sliced to N: an append resizes the arrays before it records the new N.
            arrays: dict[str, Any] = {name: m[name][: self.n] for name in _MANIFEST_FIELDS}  # type: ignore[index]
            if arrays["sha256"].ndim == 2:  # disco-store/2: (N, 32) uint8; /1: hex strings
                arrays["sha256"] = sha256_from_bytes(arrays["sha256"])
            self._manifest = Manifest(
                dataset=self._attrs["dataset"]["spec"],
                split=self._attrs["dataset"]["split"],
                row_order=self.row_order,
                errors=dict(m.attrs.get("errors", {})),  # type: ignore[arg-type]
                **arrays,
            )
        return self._manifest

    @property
    def params(self) -> np.ndarray:
        """All view parameters (N, V, P) float32 (read lazily)."""
        if self._params is None:
            self._params = np.asarray(self._group["views/params"][: self.n], dtype=np.float32)  # type: ignore[index]
        return self._params

    # ----------------------------------------------------------------- shards
    def shard_bounds(self, s: int) -> tuple[int, int]:
        """Row range [start, stop) of shard ``s``."""
        if not 0 <= s < self.num_shards:
            raise StoreError(f"shard {s} out of range 0..{self.num_shards - 1}")
        start = s * self.shard_size
        return start, min(self.n, start + self.shard_size)

    def _array(self, name: str) -> zarr.Array:
        # Cached: each group lookup re-reads the array metadata from storage.
        arr = self._arrays.get(name)
        if arr is None:
            self.require_target()
            if self._attrs.get("teacher") is None:
                what = "" if self._name is None or not self._prefix else f" {self._name!r}"
                raise StoreError(
                    f"store {self._url!r} has no teacher{what} attached (no {name!r} array)"
                )
            path = (self._prefix or "") + name if name in _TARGET_ARRAYS else name
            found = self._group[path]
            if not isinstance(found, zarr.Array):
                raise StoreError(f"store {self._url!r}: {name!r} is not an array")
            arr = self._arrays[name] = found
        return arr

    def _scale(self) -> np.ndarray | None:
        if self.dtype != "int8":
            return None
        if self._scale_cache is None:
            self._scale_cache = np.asarray(self._array("embeddings_scale")[:], np.float32)
        return self._scale_cache

    def written_mask(self) -> np.ndarray:
        """(N, V) bool: slots whose embedding is stored (in the shard files or a slot log)."""
        log = self._slotlog()
        logged = (
            [] if log is None else [(s, read_slots(log.path(s))) for s in log.shards()]
        )  # logs first: a log merged meanwhile is in the shard file read next
        mask = np.asarray(self._array("written")[: self.n], dtype=bool)
        for s, (rows, views, _) in logged:
            rows = rows + s * self.shard_size
            keep = rows < self.n
            mask[rows[keep], views[keep]] = True
        return mask

    # ----------------------------------------------------------------- slot log
    def _slotlog(self) -> SlotLog | None:
        """The slot log of a local store with a teacher (None: fsspec URL or no teacher)."""
        if not is_local(self._url) or self._attrs.get("teacher") is None:
            return None
        folder = WAL_DIR + ("/" + self._prefix.rstrip("/") if self._prefix else "")
        return SlotLog(self._url, int(self.dim or 0), self.features_dim, str(self.dtype), folder)

    def _file_mask(self, s: int) -> np.ndarray:
        """Shard ``s``'s ``written`` mask as the shard file has it (n, V) bool, a fresh copy;
        read once per change of its chunk file (a zarr read costs ~2 ms, a stat ~10 us)."""
        a, b = self.shard_bounds(s)
        w_arr = self._array("written")
        path = Path(self._url) / w_arr.path / w_arr.metadata.encode_chunk_key((s, 0))
        try:
            st = os.stat(path)
            ident: tuple[int, ...] = (a, b, st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            ident = (a, b)
        hit = self._mask_cache.get(s)
        if hit is not None and hit[0] == ident:
            return hit[1].copy()
        mask = np.array(w_arr[a:b], dtype=bool)
        self._mask_cache[s] = (ident, mask.copy())
        return mask

    def _log_index(self, s: int) -> tuple[np.ndarray, int, int]:
        """Shard ``s``'s slot log as its writer needs it: (logged (n, V) bool, slot count, end
        offset of the whole records); from this process's cache while the file is the one it
        last saw (caller holds the shard lock)."""
        log = self._slotlog()
        assert log is not None
        a, b = self.shard_bounds(s)
        path = log.path(s)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._log_cache.pop(s, None)
            return np.zeros((b - a, self.views), bool), 0, 0
        ident = (st.st_ino, st.st_size)
        hit = self._log_cache.get(s)
        if hit is not None and hit[0] == ident and hit[1].shape[0] == b - a:
            return hit[1], hit[2], hit[3]
        rows, views, end = read_slots(path)
        logged = np.zeros((b - a, self.views), bool)
        keep = rows < b - a
        logged[rows[keep], views[keep]] = True
        self._log_cache[s] = (ident, logged, len(rows), end)
        return logged, len(rows), end

    def compact(self, shards: Sequence[int] | None = None) -> int:
        """Merge the slot logs of ``shards`` (default: every shard with a log) into their shard
        files, one read-modify-write each under its lock. Returns the number of shards merged.
        Readers see the same slots before and after."""
        self._require_writable()
        log = self._slotlog()
        if log is None:
            return 0
        todo = log.shards() if shards is None else list(shards)
        for s in todo:
            with shard_lock(self._url, s):
                self.refresh()
                empty = np.zeros(0, np.int64)
                self._update_shard(s, empty, empty, np.zeros((0, self.dim or 0)), None, False)
        return len(todo)

    def missing_shards(self) -> list[int]:
        """Shards with any valid row (manifest.valid) not fully written, in order."""
        mask = self.written_mask()
        valid = self.manifest.valid
        out = []
        for s in range(self.num_shards):
            a, b = self.shard_bounds(s)
            if not mask[a:b][valid[a:b]].all():
                out.append(s)
        return out

    def _encode(self, block: np.ndarray) -> np.ndarray:
        scale = self._scale()
        if scale is None:
            return block.astype(np.float16, copy=False)
        q = np.rint(block.astype(np.float32) / scale)
        return np.clip(q, -127, 127).astype(np.int8)

    def refresh(self, force: bool = False) -> bool:
        """See the store's newest state (the one freshness mechanism: another process may have
        appended rows, attached the teacher or marked rows invalid). Drops the cached manifest,
        plan and array handles when N or the teacher changed and returns True then. Cheap when
        N and the teacher are unchanged on a local store (it reads the root ``zarr.json``), so
        every write calls it under its shard lock; ``force`` (and object storage) re-opens the
        group, for callers about to read-modify-write group attrs under the store lock."""
        if is_local(self._url) and not force:
            try:
                meta = json.loads((Path(local_path(self._url)) / "zarr.json").read_text())
                attrs = meta["attributes"]
                # the teachers as stored (the root one and every targets/NAME record)
                same = (
                    _get_path(attrs, "dataset.n") == self.n
                    and attrs.get("teacher") == self._raw.get("teacher")
                    and attrs.get("targets") == self._raw.get("targets")
                )
            except (OSError, ValueError, KeyError, TypeError):
                same = False
            if same:
                return False
        group = zarr.open_group(
            open_zarr_store(
                self._url, read_only=self._mode == "r", storage_options=self._storage_options
            ),
            mode=self._mode,  # type: ignore[arg-type]
        )
        old_n, old_teacher = self.n, self._attrs.get("teacher")
        self._group = group
        attrs = self._attrs = self._view(dict(group.attrs))
        changed = _get_path(attrs, "dataset.n") != old_n or attrs.get("teacher") != old_teacher
        if changed:
            self._manifest = None
            self._params = None
            self._arrays = {}
            self._mask_cache = {}
            self._log_cache = {}
            self._scale_cache = None
        return changed

    def write_shard(
        self,
        s: int,
        embeddings: np.ndarray,
        features: np.ndarray | None = None,
        written: np.ndarray | None = None,
    ) -> None:
        """Write shard ``s`` whole: embeddings (n, V, D) float32/float16, optional features
        (n, V, F), ``written`` (n, V) bool (default: rows with manifest.valid) replaces the mask.

        Overwrites every slot of the shard, written or not (use :meth:`merge_shard` to keep
        written slots). Under the shard lock; one call per array; the mask is written only after
        the data writes returned."""
        self._require_writable()
        with shard_lock(self._url, s):
            self.refresh()
            a, b = self.shard_bounds(s)
            n, v, d = b - a, self.views, self.dim
            emb = np.asarray(embeddings)
            if emb.shape != (n, v, d):
                raise StoreError(f"shard {s} embeddings shape {emb.shape} != {(n, v, d)}")
            if written is None:
                mask = np.repeat(self.manifest.valid[a:b, None], v, axis=1)
            else:
                mask = np.asarray(written, dtype=bool)
                if mask.shape != (n, v):
                    raise StoreError(f"shard {s} written shape {mask.shape} != {(n, v)}")
            feats = None if features is None else self._check_features(s, features, n)
            log = self._slotlog()
            if log is not None:  # every slot is replaced: logged ones too
                log.remove(s)
                self._log_cache.pop(s, None)
            self._array("embeddings")[a:b] = self._encode(emb)
            if feats is not None:
                self._array("features")[a:b] = feats
            self._array("written")[a:b] = mask

    def _check_features(self, s: int, features: np.ndarray, n: int) -> np.ndarray:
        f = self.features_dim
        if f is None:
            raise StoreError("this store has no features array (attach with features_dim)")
        feats = np.asarray(features)
        if feats.shape != (n, self.views, f):
            raise StoreError(f"shard {s} features shape {feats.shape} != {(n, self.views, f)}")
        return feats.astype(np.float16)

    def merge_shard(
        self,
        s: int,
        embeddings: np.ndarray,
        mask: np.ndarray,
        features: np.ndarray | None = None,
    ) -> int:
        """Store the slots of shard ``s`` where ``mask`` (n, V) bool is set and the store's
        ``written`` is not, from ``embeddings`` (n, V, D) float32 (and ``features`` (n, V, F)).

        One read-modify-write of the shard under its lock; slots already written (by any writer,
        also while the caller computed) keep their stored bytes exactly. Returns the number of
        slots written."""
        self._require_writable()
        with shard_lock(self._url, s):
            self.refresh()
            a, b = self.shard_bounds(s)
            n, v, d = b - a, self.views, self.dim
            emb = np.asarray(embeddings)
            want = np.asarray(mask, dtype=bool)
            if emb.shape != (n, v, d) or want.shape != (n, v):
                raise StoreError(
                    f"shard {s}: embeddings {emb.shape} / mask {want.shape} != {(n, v, d)} / "
                    f"{(n, v)}"
                )
            feats = None if features is None else self._check_features(s, features, n)
            rows, views = np.nonzero(want)
            enc = self._encode(emb[rows, views])
            return self._update_shard(
                s, rows, views, enc, None if feats is None else feats[rows, views], False
            )

    def write_slots(
        self,
        indices: np.ndarray | Sequence[int],
        views: np.ndarray | Sequence[int],
        vectors: np.ndarray,
        features: np.ndarray | None = None,
        overwrite: bool = False,
    ) -> int:
        """Write embeddings ``vectors`` (n, D) float32 into slots (``indices`` (n,) int rows,
        ``views`` (n,) int), optionally ``features`` (n, F); then mark them written.

        One read-modify-write per touched shard, under that shard's lock. Slots already written
        keep their stored bytes unless ``overwrite`` (the first writer of a slot wins, so a
        target never changes under a reader). Returns the number of slots written."""
        self._require_writable()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        vw = np.asarray(views, dtype=np.int64).reshape(-1)
        vec = np.asarray(vectors, dtype=np.float32)
        if len(vw) != len(idx) or vec.shape != (len(idx), self.dim):
            raise StoreError(
                f"write_slots: indices {idx.shape}, views {vw.shape}, vectors {vec.shape} do "
                f"not match (n,), (n,), (n, {self.dim})"
            )
        feats = None
        if features is not None:
            if self.features_dim is None:
                raise StoreError("this store has no features array (attach with features_dim)")
            feats = np.asarray(features, dtype=np.float32)
            if feats.shape != (len(idx), self.features_dim):
                raise StoreError(
                    f"features shape {feats.shape} != ({len(idx)}, {self.features_dim})"
                )
        if len(idx) and (idx.max() >= self.n or vw.max() >= self.views):
            self.refresh()  # rows appended since this handle was opened?
        if len(idx) and (
            idx.min() < 0 or idx.max() >= self.n or vw.min() < 0 or vw.max() >= self.views
        ):
            bad = np.flatnonzero((idx < 0) | (idx >= self.n) | (vw < 0) | (vw >= self.views))[0]
            raise StoreError(f"slot ({idx[bad]}, {vw[bad]}) out of range ({self.n}, {self.views})")
        enc = self._encode(vec[:, None])[:, 0]
        f16 = None if feats is None else feats.astype(np.float16)
        shards = idx // self.shard_size
        done = 0
        for s in np.unique(shards).tolist():
            sel = np.flatnonzero(shards == s)
            with shard_lock(self._url, s):
                self.refresh()
                a = s * self.shard_size
                rows, views, f_sel = idx[sel] - a, vw[sel], None if f16 is None else f16[sel]
                if self._slotlog() is None:  # fsspec URL: rewrite the shard
                    done += self._update_shard(s, rows, views, enc[sel], f_sel, overwrite)
                else:
                    done += self._log_slots(s, rows, views, enc[sel], f_sel, overwrite)
        return done

    def _log_slots(
        self,
        s: int,
        rows: np.ndarray,
        views: np.ndarray,
        enc: np.ndarray,
        feats: np.ndarray | None,
        overwrite: bool,
    ) -> int:
        """Under shard ``s``'s lock: append the slots (local ``rows``, ``views``; encoded
        ``enc`` (m, D), float16 ``feats`` (m, F)) to its slot log, skipping written ones unless
        ``overwrite``; merge the log into the shard once it holds ``COMPACT_FRACTION`` of the
        shard's slots."""
        log = self._slotlog()
        assert log is not None
        a, b = self.shard_bounds(s)
        logged, count, end = self._log_index(s)
        if not overwrite:
            mask = self._file_mask(s) | logged
            keep = ~mask[rows, views]
            rows, views, enc = rows[keep], views[keep], enc[keep]
            feats = None if feats is None else feats[keep]
        if len(rows) == 0:
            return 0
        record = encode_record(rows, views, enc, feats, overwrite)
        log.append(s, record, end)
        st = os.stat(log.path(s))
        logged[rows, views] = True
        count += len(rows)
        self._log_cache[s] = ((st.st_ino, st.st_size), logged, count, end + len(record))
        if count >= max(1, int(COMPACT_FRACTION * (b - a) * self.views)):
            empty = np.zeros(0, np.int64)
            self._update_shard(s, empty, empty, enc[:0], None, False)
        return len(np.unique(rows * self.views + views))

    def _update_shard(
        self,
        s: int,
        rows: np.ndarray,
        views: np.ndarray,
        enc: np.ndarray,
        feats: np.ndarray | None,
        overwrite: bool,
    ) -> int:
        """Under shard ``s``'s lock: merge its slot log into the shard and set slots (local
        ``rows``, ``views``) to encoded ``enc`` (m, D) and float16 ``feats`` (m, F); data first,
        then the mask, then the log is dropped. Returns the number of new slots set."""
        a, b = self.shard_bounds(s)
        w_arr = self._array("written")
        log = self._slotlog()
        records = log.read(s) if log is not None else None
        mask = np.array(w_arr[a:b], dtype=bool)
        merged = mask.copy()
        if records is not None:
            records.mark(merged)
        if not overwrite:
            keep = ~merged[rows, views]
            rows, views, enc = rows[keep], views[keep], enc[keep]
            feats = None if feats is None else feats[keep]
        logged = records is not None and len(records) > 0
        if len(rows) == 0 and not logged:
            return 0
        fresh = not mask.any()  # nothing in the file: its old bytes are orphans, skip reading
        emb_arr = self._array("embeddings")
        block = (
            np.zeros((b - a, *emb_arr.shape[1:]), emb_arr.dtype)
            if fresh
            else np.asarray(emb_arr[a:b])
        )
        f_arr = self._array("features") if self.features_dim is not None else None
        fblock = None
        if f_arr is not None and (
            feats is not None or (records is not None and records.has_features.any())
        ):
            fblock = (
                np.zeros((b - a, *f_arr.shape[1:]), np.float16) if fresh else np.asarray(f_arr[a:b])
            )
        if records is not None:
            records.apply(block, mask, fblock)
        block[rows, views] = enc
        emb_arr[a:b] = block
        if fblock is not None and f_arr is not None:
            if feats is not None:
                fblock[rows, views] = feats
            f_arr[a:b] = fblock
        mask[rows, views] = True
        w_arr[a:b] = mask
        if log is not None and logged:
            log.remove(s)  # last: until here a reader applies the log over the old file
        self._log_cache.pop(s, None)
        return len(np.unique(rows * self.views + views))

    def read_shard(self, s: int) -> ShardBlock:
        """Read shard ``s`` whole: embeddings dequantised to float32, written mask, params.

        Reads ``written`` before the embeddings (writers write them in the other order), so every
        slot the returned mask calls written holds its final bytes. Takes no lock."""
        a, b = self.shard_bounds(s)
        raw, written = self._read_raw(s)
        scale = self._scale()
        emb = raw.astype(np.float32) if scale is None else raw.astype(np.float32) * scale
        params = (
            self._params[a:b]
            if self._params is not None
            else np.asarray(self._array("views/params")[a:b], dtype=np.float32)
        )
        return ShardBlock(shard=s, start=a, stop=b, embeddings=emb, written=written, params=params)

    def _read_raw(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard ``s`` as stored, its slot log applied: ((n, V, D) float16/int8, (n, V) bool).

        The log is read first: one merged meanwhile has reached the shard file read after it
        (data, then mask, then the log's removal on the writer's side)."""
        a, b = self.shard_bounds(s)
        log = self._slotlog()
        records = None if log is None else log.read(s)
        written = np.array(self._array("written")[a:b], dtype=bool)
        raw = np.array(self._array("embeddings")[a:b])
        if records is not None:
            records.apply(raw, written)
        return raw, written

    def read_shard_raw(self, s: int) -> np.ndarray:
        """Embeddings of shard ``s`` as stored: (n, V, D) float16 or int8 (no dequantisation;
        slots in the slot log included)."""
        return self._read_raw(s)[0]

    def read_features(self, s: int) -> np.ndarray:
        """Features of shard ``s``: (n, V, F) float32 (slots in the slot log included)."""
        a, b = self.shard_bounds(s)
        log = self._slotlog()
        records = None if log is None else log.read(s)
        feats = np.array(self._array("features")[a:b], dtype=np.float16)
        if records is not None and records.features is not None:
            records.apply(None, np.zeros((b - a, self.views), bool), feats)
        return feats.astype(np.float32)

    def iter_blocks(self, seed: int, shards: Sequence[int] | None = None) -> Iterator[ShardBlock]:
        """Yield whole shards (default all) in the order ``default_rng(seed).permutation``."""
        order = list(range(self.num_shards)) if shards is None else list(shards)
        perm = np.random.default_rng(seed).permutation(len(order))
        for k in perm.tolist():
            yield self.read_shard(order[k])

    def write_slot(self, index: int, view: int, embedding: np.ndarray) -> None:
        """Write one (row, view) embedding (D,) float32, replacing a written one: a thin wrapper
        of :meth:`write_slots` (``overwrite=True``)."""
        vec = np.asarray(embedding, dtype=np.float32)
        if vec.shape != (self.dim,):
            raise StoreError(f"embedding shape {vec.shape} != ({self.dim},)")
        self.write_slots([index], [view], vec[None], overwrite=True)

    def _require_writable(self) -> None:
        if self._mode == "r":
            raise StoreError(f"store {self._url!r} is open read-only")

    def __repr__(self) -> str:
        return (
            f"EmbeddingStore({self._url!r}, n={self.n}, views={self.views}, dim={self.dim}, "
            f"shards={self.num_shards})"
        )


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, numpy scalars -> Python, recursively (what zarr attrs round-trip to)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_layout(views: int, shard_size: int, chunk_size: int | None, codec: str) -> int:
    """Check a new store's layout options; returns the inner chunk's rows (default: one chunk
    per shard, the fastest whole-shard I/O in bench/store_io.py). Raises ConfigError."""
    if views < 1:
        raise ConfigError(f"views must be >= 1, got {views}")
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    chunk = shard_size if chunk_size is None else chunk_size
    if chunk < 1 or shard_size % chunk:
        raise ConfigError(f"chunk_size {chunk} must divide shard_size {shard_size}")
    _compressors(codec)
    return chunk


def _new_group(url: str, overwrite: bool, storage_options: Mapping[str, Any] | None) -> zarr.Group:
    """An empty root group at ``url``; StoreError if a store exists there and not ``overwrite``."""
    if is_remote(url) and protocol(url) != "memory":
        _probe_remote(url, "cannot create store at", storage_options)
    zstore = open_zarr_store(url, read_only=False, storage_options=storage_options)
    try:
        with storage_errors(url, "cannot create store at"):
            exists = zarr.open_group(zstore, mode="r") is not None
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError, ValueError):
        exists = False
    if exists and not overwrite:
        raise StoreError(f"a store already exists at {url!r} (use overwrite)")
    return zarr.open_group(zstore, mode="w")


def _write_manifest(group: zarr.Group, manifest: Manifest) -> None:
    """``manifest/*``: one (N, ...) array per manifest field in 65,536-row chunks (sha256 as
    (N, 32) uint8, keys as strings) and the unusable samples' reasons in the ``errors`` attr."""
    n = len(manifest)
    mgroup = group.create_group("manifest")
    rows = max(1, min(n, 1 << 16))
    for name in _MANIFEST_FIELDS:
        arr = np.asarray(getattr(manifest, name))
        if name == "sha256":
            arr = sha256_to_bytes(arr)
        if arr.dtype.kind == "U":  # keys: no core-spec string type exists
            za = mgroup.create_array(name, shape=(n,), chunks=(rows,), dtype=str)
        else:
            za = mgroup.create_array(
                name,
                shape=arr.shape,
                chunks=(rows, *arr.shape[1:]),
                dtype=arr.dtype,
                compressors=None,  # zarr's default (zstd) is not a core-spec codec
            )
        if n:
            za[:] = arr
    mgroup.attrs.update({"errors": dict(manifest.errors)})


def _write_params(group: zarr.Group, params: np.ndarray, shard_size: int) -> None:
    """``views/params``: the (N, V, P) float32 view plan, chunked by shard."""
    vgroup = group.create_group("views")
    pa = vgroup.create_array(
        "params",
        shape=params.shape,
        chunks=(shard_size, *params.shape[1:]),
        dtype="float32",
        compressors=None,
        fill_value=0.0,
    )
    if len(params):
        pa[:] = params
