"""``disco store append``: grow a store along N with the new samples of a dataset that grew.

Rows never move and old bytes never change: the new samples (keys not yet in the store) become
rows N..N'-1 -- in the dataset's order for ``disco-store/1``/``/2`` stores (row order
``dataset``), permuted among themselves by ``store.manifest.appended_order(N, m)`` for
``permuted`` stores (``disco-store/3``), so a class folder added at once is mixed into its own
rows -- their views are planned with the same counter RNG
(``plan_views(first_row=N)``: row i's views depend only on (seed, i, v), so they are what a store
created over the grown dataset would plan for those rows), and every per-row array (manifest,
``views/params``, ``embeddings``, ``features``, ``written``) is resized to N' with the new slots
unwritten. ``disco precompute`` (or the service, or lazy-fill trainers) then fills only them.

Refused, naming the key, with nothing written: a key of the store whose content changed (sha256
differs) or that no longer reads, and keys that disappeared from the dataset (a store only grows;
its rows keep pointing at their samples). A store over split ``train``/``test`` cannot grow: the
split rule permutes all N samples, so a grown dataset re-splits every row.

Old rows get their index in the grown dataset (an ImageFolder that gained files sorts them in) and
its label (a new class folder can shift class numbers); both are manifest data, not targets.
The work that reads the dataset runs first; the resize runs under the store-wide lock
(``store.locks.store_lock``: no shard write meanwhile), arrays first and the new N in the attrs
last, so a reader sees either the old or the new store.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from store.datasets import ImageDataset, open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import DatasetError, StoreError, StoreMismatchError
from store.locks import store_lock
from store.manifest import Manifest, appended_order, manifest_rows, sha256_to_bytes
from store.views import plan_views

__all__ = ["AppendReport", "append_rows"]


@dataclass
class AppendReport:
    """What one ``append_rows`` call did."""

    store: str
    dataset: str
    """Dataset spec the new rows come from (now the store's ``dataset.spec``)."""
    n_before: int
    """Rows before."""
    n_after: int
    """Rows after (= n_before when nothing was new)."""
    added: int
    """New rows (n_after - n_before)."""
    undecodable: int
    """New rows whose image did not decode (recorded, masked by ``manifest.valid``)."""
    relabelled: int
    """Old rows whose label changed (class folders renumbered)."""
    moved: int
    """Old rows whose dataset index changed (files sorted in before them)."""
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-able)."""
        return asdict(self)


def _check_old_rows(
    old: Manifest, ds: ImageDataset, progress: bool, workers: int | None
) -> np.ndarray:
    """(N,) int64 index in ``ds`` of every old row; raises DatasetError naming a key that
    disappeared, changed content or no longer reads. The files are hashed in ``workers``
    processes (as a manifest is built)."""
    pos = {k: i for i, k in enumerate(ds.keys)}
    missing = [k for k in old.keys.tolist() if k not in pos]
    if missing:
        raise DatasetError(
            f"{len(missing)} sample(s) of the store are gone from {ds.spec!r} (first: "
            f"{missing[0]!r}); append only adds samples: restore them or create a new store"
        )
    where = np.array([pos[k] for k in old.keys.tolist()], dtype=np.int64)
    now = manifest_rows(ds, where, "check", progress, workers=workers)
    unread = np.flatnonzero((now.sha256 == "") & (old.sha256 != ""))
    if len(unread):
        key = str(old.keys[unread[0]])
        reason = now.errors.get(key, "unreadable")
        raise DatasetError(
            f"sample {key!r} of the store no longer reads ({reason}); nothing appended"
        )
    changed = old.keys[now.sha256 != old.sha256].tolist()
    if changed:
        raise DatasetError(
            f"sample {changed[0]!r} changed content (sha256 differs from the store's)"
            + (f", and {len(changed) - 1} more" if len(changed) > 1 else "")
            + "; append never rewrites a row: create a new store for changed data"
        )
    return where


def _grown(
    old: Manifest, new: Manifest, spec: str, split: str, where: np.ndarray, labels: np.ndarray
) -> Manifest:
    """The old rows (now at dataset indices ``where``, with today's ``labels``) followed by the
    new ones."""
    return Manifest(
        dataset=spec,
        split=split,
        indices=np.concatenate([where, new.indices]),
        keys=np.concatenate([old.keys, new.keys]),
        labels=np.concatenate([labels, new.labels]),
        sha256=np.concatenate([old.sha256, new.sha256]),
        heights=np.concatenate([old.heights, new.heights]),
        widths=np.concatenate([old.widths, new.widths]),
        valid=np.concatenate([old.valid, new.valid]),
        errors={**old.errors, **new.errors},
    )


def append_rows(
    url: str,
    dataset: str | None = None,
    *,
    source: ImageDataset | None = None,
    progress: bool = False,
    lock_timeout: float | None = 60.0,
    workers: int | None = None,
) -> AppendReport:
    """Append the samples of ``dataset`` (spec; default the store's) that the store at ``url``
    lacks, as new unwritten rows (see the module docstring). ``source`` reuses an opened dataset.

    ``workers``: processes probing the new files (None: all cores). Returns an
    :class:`AppendReport` (``added`` 0: nothing changed). Raises ``DatasetError``
    naming a changed or missing key, ``StoreMismatchError("dataset.split")`` for a split store,
    ``StoreBusyError`` when writers hold the store longer than ``lock_timeout`` s.
    """
    t0 = time.perf_counter()
    store = EmbeddingStore.open(url, mode="r+")
    split = store.attrs["dataset"]["split"]
    if split != "all":
        raise StoreMismatchError(
            "dataset.split", "all", split,
            hint="a train/test split permutes all N samples, so a grown dataset re-splits every "
            "row; create the store over split 'all' to append to it",
        )  # fmt: skip
    spec = dataset or store.manifest.dataset
    ds = source if source is not None else open_dataset(spec)
    old = store.manifest
    n_old = len(old)
    where = _check_old_rows(old, ds, progress, workers)
    present = set(old.keys.tolist())
    new_idx = np.array([i for i, k in enumerate(ds.keys) if k not in present], dtype=np.int64)
    if len(new_idx) == 0:
        return AppendReport(url, spec, n_old, n_old, 0, 0, 0, 0, time.perf_counter() - t0)
    if store.row_order == "permuted":  # mixed among themselves; dataset order in older stores
        new_idx = new_idx[appended_order(n_old, len(new_idx))]
    new = manifest_rows(ds, new_idx, split, progress, workers=workers)
    labels = np.asarray(ds.labels, dtype=np.int64)[where]
    grown = _grown(old, new, ds.spec, split, where, labels)
    params = plan_views(
        store.recipe, store.seed, new.heights, new.widths, store.views, progress, first_row=n_old
    )
    n_new = len(grown)
    with store_lock(url, timeout=lock_timeout):
        store.refresh(force=True)
        if store.n != n_old:
            raise StoreError(f"store {url!r} changed while append prepared; run it again")
        _resize(store, grown, n_old, params)
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "n_before": n_old,
            "n_after": n_new,
            "added": n_new - n_old,
            "dataset": ds.spec,
            "manifest_hash": grown.hash,
        }
        history = [*(store.attrs.get("history") or []), record]
        dataset_attrs = {**store.attrs["dataset"], "spec": ds.spec, "n": n_new,
                         "manifest_hash": grown.hash}  # fmt: skip
        # Last: until the new N is recorded, readers see the old store.
        store.group.attrs.update({"dataset": dataset_attrs, "history": history})
        store.refresh(force=True)
    return AppendReport(
        store=url,
        dataset=ds.spec,
        n_before=n_old,
        n_after=n_new,
        added=n_new - n_old,
        undecodable=new.num_invalid,
        relabelled=int((labels != old.labels).sum()),
        moved=int((where != old.indices).sum()),
        seconds=time.perf_counter() - t0,
    )


def _resize(store: EmbeddingStore, grown: Manifest, n_old: int, params: np.ndarray) -> None:
    """Grow every per-row array to len(grown) and write the new rows (under the store lock)."""
    n_new = len(grown)
    group = store.group
    mgroup: Any = group["manifest"]
    for name in ("indices", "keys", "labels", "sha256", "heights", "widths", "valid"):
        arr = mgroup[name]
        values = np.asarray(getattr(grown, name))
        if name == "sha256" and len(arr.shape) == 2:  # disco-store/2: (N, 32) uint8
            values = sha256_to_bytes(values)
        arr.resize((n_new, *arr.shape[1:]))
        if name in ("indices", "labels"):  # old rows may move / be renumbered
            arr[:] = values
        else:
            arr[n_old:] = values[n_old:]
    mgroup.attrs.update({"errors": dict(grown.errors)})
    pa: Any = group["views/params"]
    pa.resize((n_new, *pa.shape[1:]))
    pa[n_old:] = params
    # Every teacher's arrays: the root one's and each targets/NAME's (disco-store/4).
    raw = store.raw_attrs
    prefixes = [""] if raw.get("teacher") is not None else []
    prefixes += [f"targets/{name}/" for name in sorted(raw.get("targets") or {})]
    for prefix in prefixes:
        for name in ("embeddings", "features", "written"):
            if prefix + name not in group:
                continue
            arr = group[prefix + name]
            arr.resize((n_new, *arr.shape[1:]))  # type: ignore[union-attr]
        # Explicitly unwritten (the old last chunk's padding beyond N is not trusted).
        wa: Any = group[prefix + "written"]
        wa[n_old:] = np.zeros((n_new - n_old, store.views), dtype=bool)
