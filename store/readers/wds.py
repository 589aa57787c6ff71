"""``wds:PATTERN``: WebDataset tar shards, read by row with one ranged read per image.

``PATTERN`` is a shard path or fsspec URL with brace ranges (``/data/train-{000000..000146}.tar``,
``s3://bucket/in1k/train-{0000..1023}.tar``); shards are taken in the order the pattern expands.
A sample is the run of consecutive members sharing a ``__key__`` (the member name up to the first
dot of its file name, as webdataset groups them); its key is that ``__key__``. The image is the
sample's first member with an extension in ``image=`` (default ``jpg, jpeg, png, webp, ppm, bmp,
tif, tiff``), its label the text of its ``cls`` member (``label=EXT`` names another; ``label=``
with no value: unlabelled): an integer, or a class name.

Training reads samples in any order, so the shards are indexed once: each image member's (shard,
byte offset, size) is found from the tar headers (a pool over shards) and cached under
``$DISCO_INDEX_CACHE`` (default ``~/.cache/disco/wds-index``) in a file named by a hash of the
shard URLs, sizes and modification stamps, so any process on the machine reuses it and a changed
shard is indexed again. Reading sample ``i`` is then one ranged read of ``size`` bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from store.atomic import atomic_write
from store.errors import DatasetError, DecodeError
from store.readers.encoded import EncodedDataset
from store.readers.extras import require
from store.readers.options import check_options, first_duplicate, label_values
from store.remote import storage_errors, storage_options_for, url_to_fs

__all__ = ["IMAGE_EXTENSIONS", "INDEX_VERSION", "WebDatasetShards", "index_cache_dir", "open_wds"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")
INDEX_VERSION = "disco-wds-index/1"
OPTIONS = ("image", "label")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")  # webdataset's base_plus_ext


def index_cache_dir() -> Path:
    """``$DISCO_INDEX_CACHE`` if set, else ``~/.cache/disco/wds-index``."""
    env = os.environ.get("DISCO_INDEX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "disco" / "wds-index"


def _index_shard(
    fs: Any, path: str, image_exts: Sequence[str], label_ext: str
) -> tuple[list[str], list[int], list[int], list[str]]:
    """(keys, image offsets, image sizes, raw label texts) of one tar shard, in member order."""
    keys: list[str] = []
    offsets: list[int] = []
    sizes: list[int] = []
    labels: list[str] = []
    rank = {ext: r for r, ext in enumerate(image_exts)}
    current: str | None = None
    best: tuple[int, int, int] | None = None  # (rank, offset, size) of the sample's image
    label = ""

    def close() -> None:
        if current is not None and best is not None:
            keys.append(current)
            offsets.append(best[1])
            sizes.append(best[2])
            labels.append(label)

    try:
        with fs.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                match = _KEY_EXT.match(member.name)
                if match is None or os.path.basename(member.name).startswith((".", "__")):
                    continue
                key, ext = match.group(1), match.group(2).lower()
                if key != current:
                    close()
                    current, best, label = key, None, ""
                if ext in rank and (best is None or rank[ext] < best[0]):
                    best = (rank[ext], member.offset_data, member.size)
                elif label_ext and ext == label_ext:
                    fh = tar.extractfile(member)
                    label = fh.read().decode("utf-8", "replace").strip() if fh else ""
            close()
    except (OSError, tarfile.TarError) as exc:
        raise DatasetError(f"wds: cannot index shard {path!r}: {exc}") from None
    return keys, offsets, sizes, labels


class WebDatasetShards(EncodedDataset):
    """Samples of WebDataset tar shards (see module docstring)."""

    def __init__(
        self,
        spec: str,
        url: str,
        storage_options: dict[str, Any],
        shards: Sequence[str],
        image_exts: Sequence[str] = IMAGE_EXTENSIONS,
        label_ext: str = "cls",
        workers: int = 8,
        max_pixels: int | None = None,
    ) -> None:
        if not shards:
            raise DatasetError(f"{spec}: the pattern names no shard")
        self.spec = spec
        self.url, self.storage_options = url, storage_options
        self.shards = list(shards)
        fs = self.fs
        self.max_pixels = max_pixels
        ident = self._identity(image_exts, label_ext, workers)
        cache = index_cache_dir() / f"{hashlib.sha256(ident.encode()).hexdigest()[:32]}.npz"
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as z:
                shard, offset, size = z["shard"], z["offset"], z["size"]
                keys, raw_labels = z["keys"].tolist(), z["labels"].tolist()
        else:
            with ThreadPoolExecutor(max(1, min(workers, len(self.shards)))) as pool:
                parts = list(
                    pool.map(lambda p: _index_shard(fs, p, image_exts, label_ext), self.shards)
                )
            shard = np.concatenate(
                [np.full(len(p[0]), s, dtype=np.int32) for s, p in enumerate(parts)]
            )
            offset = np.asarray([o for p in parts for o in p[1]], dtype=np.int64)
            size = np.asarray([s for p in parts for s in p[2]], dtype=np.int64)
            keys = [k for p in parts for k in p[0]]
            raw_labels = [lab for p in parts for lab in p[3]]
            if keys:
                with atomic_write(cache) as fh:
                    np.savez(
                        fh,
                        shard=shard,
                        offset=offset,
                        size=size,
                        keys=np.asarray(keys, dtype=str),
                        labels=np.asarray(raw_labels, dtype=str),
                    )
        if not keys:
            exts = ", ".join(image_exts)
            raise DatasetError(f"{spec}: no sample with an image member ({exts}) in the shards")
        dup = first_duplicate(keys)
        if dup is not None:
            raise DatasetError(f"{spec}: the __key__ {dup!r} appears twice; keys must be unique")
        self._shard, self._offset, self._size = shard, offset, size
        self.keys = [str(k) for k in keys]
        if label_ext:
            self.labels, self.classes = label_values(raw_labels)
        else:
            self.labels, self.classes = np.full(len(keys), -1, dtype=np.int64), []

    def _identity(self, image_exts: Sequence[str], label_ext: str, workers: int) -> str:
        """What the index depends on: version, options, each shard's URL, size and stamp (one
        metadata request per shard, in a thread pool: on object storage each is a round trip)."""

        def stamp(path: str) -> list[Any]:
            try:
                info = self.fs.info(path)
            except OSError as exc:
                raise DatasetError(f"{self.spec}: cannot read shard {path!r}: {exc}") from None
            keys = ("size", "mtime", "ETag", "LastModified", "etag", "created")
            return [self.fs.unstrip_protocol(path), {k: info.get(k) for k in keys}]

        with ThreadPoolExecutor(max(1, min(workers, len(self.shards)))) as pool:
            stamps = list(pool.map(stamp, self.shards))
        return json.dumps(
            [INDEX_VERSION, list(image_exts), label_ext, stamps], sort_keys=True, default=str
        )

    def read_bytes(self, i: int) -> bytes:
        """The image member of sample ``i``: one ranged read of its bytes."""
        path = self.shards[int(self._shard[i])]
        start = int(self._offset[i])
        try:
            data = self.fs.cat_file(path, start=start, end=start + int(self._size[i]))
        except (OSError, ValueError) as exc:
            raise DecodeError(self.keys[i], f"cannot read from {path!r}: {exc}") from None
        return bytes(data)


def expand_pattern(pattern: str, spec: str = "wds") -> list[str]:
    """Brace-expanded shard URLs of ``pattern`` (``a-{0..2}.tar`` -> ``a-0.tar, a-1.tar, ...``)."""
    return list(require("braceexpand", spec).braceexpand(pattern))


def open_wds(
    spec: str,
    pattern: str | None,
    options: Mapping[str, str],
    storage_options: Mapping[str, Any] | None = None,
) -> WebDatasetShards:
    """The ``wds:PATTERN`` dataset (see module docstring)."""
    check_options(spec, options, OPTIONS)
    if not pattern:
        raise DatasetError("wds needs a shard pattern: wds:PATH/train-{000..099}.tar")
    urls = expand_pattern(pattern, spec)
    options_ = storage_options_for(urls[0], storage_options)
    image = options.get("image")
    exts = tuple(e.strip().lower().lstrip(".") for e in image.split(",")) if image else None
    label = options.get("label", "cls").lower().lstrip(".")
    with storage_errors(urls[0], "wds: cannot read"):
        paths = [url_to_fs(u, options_)[1] for u in urls]
        return WebDatasetShards(spec, urls[0], options_, paths, exts or IMAGE_EXTENSIONS, label)
