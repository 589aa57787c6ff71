"""Spec options (``NAME:ARG?key=value&key=value``), label values and label files, shared by readers.

A dataset spec is recorded in every store it makes and re-opened from that string in every process
(trainer, DataLoader workers, torchrun ranks, the service), so everything that changes which
images, keys or labels a dataset yields is written in the spec itself: reader options go after the
last ``?`` as URL query pairs. Credentials and endpoints are not dataset identity and never go
there (they are storage options, passed apart).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import parse_qsl

import numpy as np

from store.errors import DatasetError
from store.remote import storage_errors, url_to_fs

__all__ = [
    "LABELS_OPTION",
    "check_options",
    "first_duplicate",
    "label_values",
    "read_label_file",
    "relabel",
    "split_options",
]

LABELS_OPTION = "labels"
"""The option every spec accepts: a CSV/TSV file of ``key,label`` rows that replaces the labels."""


def split_options(spec: str) -> tuple[str, dict[str, str]]:
    """``"hfds:/d?image=img&label=y"`` -> ``("hfds:/d", {"image": "img", "label": "y"})``.

    Options follow the last ``?``; a key given twice or a pair without ``=`` raises DatasetError.
    """
    base, sep, query = spec.rpartition("?")
    if not sep:
        return spec, {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise DatasetError(
            f"bad options {query!r} in dataset spec {spec!r}: write ?key=value&key=value"
        ) from None
    options: dict[str, str] = {}
    for key, value in pairs:
        if key in options:
            raise DatasetError(f"option {key!r} given twice in dataset spec {spec!r}")
        options[key] = value
    return base, options


def check_options(spec: str, options: Mapping[str, str], allowed: Iterable[str]) -> None:
    """Raise DatasetError naming the first option of ``options`` not in ``allowed``."""
    valid = sorted(allowed)
    for key in options:
        if key not in valid:
            names = ", ".join(valid) if valid else "none"
            raise DatasetError(f"{spec}: unknown option {key!r}; valid: {names}")


def first_duplicate(keys: Sequence[str]) -> str | None:
    """The first key of ``keys`` that appeared before, or None when all are unique."""
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            return key
        seen.add(key)
    return None


def _as_int(value: object) -> int | None:
    if value is None:
        return -1
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else None
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        return None


def label_values(
    values: Sequence[object], names: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Labels (N,) int64 (-1 = none) and class names from raw per-sample label values.

    Integers (or integer strings) are the labels; their class names are ``names`` when given, else
    ``str(label)`` for ``0..max`` (so datasets without names line up by number). Any other string is
    a class name: classes are the sorted distinct names, labels index them. None or "" is -1.
    """
    ints = [_as_int(v) if v != "" else -1 for v in values]
    if all(i is not None for i in ints):
        labels = np.asarray(ints, dtype=np.int64)
        if len(labels) and labels.min() < -1:
            raise DatasetError(f"negative label {int(labels.min())}; -1 is the only 'no label'")
        top = int(labels.max(initial=-1))
        classes = list(names) if names else [str(c) for c in range(top + 1)]
        if top >= len(classes):
            raise DatasetError(f"label {top} out of range for {len(classes)} class names")
        return labels, classes
    text = ["" if v is None else str(v).strip() for v in values]
    classes = sorted({t for t in text if t})
    index = {name: i for i, name in enumerate(classes)}
    return np.asarray([index.get(t, -1) for t in text], dtype=np.int64), classes


def read_label_file(
    url: str, storage_options: Mapping[str, object] | None = None
) -> dict[str, str]:
    """``{key: label}`` from a CSV or TSV file (local path or fsspec URL).

    Each row is ``key<sep>label`` (more columns are ignored); the separator is a tab for ``.tsv``
    files or lines holding a tab, else a comma. Of the label field only the first
    whitespace-separated word counts, so ImageNet's ``LOC_val_solution.csv`` (``ImageId,
    n01751748 x y x y``) reads as is. A header row simply matches no image.
    """
    try:
        with storage_errors(url, "cannot read labels file"):
            fs, path = url_to_fs(url, storage_options)
            text = bytes(fs.cat_file(path)).decode("utf-8-sig")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read labels file {url!r}: {exc}") from None
    first = text.split("\n", 1)[0]
    delimiter = "\t" if url.lower().endswith(".tsv") or "\t" in first else ","
    out: dict[str, str] = {}
    for row in csv.reader(io.StringIO(text), delimiter=delimiter):
        if len(row) < 2 or not row[0].strip():
            continue
        words = row[1].split()
        out[row[0].strip()] = words[0] if words else ""
    if not out:
        raise DatasetError(f"labels file {url!r} has no key{delimiter!r}label rows")
    return out


def _variants(key: str) -> tuple[str, ...]:
    """A key, without its extension, its file name, and its file name without extension."""
    name = key.rsplit("/", 1)[-1]
    return key, os.path.splitext(key)[0], name, os.path.splitext(name)[0]


def relabel(
    keys: Sequence[str], table: Mapping[str, str], source: str
) -> tuple[np.ndarray, list[str]]:
    """Labels (N,) int64 and class names for ``keys`` from a label file's ``{key: label}``.

    Keys match with or without extension and with or without their folders, on either side, so
    ``val/ILSVRC2012_val_00000001.JPEG`` finds the row ``ILSVRC2012_val_00000001`` and a
    WebDataset ``__key__`` (no extension) finds ``cat/001.jpg`` (an exact match is tried first).
    Keys with no row get -1; a file that matches no key at all raises DatasetError.
    """
    lookup: dict[str, str] = dict(table)
    for row_key, label in table.items():
        for variant in _variants(row_key)[1:]:
            lookup.setdefault(variant, label)
    values: list[str | None] = []
    matched = 0
    for key in keys:
        found = next((lookup[v] for v in _variants(key) if v in lookup), None)
        matched += found is not None
        values.append(found)
    if matched == 0:
        sample = ", ".join(list(table)[:3])
        raise DatasetError(
            f"labels file {source!r} matches no image key (file has e.g. {sample}; "
            f"images are e.g. {', '.join(list(keys)[:3])})"
        )
    return label_values(values)
