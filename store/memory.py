"""A store's teacher targets held in RAM: the same read interface, no reads from storage.

``InMemoryStore.load(store)`` reads every shard of an open :class:`EmbeddingStore` once
(``read_shard``: embeddings dequantised to float32, written mask, view params) and then answers
``read_shard``/``iter_blocks``/``written_mask``/``params`` from those arrays; everything else
(attrs, manifest, recipe, render check, shard bounds) is the wrapped store's. A trainer reading it
therefore sees exactly the targets, views and block order it would stream from the store.

Uses: ``disco train --store-in-ram`` for a store that fits in memory (every epoch then skips the
store reads and the fp16 -> fp32 conversion), and ``bench/train_throughput.py``, which measures
the cost of streaming from the zarr store against it (``read_cost_ratio``). RAM taken:
N * V * (4 D + 4 P + 1) bytes (e.g. 50,000 rows x 8 views x D 128: 0.2 GiB). Read-only: the
write methods raise ``StoreError`` (the wrapper is opened with mode "r"), and the cached arrays
are marked read-only so no consumer can change them in place; ``read_shard_raw`` and
``read_features`` still read the wrapped store.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import zarr

from store.embedding_store import EmbeddingStore, ShardBlock
from store.errors import StoreError

__all__ = ["InMemoryStore"]


class InMemoryStore(EmbeddingStore):
    """An :class:`EmbeddingStore` whose shards were read once into RAM (see the module doc)."""

    def __init__(
        self, url: str, group: zarr.Group, mode: str = "r", target: str | None = None
    ) -> None:
        """Read every shard of teacher ``target`` of the store ``group`` at ``url`` into RAM
        (the constructor ``EmbeddingStore.open`` calls, so ``InMemoryStore.open(url)`` works
        too; ``mode`` is ignored: the copy is read-only)."""
        super().__init__(url, group, "r", target)
        if self.teacher is None:
            raise StoreError(f"store {url!r} has no teacher embeddings to hold in RAM")
        blocks = [super(InMemoryStore, self).read_shard(s) for s in range(self.num_shards)]
        for block in blocks:
            for array in (block.embeddings, block.written, block.params):
                array.flags.writeable = False
        self._blocks = blocks
        params = np.concatenate([b.params for b in blocks]) if blocks else np.empty((0,))
        params.flags.writeable = False
        self._params = params
        mask = np.concatenate([b.written for b in blocks]) if blocks else np.empty((0,), bool)
        mask.flags.writeable = False
        self._mask = mask

    @classmethod
    def load(cls, store: EmbeddingStore) -> InMemoryStore:
        """Every shard of the open ``store`` read into RAM (one ``read_shard`` per shard)."""
        return cls(store.url, store.group, target=store.target)

    @property
    def nbytes(self) -> int:
        """Bytes held: embeddings (float32), written mask and params of every shard."""
        return sum(b.embeddings.nbytes + b.written.nbytes + b.params.nbytes for b in self._blocks)

    def written_mask(self) -> np.ndarray:
        """(N, V) bool (read-only) as it was when loaded."""
        return self._mask

    def read_shard(self, s: int) -> ShardBlock:
        """Shard ``s`` from RAM: the block ``EmbeddingStore.read_shard`` returned at load, its
        arrays read-only (float32 embeddings (n, V, D), written (n, V), params (n, V, P))."""
        self.shard_bounds(s)  # range check, same error as the store
        return dataclasses.replace(self._blocks[s])

    def __repr__(self) -> str:
        mib = self.nbytes / 2**20
        return f"InMemoryStore({self.url!r}, n={self.n}, views={self.views}, {mib:.1f} MiB)"
