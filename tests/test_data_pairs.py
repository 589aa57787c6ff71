"""Data plans and rendering: worker-independent, distinct views, disjoint DDP shares."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from store.datasets import ImageDataset, open_dataset
from store.errors import ConfigError
from store.manifest import Manifest, build_manifest
from store.views import get_recipe, render_view
from student_trainer.train.data import (
    TAG_PREFILL,
    DatasetPlan,
    EpochBatchSampler,
    ImageBank,
    PairBatch,
    PairRenderer,
    collate_pairs,
)

Data = tuple[ImageDataset, Manifest]


@pytest.fixture(scope="module")
def synthetic() -> Data:
    ds = open_dataset("synthetic:40")
    return ds, build_manifest(ds, "all", progress=False)


def _render_epoch(plan: DatasetPlan, renderer: PairRenderer, workers: int) -> list[PairBatch]:
    sampler = EpochBatchSampler(plan)
    sampler.set_epoch(1)
    loader = DataLoader(
        renderer,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate_pairs,
    )
    return list(loader)


def test_two_workers_render_distinct_views_identical_to_in_process(synthetic: Data) -> None:
    ds, manifest = synthetic
    recipe = get_recipe("mocov2", 16)
    renderer = PairRenderer(ImageBank(ds, manifest, cache=True), recipe, seed=5)
    plan = DatasetPlan(manifest, seed=5, batch=8, epochs=3)
    two = _render_epoch(plan, renderer, workers=2)
    zero = _render_epoch(plan, renderer, workers=0)
    assert len(two) == plan.steps_per_epoch == 5
    seen: dict[bytes, tuple[int, int]] = {}
    for b_two, b_zero in zip(two, zero, strict=True):
        assert torch.equal(b_two.view1, b_zero.view1) and torch.equal(b_two.view2, b_zero.view2)
        for j in range(len(b_two.rows)):
            row = int(b_two.rows[j])
            for col, views in ((0, b_two.view1), (1, b_two.view2)):
                key = (row, int(b_two.views[j, col]))
                digest = hashlib.sha256(views[j].numpy().tobytes()).digest()
                assert seen.setdefault(digest, key) == key, "two (i, v) got the same view"
                # the worker's view is the one render of the counter-based params of (i, v)
                index = int(manifest.indices[row])  # views are keyed by the dataset index
                img = ds.load(index)
                params = recipe.sample(5, index, key[1], *img.shape[:2])
                assert torch.equal(views[j], render_view(img, params, recipe))
    assert len(seen) == 2 * 5 * 8
    rows = torch.cat([b.rows for b in two])
    assert len(set(rows.tolist())) == len(rows)  # an epoch never repeats an image


def test_dataset_plan_epochs_ranks_and_skip(synthetic: Data) -> None:
    _, manifest = synthetic
    full = list(DatasetPlan(manifest, seed=1, batch=4, epochs=2).batches(0))
    again = list(DatasetPlan(manifest, seed=1, batch=4, epochs=2).batches(0))
    assert full == again or all(
        [a.row for a in x] == [b.row for b in y] for x, y in zip(full, again, strict=True)
    )
    skipped = list(DatasetPlan(manifest, seed=1, batch=4, epochs=2).batches(0, skip=3))
    assert [[i.row for i in b] for b in skipped] == [[i.row for i in b] for b in full[3:]]
    other = list(DatasetPlan(manifest, seed=1, batch=4, epochs=2).batches(1))
    assert [i.row for i in other[0]] != [i.row for i in full[0]]
    assert other[0][0].views == (2, 3) and full[0][0].views == (0, 1)
    prefill = next(DatasetPlan(manifest, seed=1, batch=4, epochs=2).batches(0, TAG_PREFILL))
    assert prefill[0].views == (4, 5)  # never a training view
    shares = [
        {
            i.row
            for b in DatasetPlan(manifest, seed=1, batch=4, epochs=2, rank=r, world=2).batches(0)
            for i in b
        }
        for r in (0, 1)
    ]
    assert shares[0] and shares[1] and not shares[0] & shares[1]
    with pytest.raises(ConfigError, match="not enough"):
        DatasetPlan(manifest, seed=1, batch=64, epochs=1)


def test_image_bank_cache_decision(synthetic: Data) -> None:
    ds, manifest = synthetic
    assert ImageBank.should_cache(manifest, None) is True
    assert ImageBank.should_cache(manifest, False) is False
    lazy = ImageBank(ds, manifest, cache=False)
    cached = ImageBank(ds, manifest, cache=True)
    assert np.array_equal(lazy.image(3), cached.image(3))
