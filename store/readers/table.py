"""``hfds:PATH`` and ``parquet:PATH``: images held in Arrow or Parquet tables, read by row.

Both read a table with an image column and an optional label column, local or at any fsspec URL:

* ``hfds:PATH`` — a Hugging Face dataset on disk: a ``save_to_disk`` folder (its Arrow files,
  memory-mapped), or the Parquet/Arrow files of a hub dataset (``PATH/data/train-*.parquet``). A
  ``DatasetDict`` folder is refused with its split names (point at ``PATH/<split>``).
* ``parquet:PATH`` — one Parquet file, a folder of them (sorted, recursive) or a glob.

Image column (option ``image=``; default: the column whose Hugging Face feature is ``Image``, else
the first of ``image, img, jpg, jpeg, png, webp``): encoded bytes (``binary``), a Hugging Face
``Image`` struct (``{bytes, path}``), or a string path/URL (relative paths are taken from the
table file's folder). Label column (``label=``; default the first of ``label, labels, cls,
class``; ``label=`` with no value: unlabelled): integers (names from a ``ClassLabel`` feature when
there is one) or class-name strings. Keys (``key=COLUMN``; default the row number ``"0".."N-1"``,
a stable row id of the table in file order). Content hash: sha256 of the encoded image bytes.

Random access reads one row group of the image column (Parquet; Hugging Face writes 100 images per
group) or slices the memory-mapped Arrow file; the last :data:`GROUP_CACHE` groups stay in memory
per process, so rows read in table order cost one group read per group. A random read of a
Parquet row costs about one row group's read (``bench/datasets.py``): keep groups small (16
images) for training from Parquet. An Arrow file at a URL is read whole into memory once per
process (for large remote data use Parquet or WebDataset).
"""

from __future__ import annotations

import json
import posixpath
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from store.errors import DatasetError, DecodeError
from store.readers.encoded import EncodedDataset
from store.readers.extras import require
from store.readers.options import check_options, first_duplicate, label_values
from store.remote import storage_errors, storage_options_for, url_to_fs

__all__ = ["GROUP_CACHE", "TableDataset", "open_hfds", "open_parquet"]

IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp")
LABEL_COLUMNS = ("label", "labels", "cls", "class")
OPTIONS = ("image", "label", "key")
GROUP_CACHE = 2
"""Row groups of the image column kept in memory per process (sequential reads hit them)."""


def _is_local(fs: Any) -> bool:
    return isinstance(fs, LocalFileSystem)


def _find(fs: Any, path: str, suffixes: tuple[str, ...], spec: str) -> list[str]:
    """Sorted files under ``path`` (a file, folder or glob) whose names end with ``suffixes``."""
    if any(c in path for c in "*?["):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = [
            p
            for p in fs.find(path)
            if not any(part.startswith(".") for part in p[len(path) :].split("/"))
        ]
    elif fs.isfile(path):
        return [path]
    else:
        raise DatasetError(f"{spec}: {path!r}: no such file or folder")
    return sorted(p for p in found if p.lower().endswith(suffixes))


def _hf_features(schema: Any) -> dict[str, Any]:
    """The Hugging Face ``features`` dict stored in an Arrow schema's metadata ({} if none)."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return {}
    try:
        info = json.loads(meta)
    except ValueError:
        return {}
    features = info.get("info", {}).get("features", {})
    return features if isinstance(features, dict) else {}


class TableDataset(EncodedDataset):
    """Rows of Parquet or Arrow (IPC stream) files as images (see module docstring).

    ``url``/``storage_options``: where the files are (``store.remote``); ``files``: paths in
    that filesystem, in table order; ``fmt``: "parquet" or "arrow"; ``image``/``label``
    /``key``: column names (``label`` "" = unlabelled, None = the default choice).
    """

    _transient = ("_handles", "_cache", "_lock")

    def __init__(
        self,
        spec: str,
        url: str,
        storage_options: dict[str, Any],
        files: Sequence[str],
        fmt: str,
        image: str | None = None,
        label: str | None = None,
        key: str | None = None,
        max_pixels: int | None = None,
    ) -> None:
        if not files:
            raise DatasetError(f"{spec}: no {fmt} files")
        self.spec = spec
        self.url, self.storage_options = url, storage_options
        self.files = list(files)
        self.fmt = fmt
        self.max_pixels = max_pixels
        self._init_transient()
        schema = self._schema(0)
        features = _hf_features(schema)
        names = list(schema.names)
        self.image_column = image or self._default_image(names, features)
        if self.image_column not in names:
            raise DatasetError(
                f"{spec}: no image column {self.image_column!r}; columns: {', '.join(names)}"
            )
        self.image_kind = self._kind(schema.field(self.image_column).type)
        if label is None:
            label = next((c for c in LABEL_COLUMNS if c in names), "")
        if label and label not in names:
            raise DatasetError(f"{spec}: no label column {label!r}; columns: {', '.join(names)}")
        if key and key not in names:
            raise DatasetError(f"{spec}: no key column {key!r}; columns: {', '.join(names)}")
        self.label_column, self.key_column = label, key
        sizes: list[int] = []
        group_file: list[int] = []
        group_index: list[int] = []
        label_raw: list[object] = []
        key_raw: list[object] = []
        for f in range(len(self.files)):
            if self._schema(f).names != names:
                raise DatasetError(f"{spec}: {self.files[f]!r} has other columns than the first")
            for g, rows in enumerate(self._group_sizes(f)):
                sizes.append(rows)
                group_file.append(f)
                group_index.append(g)
            for column, out in ((label, label_raw), (key, key_raw)):
                if column:
                    out.extend(self._read_column(f, column))
        self._group_file = np.asarray(group_file, dtype=np.int32)
        self._group_index = np.asarray(group_index, dtype=np.int32)
        self._group_start = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        n = int(self._group_start[-1])
        if n == 0:
            raise DatasetError(f"{spec}: the table has no rows")
        self.keys = [str(k) for k in key_raw] if key else [str(i) for i in range(n)]
        dup = first_duplicate(self.keys)
        if dup is not None:
            raise DatasetError(f"{spec}: key column {key!r} repeats {dup!r}; keys must be unique")
        if label:
            names_hf = features.get(label, {}).get("names") if features else None
            self.labels, self.classes = label_values(label_raw, names_hf)
        else:
            self.labels, self.classes = np.full(n, -1, dtype=np.int64), []

    def _init_transient(self) -> None:
        self._handles: dict[int, Any] = {}
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _default_image(names: list[str], features: dict[str, Any]) -> str:
        for name in names:
            feat = features.get(name)
            if isinstance(feat, dict) and feat.get("_type") == "Image":
                return name
        return next((c for c in IMAGE_COLUMNS if c in names), IMAGE_COLUMNS[0])

    def _kind(self, dtype: Any) -> str:
        pa = require("pyarrow", self.spec)
        if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype):
            return "bytes"
        if pa.types.is_struct(dtype) and dtype.get_field_index("bytes") >= 0:
            return "struct"
        if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
            return "path"
        raise DatasetError(
            f"{self.spec}: image column {self.image_column!r} has type {dtype}; expected encoded "
            "bytes, a Hugging Face Image {bytes, path} struct, or a path/URL string"
        )

    # -- file access (per process) --------------------------------------------------------------

    def _open(self, f: int) -> Any:
        """The open ParquetFile, or the (memory-mapped) Arrow table, of file ``f``."""
        self._this_process()
        handle = self._handles.get(f)
        if handle is None:
            pa = require("pyarrow", self.spec)
            pq = require("pyarrow.parquet", self.spec)
            path = self.files[f]
            try:
                if self.fmt == "parquet" and _is_local(self.fs):
                    # Native memory-mapped reads: half the cost of reading through a Python file.
                    handle = pq.ParquetFile(path, memory_map=True)
                elif self.fmt == "parquet":
                    handle = pq.ParquetFile(self.fs.open(path, "rb"))
                else:
                    source = (
                        pa.memory_map(path)
                        if _is_local(self.fs)
                        else pa.BufferReader(self.fs.cat_file(path))
                    )
                    handle = pa.ipc.open_stream(source).read_all()
            except (OSError, pa.ArrowInvalid) as exc:
                raise DatasetError(f"{self.spec}: cannot read {path!r}: {exc}") from None
            self._handles[f] = handle
        return handle

    def _schema(self, f: int) -> Any:
        handle = self._open(f)
        return handle.schema_arrow if self.fmt == "parquet" else handle.schema

    def _group_sizes(self, f: int) -> list[int]:
        handle = self._open(f)
        if self.fmt == "parquet":
            meta = handle.metadata
            return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        return [handle.num_rows]

    def _read_column(self, f: int, column: str) -> list[object]:
        handle = self._open(f)
        table = handle.read(columns=[column]) if self.fmt == "parquet" else handle
        return table.column(column).to_pylist()

    def _group(self, g: int) -> Any:
        """The image column (ChunkedArray) of global row group ``g``, through the LRU cache."""
        self._this_process()
        with self._lock:  # one reader of a file at a time (the service reads from threads)
            col = self._cache.get(g)
            if col is not None:
                self._cache.move_to_end(g)
                return col
            handle = self._open(int(self._group_file[g]))
            if self.fmt == "parquet":
                # One group is one small read: a thread pool costs more CPU than it saves here.
                table = handle.read_row_group(
                    int(self._group_index[g]), columns=[self.image_column], use_threads=False
                )
                col = table.column(0)
            else:
                col = handle.column(self.image_column)
            self._cache[g] = col
            while len(self._cache) > GROUP_CACHE:
                self._cache.popitem(last=False)
            return col

    def read_bytes(self, i: int) -> bytes:
        """Encoded bytes of row ``i`` (from the table, or the file its path names)."""
        key = self.keys[i]
        g = int(np.searchsorted(self._group_start, i, side="right")) - 1
        try:
            value = self._group(g)[i - int(self._group_start[g])]
        except (OSError, ValueError) as exc:
            raise DecodeError(key, f"cannot read row {i}: {exc}") from None
        path: str | None = None
        data: bytes | None = None
        if self.image_kind == "bytes":
            data = value.as_py()
        elif self.image_kind == "struct":
            data = value["bytes"].as_py() if value.is_valid else None
            if data is None and value.is_valid:
                path = value["path"].as_py()
        else:
            path = value.as_py()
        if path:
            return self._read_path(path, int(self._group_file[g]), key)
        if data is None:
            raise DecodeError(key, f"row {i} has no image (null {self.image_column!r})")
        return bytes(data)

    def _read_path(self, path: str, f: int, key: str) -> bytes:
        """The file a row names: a URL, or a path relative to its table file ``f``'s folder."""
        try:
            if "://" in path:
                protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else ()
                same = path.split("://", 1)[0] in (protocols or (self.fs.protocol,))
                options = self.fs.storage_options if same else {}  # never send keys elsewhere
                with fsspec.open(path, "rb", **options) as fh:
                    return bytes(fh.read())
            folder = posixpath.dirname(self.files[f])
            full = path if path.startswith("/") else posixpath.join(folder, path)
            return bytes(self.fs.cat_file(full))
        except (OSError, ValueError) as exc:
            raise DecodeError(key, f"cannot read {path!r}: {exc}") from None


def _split_names(files: Sequence[str]) -> list[str]:
    """Hub-layout split names (``train-00000-of-00004.parquet`` -> ``train``) of ``files``."""
    names = set()
    for f in files:
        m = re.match(r"(.+?)-\d{5}-of-\d{5}\.", posixpath.basename(f))
        names.add(m.group(1) if m else "")
    return sorted(names)


def open_hfds(
    spec: str,
    path: str | None,
    options: Mapping[str, str],
    storage_options: Mapping[str, Any] | None = None,
) -> TableDataset:
    """The ``hfds:PATH`` dataset (see module docstring); bad paths raise DatasetError."""
    check_options(spec, options, OPTIONS)
    if not path:
        raise DatasetError("hfds needs a path: hfds:PATH (a save_to_disk folder or Parquet files)")
    options_ = storage_options_for(path, storage_options)
    with storage_errors(path, "hfds: cannot read"):
        fs, root = url_to_fs(path, options_)
        files, fmt = _hfds_files(spec, path, fs, root)
        return TableDataset(
            spec, path, options_, files, fmt,
            image=options.get("image"), label=options.get("label"), key=options.get("key"),
        )  # fmt: skip


def _hfds_files(spec: str, path: str, fs: Any, root: str) -> tuple[list[str], str]:
    """(table files in order, "arrow" or "parquet") of the Hugging Face dataset at ``root``."""
    if fs.isdir(root) and fs.isfile(posixpath.join(root, "dataset_dict.json")):
        with fs.open(posixpath.join(root, "dataset_dict.json"), "rb") as fh:
            splits = json.load(fh).get("splits", [])
        raise DatasetError(
            f"{path!r} is a DatasetDict with splits {', '.join(splits)}; "
            f"point at one of them, e.g. hfds:{path.rstrip('/')}/{splits[0] if splits else 'train'}"
        )
    state_path = posixpath.join(root, "state.json")
    if fs.isdir(root) and fs.isfile(state_path):
        with fs.open(state_path, "rb") as fh:
            state = json.load(fh)
        files = [posixpath.join(root, f["filename"]) for f in state.get("_data_files", [])]
        fmt = "arrow"
    else:
        files = _find(fs, root, (".parquet", ".arrow"), spec)
        kinds = {f.rsplit(".", 1)[-1].lower() for f in files}
        if len(kinds) > 1:
            raise DatasetError(f"{path!r} mixes .parquet and .arrow files; point at one kind")
        splits = _split_names(files)
        if len(splits) > 1:
            raise DatasetError(
                f"{path!r} holds the splits {', '.join(s or '?' for s in splits)}; point at one, "
                f"e.g. hfds:{path.rstrip('/')}/**/{splits[-1]}-*.parquet"
            )
        fmt = kinds.pop() if kinds else "parquet"
    if not files:
        raise DatasetError(f"hfds: no Arrow or Parquet files under {path!r}")
    return files, fmt


def open_parquet(
    spec: str,
    path: str | None,
    options: Mapping[str, str],
    storage_options: Mapping[str, Any] | None = None,
) -> TableDataset:
    """The ``parquet:PATH`` dataset (see module docstring); bad paths raise DatasetError."""
    check_options(spec, options, OPTIONS)
    if not path:
        raise DatasetError("parquet needs a path: parquet:PATH (a file, folder or glob)")
    options_ = storage_options_for(path, storage_options)
    with storage_errors(path, "parquet: cannot read"):
        fs, root = url_to_fs(path, options_)
        files = _find(fs, root, (".parquet", ".pq"), spec)
        if not files:
            raise DatasetError(f"parquet: no .parquet files at {path!r}")
        return TableDataset(
            spec, path, options_, files, "parquet",
            image=options.get("image"), label=options.get("label"), key=options.get("key"),
        )  # fmt: skip
