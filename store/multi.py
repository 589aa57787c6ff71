"""Several teachers of one store read as one: their targets side by side in each block.

``MultiTargetStore.open(url, ["a", "b"])`` opens one handle per teacher and answers the read
interface a trainer's data plan uses (``read_shard``, ``iter_blocks``, ``written_mask``,
``manifest``, ``params``, ``recipe``, ``shard_bounds``...). A block's ``embeddings`` are the
teachers' targets concatenated along the last axis, ``(n, V, D_a + D_b + ...)`` float32, in the
order given (``segments`` gives each teacher's slice); a teacher's segment is **all zeros where that
teacher has not written the view** (explicitly zeroed here, not left to a fill value), so a
consumer tells a missing target from a real one (a unit vector) by its norm, per teacher.
``written`` is the union: a view is usable when any teacher wrote it, and a loss skips only the
missing teachers' terms (``student_trainer.train.losses.multi_teacher``).

``layout="concat"`` instead divides each present segment by the square root of the number of
present teachers, so the concatenation is itself a unit vector: the target of a baseline student
with one head on the concatenated targets. Every teacher shares the store's view plan, so the same
(row, view) is the same rendered view for all of them.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from store.embedding_store import EmbeddingStore, ShardBlock
from store.errors import ConfigError

__all__ = ["LAYOUTS", "MultiTargetStore"]

LAYOUTS = ("heads", "concat")
"""``heads``: segments as stored (one student head per teacher); ``concat``: the concatenation
scaled to unit norm (one head on the concatenated targets)."""


class MultiTargetStore:
    """The teachers ``names`` of one store, their targets concatenated per view (module doc)."""

    def __init__(self, stores: Sequence[EmbeddingStore], layout: str = "heads") -> None:
        if not stores:
            raise ConfigError("name at least one teacher")
        if layout not in LAYOUTS:
            raise ConfigError(f"unknown target layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        self.stores = list(stores)
        self.layout = layout
        self.names = [str(s.target) for s in self.stores]
        dims = [int(s.dim or 0) for s in self.stores]
        for name, store, dim in zip(self.names, self.stores, dims, strict=True):
            if store.teacher is None or not dim:
                raise ConfigError(f"store {store.url!r}: teacher {name!r} has no embeddings yet")
        self.dims = dims
        edges = np.cumsum([0, *dims])
        self.segments = [(int(a), int(b)) for a, b in itertools.pairwise(edges)]
        """Each teacher's ``[start, stop)`` slice of the last axis."""
        self._first = self.stores[0]

    @classmethod
    def open(cls, url: str, names: Sequence[str], layout: str = "heads") -> MultiTargetStore:
        """Open teachers ``names`` of the store at ``url`` (read-only); ``StoreError`` naming
        the store's teachers when one is missing."""
        first = EmbeddingStore.open(url, target=names[0])
        return cls([first, *(first.for_target(n) for n in names[1:])], layout)

    # The plan's read interface: the store's shared parts come from the first handle.
    @property
    def url(self) -> str:
        """Where the store lives."""
        return self._first.url

    @property
    def n(self) -> int:
        """Rows N."""
        return self._first.n

    @property
    def views(self) -> int:
        """Views per row V."""
        return self._first.views

    @property
    def num_shards(self) -> int:
        """Shards of rows."""
        return self._first.num_shards

    @property
    def shard_size(self) -> int:
        """Rows per shard."""
        return self._first.shard_size

    @property
    def manifest(self) -> Any:
        """The store's manifest."""
        return self._first.manifest

    @property
    def params(self) -> np.ndarray:
        """View parameters (N, V, P) float32."""
        return self._first.params

    @property
    def recipe(self) -> Any:
        """The view recipe."""
        return self._first.recipe

    @property
    def attrs(self) -> dict[str, Any]:
        """The first teacher's handle attrs."""
        return self._first.attrs

    @property
    def dim(self) -> int:
        """Width of a concatenated target: the sum of the teachers' D."""
        return int(sum(self.dims))

    @property
    def teacher(self) -> dict[str, Any]:
        """``{"targets": [{"name", "dim", "sha256", "source"...}, ...], "layout"}``."""
        return {
            "targets": [
                {"name": n, "dim": d, **(s.teacher or {})}
                for n, d, s in zip(self.names, self.dims, self.stores, strict=True)
            ],
            "layout": self.layout,
        }

    def shard_bounds(self, s: int) -> tuple[int, int]:
        """Row range [start, stop) of shard ``s``."""
        return self._first.shard_bounds(s)

    def check_render(self, accept_drift: bool = False) -> str:
        """The store's render check (one view plan for every teacher)."""
        return self._first.check_render(accept_drift=accept_drift)

    def written_mask(self) -> np.ndarray:
        """(N, V) bool: views written by at least one of the teachers."""
        mask = self.stores[0].written_mask()
        for store in self.stores[1:]:
            mask = mask | store.written_mask()
        return mask

    def written_masks(self) -> list[np.ndarray]:
        """Each teacher's (N, V) bool written mask, in ``names`` order."""
        return [s.written_mask() for s in self.stores]

    def read_shard(self, s: int) -> ShardBlock:
        """Shard ``s`` with the teachers' targets side by side (module docstring):
        embeddings (n, V, sum D) float32, written (n, V) bool = any teacher."""
        blocks = [store.read_shard(s) for store in self.stores]
        parts = [np.where(b.written[..., None], b.embeddings, 0.0) for b in blocks]
        written = np.logical_or.reduce([b.written for b in blocks])
        if self.layout == "concat":
            present = np.sum([b.written for b in blocks], axis=0, dtype=np.float32)
            scale = 1.0 / np.sqrt(np.maximum(present, 1.0))
            parts = [p * scale[..., None] for p in parts]
        emb = np.concatenate(parts, axis=-1).astype(np.float32, copy=False)
        return dataclasses.replace(blocks[0], embeddings=emb, written=written)

    def iter_blocks(self, seed: int, shards: Sequence[int] | None = None) -> Iterator[ShardBlock]:
        """Yield whole shards (default all) in the order ``default_rng(seed).permutation``
        (the same order a single-teacher store gives)."""
        order = list(range(self.num_shards)) if shards is None else list(shards)
        perm = np.random.default_rng(seed).permutation(len(order))
        for k in perm.tolist():
            yield self.read_shard(order[k])

    def __repr__(self) -> str:
        return f"MultiTargetStore({self.url!r}, teachers={self.names}, layout={self.layout!r})"
