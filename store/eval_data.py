"""The evaluation protocol's data: a bank and a query set, each a dataset spec with its split.

``disco eval --bank SPEC --queries SPEC`` scores kNN retrieval of the queries against the bank.
Two datasets join into one :class:`BankQueries` whose ``train`` split is the bank and ``test``
split the queries, so feature extraction, caching and scoring run unchanged. Labels line up by
class *name*: the bank's class names keep their indices, query classes map onto them by name, and
query classes the bank does not have get new indices after the bank's (such queries can never be
right; :attr:`BankQueries.unmatched_classes` names them). ImageNet's protocol is
``--bank imagefolder:/data/imagenet/train --queries
imagefolder:/data/imagenet/val?labels=/data/imagenet/val_labels.csv``, both with split ``all``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from store.datasets import ImageDataset, open_dataset
from store.errors import DatasetError

__all__ = ["BankQueries", "default_splits", "open_bank_queries"]


def class_names(dataset: ImageDataset) -> list[str]:
    """The dataset's class names; ``str(label)`` for ``0..max`` when it has none."""
    if dataset.classes:
        return list(dataset.classes)
    top = int(np.asarray(dataset.labels).max(initial=-1))
    return [str(c) for c in range(top + 1)]


class BankQueries(ImageDataset):
    """Bank and queries as one dataset: indices ``0..Nb-1`` are the bank dataset's samples,
    ``Nb..Nb+Nq-1`` the query dataset's; split ``train`` = the bank split, ``test`` = the query
    split (dataset indices, int64), ``all`` = both. Query labels are re-numbered by class name."""

    def __init__(
        self, bank: ImageDataset, bank_split: str, queries: ImageDataset, query_split: str
    ) -> None:
        self.bank, self.queries = bank, queries
        self.sources = (bank, queries)
        self.spec = f"{bank.spec} [{bank_split}] | {queries.spec} [{query_split}]"
        # What the bank and the queries are, for a report's protocol line.
        self.roles = (f"{bank.spec} ({bank_split})", f"{queries.spec} ({query_split})")
        names = class_names(bank)
        index = {name: i for i, name in enumerate(names)}
        query_names = class_names(queries)
        self.unmatched_classes = [n for n in query_names if n not in index]
        for name in self.unmatched_classes:
            index[name] = len(names)
            names.append(name)
        mapping = np.asarray([index[n] for n in query_names] + [-1], dtype=np.int64)
        query_labels = np.asarray(queries.labels, dtype=np.int64)
        self.classes = names
        self.keys = list(bank.keys) + list(queries.keys)
        self.labels = np.concatenate(
            [np.asarray(bank.labels, dtype=np.int64), mapping[query_labels]]
        )
        self._offset = len(bank)
        train = bank.split_indices(bank_split)
        test = queries.split_indices(query_split) + self._offset
        self._splits = {"train": train, "test": test, "all": np.concatenate([train, test])}

    def _source(self, i: int) -> tuple[ImageDataset, int]:
        return (self.bank, i) if i < self._offset else (self.queries, i - self._offset)

    def load_with_hash(self, i: int) -> tuple[np.ndarray, str]:
        """Sample ``i`` of the bank or query dataset: ((H, W, 3) uint8, sha256 hex)."""
        ds, j = self._source(i)
        return ds.load_with_hash(j)

    def load(self, i: int) -> np.ndarray:
        """Sample ``i`` of the bank or query dataset as (H, W, 3) uint8."""
        ds, j = self._source(i)
        return ds.load(j)

    def sha256(self, i: int) -> str:
        """Content hash of sample ``i`` (as its own dataset computes it)."""
        ds, j = self._source(i)
        return ds.sha256(j)

    def split_indices(self, split: str) -> np.ndarray:
        """``train`` = bank, ``test`` = queries, ``all`` = both (int64 indices into this set)."""
        if split not in self._splits:
            raise DatasetError(f"unknown split {split!r}; valid: all, train, test")
        return self._splits[split]


def default_splits(bank: str, queries: str) -> tuple[str, str]:
    """(bank split, query split) when not given: ``train``/``test`` of one dataset, ``all``/``all``
    of two different ones."""
    return ("train", "test") if bank == queries else ("all", "all")


def open_bank_queries(
    bank: str,
    queries: str,
    bank_split: str | None = None,
    query_split: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> BankQueries:
    """Open both specs (``store.datasets.open_dataset``) and join them (see module docstring).

    Splits default by :func:`default_splits`. Raises DatasetError when a side has no labelled
    sample in its split (kNN scores need labels on both sides).
    """
    default_bank, default_query = default_splits(bank, queries)
    bank_ds = open_dataset(bank, storage_options)
    query_ds = bank_ds if queries == bank else open_dataset(queries, storage_options)
    joined = BankQueries(
        bank_ds, bank_split or default_bank, query_ds, query_split or default_query
    )
    for split, role, spec in (("train", "bank", bank), ("test", "queries", queries)):
        labels = joined.labels[joined.split_indices(split)]
        if len(labels) == 0 or (labels < 0).all():
            raise DatasetError(
                f"{role} {spec!r} has no labelled image in its split; give labels "
                f"(class folders, a label column, or ?labels=FILE.csv)"
            )
    return joined
