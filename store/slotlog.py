"""The slot log: single-slot writes of a local store appended to a per-shard log, not merged into
the shard file at once.

A shard file is rewritten whole on every change (zarr sharding), so writing a few slots into it
costs a read-modify-write of the whole shard (48 MB at V 8, D 768, 4,096 rows). The service's
write-through and lazy fill write a few dozen slots per request, so ``EmbeddingStore.write_slots``
appends them instead to ``<store>/.wal/shard-NNNNN.log`` and merges the log into the shard only
when it holds a quarter of the shard's slots (or when a whole-shard writer, ``merge_shard``, comes
by; or on ``disco store compact``).

One record per call, appended with a single ``write`` under the shard's lock (little-endian)::

    header  "DWAL" | version u8 | flags u8 (1: features, 2: overwrite) | 2 pad | m u32 | D u32
            | F u32 | dtype u8 (0 float16, 1 int8) | 3 pad                           (24 bytes)
    rows    (m,) u32 shard-local rows         views (m,) u16
    data    (m, D) embeddings as stored (float16, or int8 under the store's scales)
    feats   (m, F) float16 (flag 1)
    crc32   u32 over everything before it

A record is the slot's data and its written mark at once: a reader applies the records whose
length and checksum are whole, in order, over the shard file's data and ``written`` mask, so it
never sees a slot marked written without its bytes, and a record cut short by a crash is ignored
(the next writer truncates it before appending). ``write`` returns before the call acknowledges,
so ``kill -9`` of the writer loses nothing acknowledged; with ``FSYNC`` (``DISCO_STORE_FSYNC=1``)
the record is also on disk (``fdatasync``) before the call returns, so a power loss does not lose
it either (zarr's shard writes are not synced either).

Merging (``compact``): read the shard, apply the log, write data, then mask, then remove the log,
all under the shard lock. A crash between the writes and the removal leaves a log whose records
repeat bytes the shard already holds: applying it again changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FSYNC", "WAL_DIR", "SlotLog", "SlotRecords", "wal_path"]

WAL_DIR = ".wal"
"""Directory of slot logs inside a local store (zarr ignores it, as ``.locks``)."""
FSYNC = os.environ.get("DISCO_STORE_FSYNC", "") not in ("", "0")
"""``fdatasync`` each record before ``write_slots`` returns (``DISCO_STORE_FSYNC=1``). Off by
default, as zarr's own LocalStore writes: an acknowledged slot survives ``kill -9`` either way;
only a power loss can lose it without the sync (~5 ms per shard touched, measured here)."""
_MAGIC = b"DWAL"
_HEADER = struct.Struct("<4sBBHIIIB3x")
_VERSION = 1
_F_FEATURES = 1
_F_OVERWRITE = 2
_DTYPES: dict[int, np.dtype[Any]] = {0: np.dtype("<f2"), 1: np.dtype("i1")}
_CODES: dict[np.dtype[Any], int] = {np.dtype("float16"): 0, np.dtype("int8"): 1}


def wal_path(url: str, shard: int) -> Path:
    """Path of shard ``shard``'s slot log in the local store at ``url``."""
    return Path(url) / WAL_DIR / f"shard-{shard:05d}.log"


@dataclass
class SlotRecords:
    """The whole records of one slot log, concatenated in log order."""

    rows: np.ndarray
    """(m,) int64 shard-local rows."""
    views: np.ndarray
    """(m,) int64 views."""
    data: np.ndarray
    """(m, D) embeddings as stored (float16 or int8)."""
    features: np.ndarray | None
    """(m, F) float16, or None when no record carries features."""
    has_features: np.ndarray
    """(m,) bool: the record of this slot carried features."""
    end: int
    """Byte offset after the last whole record (a torn tail starts here)."""

    def __len__(self) -> int:
        return len(self.rows)

    def mask(self, rows: int, views: int) -> np.ndarray:
        """(rows, views) bool: the slots the log marks written."""
        out = np.zeros((rows, views), dtype=bool)
        out[self.rows, self.views] = True
        return out

    def mark(self, mask: np.ndarray) -> None:
        """Set the logged slots in ``mask`` (n, V) bool, in place."""
        keep = self.rows < mask.shape[0]  # a shard read before an append grew it
        mask[self.rows[keep], self.views[keep]] = True

    def apply(
        self, block: np.ndarray | None, mask: np.ndarray, features: np.ndarray | None = None
    ) -> None:
        """Write the logged slots into ``block`` (n, V, D) stored-dtype data, ``mask`` (n, V) and
        ``features`` (n, V, F) in place, in log order (a later record of a slot wins)."""
        if not len(self):
            return
        keep = self.rows < mask.shape[0]  # a shard read before an append grew it
        rows, views = self.rows[keep], self.views[keep]
        if block is not None:
            block[rows, views] = self.data[keep].astype(block.dtype, copy=False)
        mask[rows, views] = True
        if features is not None and self.features is not None:
            sel = keep & self.has_features
            features[self.rows[sel], self.views[sel]] = self.features[sel]


def _empty(dim: int, fdim: int | None, dtype: np.dtype) -> SlotRecords:
    return SlotRecords(
        rows=np.zeros(0, np.int64),
        views=np.zeros(0, np.int64),
        data=np.zeros((0, dim), dtype),
        features=None if fdim is None else np.zeros((0, fdim), np.float16),
        has_features=np.zeros(0, bool),
        end=0,
    )


def encode_record(
    rows: np.ndarray,
    views: np.ndarray,
    data: np.ndarray,
    features: np.ndarray | None,
    overwrite: bool,
) -> bytes:
    """One log record: ``rows``/``views`` (m,) shard-local slots, ``data`` (m, D) float16/int8,
    ``features`` (m, F) float16 or None."""
    m, dim = data.shape
    fdim = 0 if features is None else features.shape[1]
    flags = (_F_FEATURES if features is not None else 0) | (_F_OVERWRITE if overwrite else 0)
    parts = [
        _HEADER.pack(_MAGIC, _VERSION, flags, 0, m, dim, fdim, _CODES[np.dtype(data.dtype)]),
        np.ascontiguousarray(rows, dtype="<u4").tobytes(),
        np.ascontiguousarray(views, dtype="<u2").tobytes(),
        np.ascontiguousarray(data).tobytes(),
    ]
    if features is not None:
        parts.append(np.ascontiguousarray(features, dtype="<f2").tobytes())
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def parse(buf: bytes, dim: int, fdim: int | None, dtype: np.dtype, start: int = 0) -> SlotRecords:
    """The whole records of ``buf`` from byte ``start`` on; parsing stops at the first record that
    is cut short or fails its checksum (``end`` says where)."""
    rows, views, data, feats, has = [], [], [], [], []
    pos = start
    size = len(buf)
    while pos + _HEADER.size <= size:
        magic, version, flags, _, m, d, f, code = _HEADER.unpack_from(buf, pos)
        if magic != _MAGIC or version != _VERSION or d != dim or code not in _DTYPES:
            break
        item = _DTYPES[code].itemsize
        length = _HEADER.size + m * (4 + 2 + d * item) + (m * f * 2 if flags & _F_FEATURES else 0)
        if pos + length + 4 > size:
            break
        (crc,) = struct.unpack_from("<I", buf, pos + length)
        if zlib.crc32(memoryview(buf)[pos : pos + length]) != crc:
            # Whole length, wrong bytes: only a power loss without FSYNC leaves this; skip it so
            # the records after it (whose writers saw it as whole) still count.
            pos += length + 4
            continue
        off = pos + _HEADER.size
        rows.append(np.frombuffer(buf, "<u4", m, off).astype(np.int64))
        off += 4 * m
        views.append(np.frombuffer(buf, "<u2", m, off).astype(np.int64))
        off += 2 * m
        data.append(np.frombuffer(buf, _DTYPES[code], m * d, off).reshape(m, d))
        off += m * d * item
        if flags & _F_FEATURES and fdim is not None and f == fdim:
            feats.append(np.frombuffer(buf, "<f2", m * f, off).reshape(m, f))
            has.append(np.ones(m, bool))
        else:
            if fdim is not None:
                feats.append(np.zeros((m, fdim), np.float16))
            has.append(np.zeros(m, bool))
        pos += length + 4
    if not rows:
        out = _empty(dim, fdim, dtype)
        out.end = pos
        return out
    return SlotRecords(
        rows=np.concatenate(rows),
        views=np.concatenate(views),
        data=np.concatenate(data).astype(dtype, copy=False),
        features=None if fdim is None else np.concatenate(feats),
        has_features=np.concatenate(has),
        end=pos,
    )


class SlotLog:
    """The slot logs of one local store: read (any process, no lock) and append (under the
    shard's lock; see :class:`store.embedding_store.EmbeddingStore`)."""

    def __init__(self, url: str, dim: int, fdim: int | None, dtype: str) -> None:
        self.url = url
        self.dim = dim
        self.fdim = fdim
        self.dtype = np.dtype(dtype)

    def path(self, shard: int) -> str:
        """This store's log of shard ``shard``."""
        return os.path.join(self.url, WAL_DIR, f"shard-{shard:05d}.log")

    def read(self, shard: int) -> SlotRecords:
        """The whole records of shard ``shard``'s log (none when it has no log)."""
        try:
            with open(self.path(shard), "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            return _empty(self.dim, self.fdim, self.dtype)
        return parse(buf, self.dim, self.fdim, self.dtype)

    def shards(self) -> list[int]:
        """Shards that have a log now, sorted."""
        folder = Path(self.url) / WAL_DIR
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if name.startswith("shard-") and name.endswith(".log"):
                try:
                    out.append(int(name[6:-4]))
                except ValueError:
                    continue
        return sorted(out)

    def append(self, shard: int, record: bytes, end: int) -> None:
        """Append ``record`` to shard ``shard``'s log whose whole records end at byte ``end``
        (a torn tail beyond it, left by a crash, is cut first). Caller holds the shard lock."""
        path = self.path(shard)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the first log of this store
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            if os.fstat(fd).st_size != end:
                os.ftruncate(fd, end)
            os.lseek(fd, end, os.SEEK_SET)
            view = memoryview(record)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if FSYNC:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    def remove(self, shard: int) -> None:
        """Drop shard ``shard``'s log (after its records reached the shard file)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(shard))


def read_slots(path: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """``(rows, views, end)``: (m,) int64 slots of the records of the log at ``path`` and the
    byte offset after the last whole one, reading only headers and slot lists (the data is
    skipped, so a store's whole mask costs ~6 bytes per logged slot). Records are checked for
    magic and length, not checksum (:func:`parse` checks both)."""
    rows: list[np.ndarray] = []
    views: list[np.ndarray] = []
    pos = 0
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; a missing log is an empty one
    except FileNotFoundError:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    with f:
        size = os.fstat(f.fileno()).st_size
        while pos + _HEADER.size <= size:
            f.seek(pos)
            head = f.read(_HEADER.size)
            if len(head) < _HEADER.size:
                break
            magic, version, flags, _, m, d, fd, code = _HEADER.unpack(head)
            if magic != _MAGIC or version != _VERSION or code not in _DTYPES:
                break
            item = _DTYPES[code].itemsize
            length = _HEADER.size + m * (6 + d * item) + (m * fd * 2 if flags & _F_FEATURES else 0)
            if pos + length + 4 > size:
                break
            slots = f.read(6 * m)
            rows.append(np.frombuffer(slots, "<u4", m, 0).astype(np.int64))
            views.append(np.frombuffer(slots, "<u2", m, 4 * m).astype(np.int64))
            pos += length + 4
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), pos
    return np.concatenate(rows), np.concatenate(views), pos
