"""Training data: (i, v1, v2) view pairs rendered in DataLoader workers.

The *plan* (which rows, which views, in which order) is decided in the main process by a seeded
RNG keyed by (seed, epoch, tag, rank), so it does not depend on the number of workers, and the
data position of a run is just (epoch, batches consumed). Workers only decode and render: a
:class:`PairItem` carries everything a view needs (stored params, or the counter-based key the
params are sampled from), so no augmentation state lives in a worker.

- Store mode (:class:`StorePlan`): the epoch is planned at once from metadata (vectorised,
  well under a second for 1.28 M rows): whole shards in a seeded random order
  (``EmbeddingStore.iter_blocks``), rank r taking shards ``s % world == r``; their rows shuffled
  within a window; each row gets two different cached views v1 != v2 (among its written views).
  Shards are then read when the plan first needs them and only the chosen slots' params and
  targets are kept. With lazy fill (``StorePlan(fill_dim=D)``) every valid view counts as
  usable, written or not, so the (i, v1, v2) sequence is the full store's; each shard is read
  when the plan reaches it (seeing what a concurrent precompute job or service wrote until then)
  and items whose views are not written yet carry ``written`` False:
  :class:`student_trainer.train.lazyfill.TargetFiller` fetches them.
- Dataset mode (:class:`DatasetPlan`): a seeded permutation of the split per epoch; view params are
  sampled in the worker with ``recipe.sample(seed, index, view_id, h, w)`` where view ids
  ``2·epoch`` and ``2·epoch + 1`` make every epoch's views fresh and reproducible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from rich.progress import Progress
from torch.utils.data import Dataset, Sampler

from store.datasets import ImageDataset
from store.errors import ConfigError
from store.image_pack import ImagePack, pack_images
from store.manifest import Manifest
from store.views import Recipe, render_view, render_views_normalised

__all__ = [
    "DATASET_PLAN_VERSION",
    "STORE_PLAN_VERSION",
    "TAG_PREFILL",
    "TAG_TRAIN",
    "BatchFilter",
    "DatasetPlan",
    "EpochBatchSampler",
    "EpochPlan",
    "ImageBank",
    "PairBatch",
    "PairItem",
    "PairRenderer",
    "StorePlan",
    "collate_pairs",
    "plan_seed",
    "render_pairs",
]

TAG_TRAIN = 0
"""Plan stream of the training epochs."""
TAG_PREFILL = 1
"""Plan stream used to fill the queues before step 1 (a different order than epoch 0)."""

CACHE_LIMIT_BYTES = 2 << 30
"""Decoded images are cached in RAM when they take less than this."""


def plan_seed(seed: int, epoch: int, tag: int, rank: int = 0) -> np.random.SeedSequence:
    """The seed sequence of one (run seed, epoch, tag, rank) plan stream."""
    return np.random.SeedSequence([seed, epoch, tag, rank])


class PairItem(NamedTuple):
    """One training sample as sent to a worker.

    ``row``: manifest row; ``image_index``: dataset index; ``views``: (v1, v2) stored view numbers
    (store mode) or counter-based view ids (dataset mode); ``params``: two (P,) float32 arrays or
    None (sample them in the worker); ``targets``: two (D,) float32 arrays or None; ``written``:
    whether each target is real (lazy fill: False = not in the store yet, the target is zeros).
    """

    row: int
    image_index: int
    views: tuple[int, int]
    params: tuple[np.ndarray, np.ndarray] | None
    targets: tuple[np.ndarray, np.ndarray] | None
    written: tuple[bool, bool] = (True, True)


@dataclass
class PairBatch:
    """A collated batch: ``rows`` (b,) int64, ``views`` (b, 2) int64, ``view1``/``view2``
    (b, 3, S, S) float32, ``target1``/``target2`` (b, D) float32 or None.

    Batched renderer: the workers only decode, so ``view1``/``view2`` are empty and ``sources``
    (the b decoded (H, W, 3) uint8 images as one shared-memory :class:`store.image_pack.ImagePack`)
    with ``params1``/``params2`` (b, P) float32 travel instead; :func:`render_pairs` renders them
    on the training device."""

    rows: torch.Tensor
    views: torch.Tensor
    view1: torch.Tensor
    view2: torch.Tensor
    target1: torch.Tensor | None
    target2: torch.Tensor | None
    sources: ImagePack | None = None
    params1: np.ndarray | None = None
    params2: np.ndarray | None = None

    def pin_memory(self) -> PairBatch:
        """The same batch in pinned host memory (``DataLoader(pin_memory=True)`` calls this on
        CUDA; without it a dataclass batch stays pageable and copies to the GPU synchronously)."""

        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory()

        return PairBatch(
            self.rows, self.views, self.view1.pin_memory(), self.view2.pin_memory(),
            pin(self.target1), pin(self.target2),
            None if self.sources is None else self.sources.pin_memory(), self.params1, self.params2,
        )  # fmt: skip


class ImageBank:
    """Decoded images of a manifest's rows, from RAM (``cache=True``) or decoded on demand."""

    def __init__(
        self, dataset: ImageDataset, manifest: Manifest, cache: bool, progress: bool = False
    ) -> None:
        self.dataset = dataset
        self.indices = manifest.indices
        self.cached: list[np.ndarray | None] | None = None
        if cache:
            rows = np.flatnonzero(manifest.valid)
            images: list[np.ndarray | None] = [None] * len(manifest)
            with Progress(disable=not progress, transient=True) as bar:
                task = bar.add_task("decoding images", total=len(rows))
                for row in rows:
                    images[int(row)] = dataset.load(int(manifest.indices[row]))
                    bar.advance(task)
            self.cached = images

    @staticmethod
    def should_cache(manifest: Manifest, requested: bool | None) -> bool:
        """``requested`` if given, else True when the valid decoded images fit in 2 GiB."""
        if requested is not None:
            return requested
        valid = manifest.valid
        total = int((manifest.heights[valid].astype(np.int64) * manifest.widths[valid]).sum()) * 3
        return total < CACHE_LIMIT_BYTES

    def image(self, row: int) -> np.ndarray:
        """(H, W, 3) uint8 image of manifest row ``row``."""
        if self.cached is not None:
            img = self.cached[row]
            if img is None:
                raise ConfigError(f"row {row} is not a valid image")
            return img
        return self.dataset.load(int(self.indices[row]))


class PairRenderer(Dataset[dict[str, Any]]):
    """Map-style dataset whose "indices" are :class:`PairItem`: decode + render both views.

    Stateless apart from the (read-only) image bank, so any worker renders any item identically.
    """

    def __init__(self, bank: ImageBank, recipe: Recipe, seed: int, render: bool = True) -> None:
        self.bank = bank
        self.recipe = recipe
        self.seed = seed
        self.render = render
        """False (batched renderer): decode only; :func:`render_pairs` renders on the device."""

    def __getitem__(self, item: PairItem) -> dict[str, Any]:
        """Render ``item`` -> dict(row, views, view1, view2 (3, S, S) float32, targets)."""
        image = self.bank.image(item.row)
        if item.params is not None:
            p1, p2 = item.params
        else:
            h, w = image.shape[:2]
            p1 = self.recipe.sample(self.seed, item.image_index, item.views[0], h, w)
            p2 = self.recipe.sample(self.seed, item.image_index, item.views[1], h, w)
        if not self.render:
            return {"row": item.row, "views": item.views, "view1": None, "view2": None,
                    "source": image, "params": (p1, p2), "targets": item.targets}  # fmt: skip
        return {
            "row": item.row,
            "views": item.views,
            "view1": render_view(image, p1, self.recipe),
            "view2": render_view(image, p2, self.recipe),
            "targets": item.targets,
        }


def collate_pairs(samples: list[dict[str, Any]]) -> PairBatch:
    """Stack rendered samples into a :class:`PairBatch`."""
    targets = [s["targets"] for s in samples]
    t1 = t2 = None
    if targets[0] is not None:
        t1 = torch.from_numpy(np.stack([t[0] for t in targets]).astype(np.float32))
        t2 = torch.from_numpy(np.stack([t[1] for t in targets]).astype(np.float32))
    rows = torch.tensor([s["row"] for s in samples], dtype=torch.int64)
    views = torch.tensor([list(s["views"]) for s in samples], dtype=torch.int64)
    if samples[0]["view1"] is None:  # decoded only (batched renderer)
        empty = torch.empty(0)
        return PairBatch(
            rows, views, empty, empty, t1, t2, sources=pack_images([s["source"] for s in samples]),
            params1=np.stack([s["params"][0] for s in samples]).astype(np.float32),
            params2=np.stack([s["params"][1] for s in samples]).astype(np.float32),
        )  # fmt: skip
    return PairBatch(
        rows=rows,
        views=views,
        view1=torch.stack([s["view1"] for s in samples]),
        view2=torch.stack([s["view2"] for s in samples]),
        target1=t1,
        target2=t2,
    )


def render_pairs(batch: PairBatch, recipe: Recipe, device: torch.device | str) -> PairBatch:
    """Render a decoded-only batch's two views with the batched renderer on ``device`` (one call,
    2b views): ``view1``/``view2`` (b, 3, S, S) float32 there, equal on CPU to the workers'
    ``render_view``. A batch rendered by the workers is returned unchanged."""
    if batch.sources is None:
        return batch
    assert batch.params1 is not None and batch.params2 is not None
    n = len(batch.sources)
    params = np.concatenate([batch.params1, batch.params2])
    images = batch.sources.images()
    x = render_views_normalised([*images, *images], params, recipe, device)
    return dataclasses.replace(batch, view1=x[:n], view2=x[n:], sources=None)


STORE_PLAN_VERSION = "store-plan/2"
"""Rule of :class:`StorePlan` (recorded in checkpoints): the whole epoch planned at once from
metadata (seeded shard order, a windowed shuffle of the rank's usable rows, a seeded view pair per
row), vectorised. ``store-plan/1`` (before) shuffled items through a per-row reservoir buffer while
reading the shards; its order cannot be reproduced by this rule."""
DATASET_PLAN_VERSION = "dataset-plan/1"
"""Rule of :class:`DatasetPlan`: a seeded permutation of the valid rows per epoch, rank r taking
every ``world``-th row; view ids ``2e``, ``2e + 1``."""


@dataclass
class EpochPlan:
    """One rank's epoch as int arrays (metadata only, no shard read): ``rows`` (M,) int64 manifest
    rows in training order and ``views`` (M, 2) int64 the (v1, v2) pair of each, M =
    ``steps_per_epoch * batch``; batch b is positions ``b*batch : (b+1)*batch``."""

    rows: np.ndarray
    views: np.ndarray


class _Gathered(NamedTuple):
    """The plan's slots of one shard, copied out of its block: ``targets`` (k, 2, D) float32 or
    None, ``params`` (k, 2, P) float32, ``written`` (k, 2) bool; row j is the shard's j-th
    remaining plan position."""

    targets: np.ndarray | None
    params: np.ndarray
    written: np.ndarray


class StorePlan:
    """Epoch plans over a store: seeded shard order, a windowed shuffle, view pairs (vectorised).

    :meth:`plan_epoch` decides a rank's whole epoch from metadata only (the usable mask; no shard
    is read): this rank's shards (``s % world == rank``) in the seeded order of
    ``EmbeddingStore.iter_blocks``, their usable rows concatenated, shuffled within a window of
    ``buffer_size`` (each row's key is its stream position plus ``buffer_size`` * U(0, 1): a row
    moves at most ``buffer_size`` places, so a batch needs a few neighbouring shards, as the old
    reservoir buffer did), and two different usable views per row (the two smallest of V random
    keys). :meth:`batches` then reads each shard when the plan first needs it, copies out only the
    chosen slots' params and targets and drops the block; a ``skip`` reads only the shards its
    remaining batches need. The next epoch's plan is computed in a background thread.

    ``use_targets``: attach cached teacher targets (and use only written views); False for
    ``mocov2`` or an online teacher, where any view of a valid row may be used. ``max_views``:
    use only views ``0 .. max_views - 1`` of each row (None = all). ``fill_dim``: lazy fill with
    targets of width D: every valid view is usable as on a full store (the same (i, v1, v2)
    sequence), unwritten targets come as zeros with ``PairItem.written`` False, and a store
    without a teacher yet is re-opened at each shard until one is attached.
    Every rank gets the same number of batches per epoch (``steps_per_epoch``), the minimum over
    ranks of usable rows // ``batch``.
    """

    version = STORE_PLAN_VERSION

    def __init__(
        self,
        store: Any,
        *,
        seed: int,
        batch: int,
        rank: int = 0,
        world: int = 1,
        buffer_size: int = 8192,
        use_targets: bool = True,
        max_views: int | None = None,
        fill_dim: int | None = None,
    ) -> None:
        self.store = store
        self.fill_dim = fill_dim
        self.seed = seed
        self.batch = batch
        self.rank = rank
        self.world = world
        self.buffer_size = buffer_size
        self.use_targets = use_targets
        manifest: Manifest = store.manifest
        views = int(store.views)
        if views < 2:
            raise ConfigError(f"the store has V={views} view(s) per image; training needs V >= 2")
        if max_views is not None and not 2 <= max_views <= views:
            raise ConfigError(
                f"views={max_views} must be between 2 and the store's V={views} views per image"
            )
        usable = np.repeat(np.asarray(manifest.valid, dtype=bool)[:, None], views, axis=1)
        if max_views is not None:
            usable[:, max_views:] = False
        if use_targets and fill_dim is None:
            usable &= np.asarray(store.written_mask(), dtype=bool)
        self.usable_views = usable
        self.usable_count = usable.sum(axis=1).astype(np.int64)
        self.usable_rows = self.usable_count >= 2
        first_unusable = np.where(usable.all(axis=1), views, usable.argmin(axis=1))
        self.usable_prefix = first_unusable == self.usable_count
        """(N,) bool: a row whose usable views are exactly 0 .. c-1 (rank = view id)."""
        counts = np.unique(self.usable_count[self.usable_rows])
        same = len(counts) == 1 and bool(self.usable_prefix[self.usable_rows].all())
        self.uniform_count = int(counts[0]) if same else 0
        """c when every usable row has exactly views 0 .. c-1 usable (a full store), else 0."""
        self.image_indices = np.asarray(manifest.indices, dtype=np.int64)
        self.shard_size = int(store.shard_size)
        self.num_shards = int(store.num_shards)
        self.shards = [s for s in range(self.num_shards) if s % world == rank]
        n, size = len(usable), self.shard_size
        self._shard_rows = {
            s: s * size + np.flatnonzero(self.usable_rows[s * size : min(n, (s + 1) * size)])
            for s in self.shards
        }  # this rank's usable rows per shard (int64), concatenated in each epoch's order
        per_shard = np.add.reduceat(self.usable_rows, np.arange(0, len(usable), self.shard_size))
        per_shard = per_shard if len(usable) else np.zeros(0, np.int64)
        per_rank = [int(per_shard[r::world].sum()) for r in range(world)]
        self.num_samples = int(self.usable_rows.sum())
        self.steps_per_epoch = min(per_rank) // batch
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"not enough usable rows for one batch of {batch} per rank "
                f"(usable rows per rank: {per_rank}; unwritten views and bad images are skipped)"
            )
        self._ahead: dict[tuple[int, int], Future[EpochPlan]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.shards_read: list[int] = []
        """Shards read by the latest :meth:`batches` pass, in order (what a resume jump read)."""
        self.live_peak = 0
        """Most shards' gathered slots held at once by :meth:`batches` (bounded by the window)."""

    # -- planning (metadata only) ---------------------------------------------------------------

    def shard_order(self, epoch: int, tag: int = TAG_TRAIN) -> list[int]:
        """This rank's shards in epoch ``epoch``'s order (``iter_blocks``' seeded permutation)."""
        block_seed = int(plan_seed(self.seed, epoch, tag).generate_state(1)[0])
        perm = np.random.default_rng(block_seed).permutation(len(self.shards))
        return [self.shards[k] for k in perm.tolist()]

    def plan_epoch(self, epoch: int, tag: int = TAG_TRAIN) -> EpochPlan:
        """This rank's epoch ``epoch`` of stream ``tag`` as int arrays (see :class:`EpochPlan`).

        Vectorised, no shard read; the same arrays in any process for the same (seed, epoch,
        tag, rank) and the same usable mask."""
        rng = np.random.default_rng(plan_seed(self.seed, epoch, tag, self.rank))
        order = self.shard_order(epoch, tag)
        parts = [self._shard_rows[s] for s in order]
        stream = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        # windowed shuffle: sort by position + a jitter in [0, W) (a sliding buffer of W rows,
        # at once); the key packs (jittered position, position) into one int64: one plain sort
        m = len(stream)
        bits = max(1, int(m).bit_length())
        keys = rng.integers(0, self.buffer_size, m, dtype=np.int64)
        position = np.arange(m, dtype=np.int64)
        keys += position
        keys <<= bits
        keys |= position
        keys.sort()
        take = self.steps_per_epoch * self.batch
        keys = keys[:take]
        keys &= (1 << bits) - 1
        rows = stream[keys]
        return EpochPlan(rows, self._view_pairs(rows, rng))

    def _view_pairs(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(M, 2) int64: two different usable views of each row, an ordered pair uniform among
        the row's c usable views (ranks a = r1 * c >> 16 and b = r2 * (c - 1) >> 16, b skipping
        a, from 16-bit draws r1, r2; mapped to view ids)."""
        draws = rng.integers(0, 1 << 16, (2, len(rows)), dtype=np.uint16).astype(np.uint32)
        count: np.ndarray | int = self.uniform_count or self.usable_count[rows].astype(np.uint32)
        a = (draws[0] * count) >> 16
        b = (draws[1] * (count - 1)) >> 16
        b += b >= a
        pair = np.empty((len(rows), 2), dtype=np.int64)
        pair[:, 0] = a
        pair[:, 1] = b
        if self.uniform_count:  # every usable row's views are 0 .. c-1: rank = view id
            return pair
        # rows whose usable views are not 0..c-1 (some views unwritten): rank -> view id
        odd = np.flatnonzero(~self.usable_prefix[rows])
        if len(odd):
            ranks = np.cumsum(self.usable_views[rows[odd]], axis=1)  # (k, V)
            for col in (0, 1):
                pair[odd, col] = (ranks > pair[odd, col][:, None]).argmax(axis=1)
        return pair

    def _plan(self, epoch: int, tag: int) -> EpochPlan:
        """Epoch ``epoch``'s plan (from the background thread when it was started ahead), and the
        next epoch's started in the background."""
        ahead = self._ahead.pop((epoch, tag), None)
        plan = ahead.result() if ahead is not None else self.plan_epoch(epoch, tag)
        self._ahead.clear()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="disco-plan")
        self._ahead[(epoch + 1, tag)] = self._pool.submit(self.plan_epoch, epoch + 1, tag)
        return plan

    def __getstate__(self) -> dict[str, Any]:
        # the background planner is per process (a DataLoader may pickle the sampler)
        return self.__dict__ | {"_ahead": {}, "_pool": None}

    # -- reading ----------------------------------------------------------------------------------

    def _read_params(self, start: int, stop: int) -> np.ndarray:
        """(n, V, P) float32 view params of rows ``start:stop`` (only these rows are read)."""
        return np.asarray(self.store.group["views/params"][start:stop], dtype=np.float32)

    def _gather(self, shard: int, rows: np.ndarray, views: np.ndarray) -> _Gathered:
        """Read ``shard`` and copy out the slots (``rows`` (k,) manifest rows in it, ``views``
        (k, 2)); the block itself is dropped on return."""
        self.shards_read.append(shard)
        start, _ = self.store.shard_bounds(shard)
        local = (rows - start)[:, None]
        ones = np.ones((len(rows), 2), dtype=bool)
        if not self.use_targets:  # params only: the embeddings are not read
            return _Gathered(
                None, self._read_params(start, int(rows.max()) + 1)[local, views], ones
            )
        if self.fill_dim is not None and self.store.teacher is None:
            # the service attaches a teacher at its first write-through (this handle's teacher:
            # in a store of several, another one may be there already)
            self.store.refresh()
        if self.store.teacher is None:  # lazy fill before the service's first write: zeros
            assert self.fill_dim is not None
            params = self._read_params(start, int(rows.max()) + 1)[local, views]
            zeros = np.zeros((len(rows), 2, self.fill_dim), dtype=np.float32)
            return _Gathered(zeros, params, ~ones)
        block = self.store.read_shard(shard)
        targets = block.embeddings[local, views]  # (k, 2, D) copies: the block is dropped
        written = block.written[local, views]
        if self.fill_dim is not None:  # a slot that `disco store check` would flag is refetched
            norms = np.linalg.norm(targets, axis=-1)
            written &= np.abs(norms - 1.0) < 0.05  # int8 stores: a few 1e-3 off
        return _Gathered(targets, block.params[local, views], written)

    def batches(self, epoch: int, tag: int = TAG_TRAIN, skip: int = 0) -> Iterator[list[PairItem]]:
        """This rank's batches of epoch ``epoch`` (``steps_per_epoch`` of them), after ``skip``.

        Reads each shard when the first remaining batch needing it comes (so a resume at batch
        ``skip`` reads no shard only earlier batches needed) and keeps just the chosen slots;
        each batch's targets are one (b, 2, D) float32 copy its items are views of."""
        plan = self._plan(epoch, tag)
        self.shards_read = []
        b, first = self.batch, skip * self.batch
        rows, views = plan.rows[first:], plan.views[first:]
        if len(rows) == 0:
            return
        shard_of = rows // self.shard_size
        order = np.argsort(shard_of, kind="stable")  # positions grouped by shard, ascending
        shards, lo, counts = np.unique(shard_of[order], return_index=True, return_counts=True)
        first_batch = order[lo] // b
        last_pos = np.maximum.reduceat(order, lo)
        last_batch = last_pos // b
        slot = np.empty(len(rows), dtype=np.int64)  # position -> index in its shard's copy
        loads: dict[int, list[int]] = {}
        for k, fb in enumerate(first_batch.tolist()):
            loads.setdefault(fb, []).append(k)
        drops: dict[int, list[int]] = {}
        for k, lb in enumerate(last_batch.tolist()):
            drops.setdefault(lb, []).append(k)
        live: dict[int, _Gathered] = {}
        for j in range(self.steps_per_epoch - skip):
            for k in loads.get(j, []):
                pos = order[lo[k] : lo[k] + counts[k]]
                slot[pos] = np.arange(len(pos))
                live[k] = self._gather(int(shards[k]), rows[pos], views[pos])
            self.live_peak = max(self.live_peak, len(live))
            yield self._items(rows, views, shard_of, slot, live, shards, j)
            for k in drops.get(j, []):
                del live[k]

    def _items(
        self,
        rows: np.ndarray,
        views: np.ndarray,
        shard_of: np.ndarray,
        slot: np.ndarray,
        live: dict[int, _Gathered],
        shards: np.ndarray,
        j: int,
    ) -> list[PairItem]:
        """Batch ``j`` (relative to the skip) as items: params and targets copied out of the live
        shards' slots into one (b, 2, P) and one (b, 2, D) array."""
        b = self.batch
        sel = slice(j * b, (j + 1) * b)
        brows, bviews, bshard, bslot = rows[sel], views[sel], shard_of[sel], slot[sel]
        some = next(iter(live.values()))
        params = np.empty((b, *some.params.shape[1:]), dtype=np.float32)
        written = np.empty((b, 2), dtype=bool)
        targets = None
        if some.targets is not None:
            targets = np.empty((b, *some.targets.shape[1:]), dtype=np.float32)
        for k in np.unique(np.searchsorted(shards, bshard)).tolist():
            m = bshard == shards[k]
            got = live[k]
            params[m] = got.params[bslot[m]]
            written[m] = got.written[bslot[m]]
            if targets is not None and got.targets is not None:
                targets[m] = got.targets[bslot[m]]
        indices = self.image_indices[brows].tolist()
        check_written = self.fill_dim is not None
        return [
            PairItem(
                row=r,
                image_index=indices[n],
                views=(v[0], v[1]),
                params=(params[n, 0], params[n, 1]),
                targets=None if targets is None else (targets[n, 0], targets[n, 1]),
                written=(bool(written[n, 0]), bool(written[n, 1]))
                if check_written
                else (True, True),
            )
            for n, (r, v) in enumerate(zip(brows.tolist(), bviews.tolist(), strict=True))
        ]


class DatasetPlan:
    """Epoch plans straight from a dataset (no store): a seeded permutation of the valid rows.

    Rank r takes every ``world``-th row of the permutation. View ids of epoch e are ``2e`` and
    ``2e + 1`` (tag TAG_PREFILL uses ``2(epochs + e)`` ...), sampled in the worker. A ``skip``
    is a slice of the epoch's arrays (nothing replayed).
    """

    version = DATASET_PLAN_VERSION

    def __init__(
        self,
        manifest: Manifest,
        *,
        seed: int,
        batch: int,
        epochs: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.manifest = manifest
        self.rows = np.flatnonzero(manifest.valid)
        self.seed = seed
        self.batch = batch
        self.epochs = epochs
        self.rank = rank
        self.world = world
        self.num_samples = len(self.rows)
        self.steps_per_epoch = (self.num_samples // world) // batch
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"{self.num_samples} valid images are not enough for one batch of {batch} "
                f"on each of {world} rank(s)"
            )

    def plan_epoch(self, epoch: int, tag: int = TAG_TRAIN) -> EpochPlan:
        """This rank's epoch as int arrays (see :class:`EpochPlan`; the view ids are the same
        for every row)."""
        rng = np.random.default_rng(plan_seed(self.seed, epoch, tag))
        take = self.steps_per_epoch * self.batch
        rows = rng.permutation(self.rows)[self.rank :: self.world][:take].astype(np.int64)
        base = 2 * (epoch + (self.epochs if tag == TAG_PREFILL else 0))
        views = np.broadcast_to(np.array([base, base + 1], dtype=np.int64), (take, 2))
        return EpochPlan(rows, views)

    def batches(self, epoch: int, tag: int = TAG_TRAIN, skip: int = 0) -> Iterator[list[PairItem]]:
        """This rank's batches of epoch ``epoch`` (``steps_per_epoch`` of them), after ``skip``."""
        plan = self.plan_epoch(epoch, tag)
        pair = (int(plan.views[0, 0]), int(plan.views[0, 1])) if len(plan.rows) else (0, 1)
        indices = np.asarray(self.manifest.indices, dtype=np.int64)
        for b in range(skip, self.steps_per_epoch):
            rows = plan.rows[b * self.batch : (b + 1) * self.batch]
            pairs = zip(rows.tolist(), indices[rows].tolist(), strict=True)
            yield [PairItem(r, i, pair, None, None) for r, i in pairs]


class BatchFilter(Protocol):
    """Something that completes a plan's batches before the DataLoader gets them (lazy fill)."""

    def run_ahead(
        self, batches: Iterator[list[PairItem]], tag: int
    ) -> Iterator[list[PairItem]]: ...


class EpochBatchSampler(Sampler[list[PairItem]]):
    """Batch sampler handing a plan's batches to a DataLoader; ``set_epoch`` picks the stream.

    ``filler`` (lazy fill): the plan's batches pass through ``filler.run_ahead`` (a bounded
    background fetcher of missing targets) on their way to the DataLoader."""

    def __init__(self, plan: StorePlan | DatasetPlan, filler: BatchFilter | None = None) -> None:
        self.plan = plan
        self.filler = filler
        self.epoch = 0
        self.tag = TAG_TRAIN
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0, tag: int = TAG_TRAIN) -> None:
        """Iterate epoch ``epoch`` of stream ``tag`` next, without its first ``skip`` batches."""
        self.epoch, self.skip, self.tag = epoch, skip, tag

    def __iter__(self) -> Iterator[list[PairItem]]:
        batches = self.plan.batches(self.epoch, self.tag, self.skip)
        if self.filler is None:
            return batches
        return self.filler.run_ahead(batches, self.tag)

    def __len__(self) -> int:
        return max(0, self.plan.steps_per_epoch - self.skip)
