"""Training data: (i, v1, v2) view pairs rendered in DataLoader workers.

The *plan* (which rows, which views, in which order) is decided in the main process by a seeded
RNG keyed by (seed, epoch, tag, rank), so it does not depend on the number of workers, and the
data position of a run is just (epoch, batches consumed). Workers only decode and render: a
:class:`PairItem` carries everything a view needs (stored params, or the counter-based key the
params are sampled from), so no augmentation state lives in a worker.

- Store mode (:class:`StorePlan`): whole shards in a seeded random order
  (``EmbeddingStore.iter_blocks``), rank r reading shards ``s % world == r``; rows pass through a
  shuffle buffer; each row gets two different cached views v1 != v2 (among its written views);
  params and teacher targets are taken from the block in memory. With lazy fill
  (``StorePlan(fill_dim=D)``) every valid view counts as usable, written or not, so the (i, v1, v2)
  sequence is the full store's; each shard is read when the plan reaches it (seeing what a
  concurrent precompute job or service wrote until then) and items whose views are not written
  yet carry ``written`` False: :class:`student_trainer.train.lazyfill.TargetFiller` fetches them.
- Dataset mode (:class:`DatasetPlan`): a seeded permutation of the split per epoch; view params are
  sampled in the worker with ``recipe.sample(seed, index, view_id, h, w)`` where view ids
  ``2·epoch`` and ``2·epoch + 1`` make every epoch's views fresh and reproducible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from rich.progress import Progress
from torch.utils.data import Dataset, Sampler

from store.datasets import ImageDataset
from store.embedding_store import ShardBlock
from store.errors import ConfigError
from store.manifest import Manifest
from store.views import Recipe, render_view, render_views_normalised

__all__ = [
    "TAG_PREFILL",
    "TAG_TRAIN",
    "BatchFilter",
    "DatasetPlan",
    "EpochBatchSampler",
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
    (b decoded (H, W, 3) uint8 images) with ``params1``/``params2`` (b, P) float32 travel instead;
    :func:`render_pairs` renders them on the training device."""

    rows: torch.Tensor
    views: torch.Tensor
    view1: torch.Tensor
    view2: torch.Tensor
    target1: torch.Tensor | None
    target2: torch.Tensor | None
    sources: list[np.ndarray] | None = None
    params1: np.ndarray | None = None
    params2: np.ndarray | None = None

    def pin_memory(self) -> PairBatch:
        """The same batch in pinned host memory (``DataLoader(pin_memory=True)`` calls this on
        CUDA; without it a dataclass batch stays pageable and copies to the GPU synchronously)."""

        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory()

        return PairBatch(
            self.rows, self.views, self.view1.pin_memory(), self.view2.pin_memory(),
            pin(self.target1), pin(self.target2), self.sources, self.params1, self.params2,
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
            rows, views, empty, empty, t1, t2, sources=[s["source"] for s in samples],
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
    x = render_views_normalised([*batch.sources, *batch.sources], params, recipe, device)
    return dataclasses.replace(batch, view1=x[:n], view2=x[n:], sources=None)


@dataclass
class _ParamsBlock:
    """Rows ``start:stop`` of a store without embeddings: ``params`` (n, V, P) float32."""

    start: int
    stop: int
    params: np.ndarray


class StorePlan:
    """Epoch plans over a store: shard blocks in seeded order, a shuffle buffer, view pairs.

    ``use_targets``: attach cached teacher targets (and use only written views); False for
    ``mocov2`` or an online teacher, where any view of a valid row may be used. ``max_views``:
    use only views ``0 .. max_views - 1`` of each row (None = all). ``fill_dim``: lazy fill with
    targets of width D: every valid view is usable as on a full store (the same (i, v1, v2)
    sequence), unwritten targets come as zeros with ``PairItem.written`` False, and a store
    without a teacher yet is re-opened at each shard until one is attached.
    Every rank gets the same number of batches per epoch (``steps_per_epoch``), the minimum over
    ranks of usable rows // ``batch``.
    """

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
        usable = np.repeat(manifest.valid[:, None], views, axis=1)
        if max_views is not None:
            usable[:, max_views:] = False
        if use_targets and fill_dim is None:
            usable &= np.asarray(store.written_mask(), dtype=bool)
        self.usable_views = usable
        self.usable_rows = usable.sum(axis=1) >= 2
        self.shards = [s for s in range(int(store.num_shards)) if s % world == rank]
        per_rank = []
        for r in range(world):
            n = 0
            for s in range(r, int(store.num_shards), world):
                start, stop = store.shard_bounds(s)
                n += int(self.usable_rows[start:stop].sum())
            per_rank.append(n)
        self.num_samples = int(self.usable_rows.sum())
        self.steps_per_epoch = min(per_rank) // batch
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"not enough usable rows for one batch of {batch} per rank "
                f"(usable rows per rank: {per_rank}; unwritten views and bad images are skipped)"
            )

    def _blocks(self, block_seed: int) -> Iterator[Any]:
        """This rank's shard blocks in the seeded order of ``EmbeddingStore.iter_blocks``.

        A store without teacher embeddings (online-teacher runs) has no ``written``/``embeddings``
        arrays, so its blocks carry the stored params only, in the same order.
        """
        if self.fill_dim is not None:
            yield from self._fill_blocks(block_seed)
            return
        if self.use_targets or self.store.teacher is not None:
            yield from self.store.iter_blocks(seed=block_seed, shards=self.shards)
            return
        params = self.store.params
        for k in np.random.default_rng(block_seed).permutation(len(self.shards)).tolist():
            start, stop = self.store.shard_bounds(self.shards[k])
            yield _ParamsBlock(start, stop, params[start:stop])

    def _fill_blocks(self, block_seed: int) -> Iterator[ShardBlock]:
        """Lazy fill: the shards in ``iter_blocks``' order, each read when reached; a store still
        without a teacher is re-opened (the service attaches one at its first write-through)
        and meanwhile gives all-unwritten blocks of zeros."""
        assert self.fill_dim is not None
        views = int(self.store.views)
        for k in np.random.default_rng(block_seed).permutation(len(self.shards)).tolist():
            shard = self.shards[k]
            if self.store.teacher is None:
                fresh = type(self.store).open(self.store.url)
                if fresh.teacher is not None:
                    self.store = fresh
            if self.store.teacher is not None:
                block = self.store.read_shard(shard)
                yield dataclasses.replace(block, written=_unit_targets(block))
                continue
            start, stop = self.store.shard_bounds(shard)
            n = stop - start
            yield ShardBlock(
                shard=shard,
                start=start,
                stop=stop,
                embeddings=np.zeros((n, views, self.fill_dim), dtype=np.float32),
                written=np.zeros((n, views), dtype=bool),
                params=self.store.params[start:stop],
            )

    def batches(self, epoch: int, tag: int = TAG_TRAIN, skip: int = 0) -> Iterator[list[PairItem]]:
        """This rank's batches of epoch ``epoch`` (``steps_per_epoch`` of them), after ``skip``."""
        seq = plan_seed(self.seed, epoch, tag, self.rank)
        rng = np.random.default_rng(seq)
        block_seed = int(plan_seed(self.seed, epoch, tag).generate_state(1)[0])
        buffer: list[PairItem] = []
        out: list[PairItem] = []
        emitted = 0

        def take(item: PairItem) -> Iterator[list[PairItem]]:
            nonlocal emitted
            out.append(item)
            if len(out) == self.batch:
                batch = list(out)
                out.clear()
                emitted += 1
                if emitted > skip:
                    yield batch

        for block in self._blocks(block_seed):
            for local in range(block.stop - block.start):
                row = block.start + local
                if not self.usable_rows[row]:
                    continue
                choices = np.flatnonzero(self.usable_views[row])
                v1, v2 = (int(v) for v in rng.choice(choices, size=2, replace=False))
                targets = None
                written = (True, True)
                if self.use_targets:
                    targets = (block.embeddings[local, v1], block.embeddings[local, v2])
                    if self.fill_dim is not None:
                        written = (bool(block.written[local, v1]), bool(block.written[local, v2]))
                item = PairItem(
                    row=row,
                    image_index=int(self.store.manifest.indices[row]),
                    views=(v1, v2),
                    params=(block.params[local, v1], block.params[local, v2]),
                    targets=targets,
                    written=written,
                )
                if len(buffer) < self.buffer_size:
                    buffer.append(item)
                    continue
                j = int(rng.integers(len(buffer)))
                buffer[j], item = item, buffer[j]
                yield from take(item)
                if emitted >= self.steps_per_epoch:
                    return
        for j in rng.permutation(len(buffer)):
            yield from take(buffer[int(j)])
            if emitted >= self.steps_per_epoch:
                return


def _unit_targets(block: ShardBlock) -> np.ndarray:
    """(n, V) bool: the block's slots that are written and hold a unit vector (a slot that
    ``disco store check`` would flag is fetched again instead of trained on)."""
    norms = np.linalg.norm(block.embeddings, axis=-1)
    return block.written & (np.abs(norms - 1.0) < 0.05)  # int8 stores: a few 1e-3 off


class DatasetPlan:
    """Epoch plans straight from a dataset (no store): a seeded permutation of the valid rows.

    Rank r takes every ``world``-th row of the permutation. View ids of epoch e are ``2e`` and
    ``2e + 1`` (tag TAG_PREFILL uses ``2(epochs + e)`` ...), sampled in the worker.
    """

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

    def batches(self, epoch: int, tag: int = TAG_TRAIN, skip: int = 0) -> Iterator[list[PairItem]]:
        """This rank's batches of epoch ``epoch`` (``steps_per_epoch`` of them), after ``skip``."""
        rng = np.random.default_rng(plan_seed(self.seed, epoch, tag))
        mine = rng.permutation(self.rows)[self.rank :: self.world]
        base = 2 * (epoch + (self.epochs if tag == TAG_PREFILL else 0))
        indices = self.manifest.indices
        for b in range(skip, self.steps_per_epoch):
            rows = mine[b * self.batch : (b + 1) * self.batch]
            yield [PairItem(int(r), int(indices[r]), (base, base + 1), None, None) for r in rows]


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
