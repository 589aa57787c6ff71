"""Training from a store: steps see embeddings[i, v] and render(params[i, v]); mismatch refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import CheckpointError, ConfigError, StoreMismatchError
from store.manifest import build_manifest
from store.views import get_recipe, render_view
from student_trainer.train.config import TrainConfig
from student_trainer.train.data import StorePlan
from student_trainer.train.loop import train

TEACHER = {"arch": "tiny", "sha256": "ab" * 32}
DIM = 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """synthetic:40, V=3 views at 16 px, 3 shards (16, 16, 8 rows), random unit targets;
    row 5 has only one written view, so it can never form a pair."""
    url = str(tmp_path_factory.mktemp("store") / "s.zarr")
    ds = open_dataset("synthetic:40")
    manifest = build_manifest(ds, "all", progress=False)
    store = EmbeddingStore.create(
        url, manifest=manifest, recipe=get_recipe("mocov2", 16), seed=3, views=3, shard_size=16
    )
    store.attach_teacher(TEACHER, dim=DIM)
    rng = np.random.default_rng(0)
    for s in range(store.num_shards):
        a, b = store.shard_bounds(s)
        emb = rng.standard_normal((b - a, 3, DIM)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=2, keepdims=True)
        written = np.ones((b - a, 3), dtype=bool)
        if a <= 5 < b:
            written[5 - a, 1:] = False
        store.write_shard(s, emb, written=written)
    return url


def _cfg(out: Path, store: str, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        method="disco",
        arch="tiny",
        out=str(out),
        store=store,
        batch_size=8,
        epochs=1,
        queue_size=16,
        head_hidden=32,
        num_workers=0,
        progress=False,
    )
    return TrainConfig(**(base | kw))


def test_step_receives_cached_targets_and_renders_of_stored_params(
    store_url: str, tmp_path: Path
) -> None:
    store = EmbeddingStore.open(store_url)
    blocks = {s: store.read_shard(s) for s in range(store.num_shards)}
    params = store.params
    ds = open_dataset("synthetic:40")
    recipe = store.recipe
    checked: list[int] = []

    def hook(step: int, batch: Any, output: Any) -> None:
        for j, row in enumerate(batch.rows.tolist()):
            v1, v2 = batch.views[j].tolist()
            assert v1 != v2 and row != 5
            block = blocks[row // 16]
            for v, view, target in (
                (v1, batch.view1, batch.target1),
                (v2, batch.view2, batch.target2),
            ):
                assert torch.equal(
                    target[j], torch.from_numpy(block.embeddings[row - block.start, v])
                )
                expected = render_view(
                    ds.load(int(store.manifest.indices[row])), params[row, v], recipe
                )
                assert torch.equal(view[j], expected)
            checked.append(row)
        assert set(output.terms) == {"infonce", "distill", "mse"}

    result = train(_cfg(tmp_path, store_url, stop_at_step=2, queue_size=1000), step_hook=hook)
    assert result.steps == 2 and len(checked) == 16
    assert result.queue_size == 39 - 8  # capped at usable rows - batch (row 5 is unusable)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("teacher.sha256", "cd" * 32),
        ("recipe.name", "digits"),
        ("recipe.views", 8),
        ("dataset.spec", "mnist5k"),
    ],
)
def test_mismatched_store_is_refused_before_training(
    store_url: str, tmp_path: Path, field: str, value: object
) -> None:
    with pytest.raises(StoreMismatchError, match=field.replace(".", r"\.")):
        train(_cfg(tmp_path, store_url, expect={field: value}))
    assert not (tmp_path / "log.jsonl").exists() and not (tmp_path / "ckpt").exists()


def test_store_with_another_render_fingerprint_is_refused(store_url: str, tmp_path: Path) -> None:
    """Cached targets pair with fresh renders: a store whose recorded render fingerprint differs
    from this install's is refused by name, unless the run accepts the drift."""
    import shutil

    url = str(tmp_path / "drift.zarr")
    shutil.copytree(store_url, url)
    store = EmbeddingStore.open(url, mode="r+")
    store.group.attrs.update({"render": {**store.attrs["render"], "fingerprint": "f" * 64}})
    with pytest.raises(StoreMismatchError, match=r"render\.fingerprint.*accept-render-drift"):
        train(_cfg(tmp_path / "a", url))
    assert not (tmp_path / "a" / "log.jsonl").exists()
    with pytest.warns(UserWarning, match="render.fingerprint"):
        result = train(_cfg(tmp_path / "b", url, stop_at_step=1, accept_render_drift=True))
    assert result.steps == 1


def test_store_plan_blocks_ranks_and_skip(store_url: str) -> None:
    store = EmbeddingStore.open(store_url)
    plan = StorePlan(store, seed=1, batch=4, buffer_size=6)
    epoch = [[i.row for i in b] for b in plan.batches(0)]
    rows = [r for b in epoch for r in b]
    assert len(epoch) == plan.steps_per_epoch == 39 // 4
    assert len(set(rows)) == len(rows) and 5 not in rows
    assert epoch[2:] == [[i.row for i in b] for b in plan.batches(0, skip=2)]
    assert epoch != [[i.row for i in b] for b in plan.batches(1)]
    shares = [
        {i.row for b in StorePlan(store, seed=1, batch=4, rank=r, world=2).batches(0) for i in b}
        for r in (0, 1)
    ]
    assert shares[0] <= set(range(0, 16)) | set(range(32, 40))  # shards 0 and 2
    assert shares[1] <= set(range(16, 32)) and shares[1]


def test_seed_from_store_fills_teacher_queue_with_cached_targets(
    store_url: str, tmp_path: Path
) -> None:
    result = train(_cfg(tmp_path, store_url, method="seed", stop_at_step=1))
    state = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    bank = state["model"]["teacher_queue"]
    assert result.steps == 1 and bank.shape == (16, DIM)
    store = EmbeddingStore.open(store_url)
    cached = np.concatenate([store.read_shard(s).embeddings.reshape(-1, DIM) for s in range(3)])
    dist = torch.cdist(bank, torch.from_numpy(cached)).min(dim=1).values
    assert torch.all(dist < 1e-6)  # every entry is one of the store's embeddings


def test_plan_over_a_store_without_teacher_uses_stored_params(tmp_path: Path) -> None:
    ds = open_dataset("synthetic:40")
    store = EmbeddingStore.create(
        str(tmp_path / "bare.zarr"),
        manifest=build_manifest(ds, "all", progress=False),
        recipe=get_recipe("mocov2", 16),
        seed=3,
        views=2,
        shard_size=16,
    )
    plan = StorePlan(store, seed=0, batch=8, use_targets=False)  # e.g. an online-teacher run
    items = [i for b in plan.batches(0) for i in b]
    assert len(items) == 8 * (40 // 8)
    for item in items:
        assert item.targets is None and item.params is not None
        assert np.array_equal(item.params[0], store.params[item.row, item.views[0]])


def test_views_limits_training_to_the_first_views_of_each_row(
    store_url: str, tmp_path: Path
) -> None:
    """views=2 of a V=3 store: every pair is (0, 1); a bad views value is refused up front."""
    pairs: set[tuple[int, int]] = set()

    def hook(step: int, batch: Any, output: Any) -> None:
        pairs.update(tuple(sorted(v)) for v in batch.views.tolist())

    train(_cfg(tmp_path / "two", store_url, stop_at_step=3, views=2), step_hook=hook)
    assert pairs == {(0, 1)}
    store = EmbeddingStore.open(store_url)
    with pytest.raises(ConfigError, match="between 2 and the store's V=3"):
        StorePlan(store, seed=0, batch=4, max_views=4)
    with pytest.raises(ConfigError, match="views needs a store"):
        TrainConfig(method="mocov2", arch="tiny", out=str(tmp_path), dataset="mnist5k", views=2)


def test_a_checkpoint_planned_under_another_rule_refuses_to_resume(
    store_url: str, tmp_path: Path
) -> None:
    train(_cfg(tmp_path, store_url, stop_at_step=1))
    path = tmp_path / "ckpt" / "last.pt"
    state = torch.load(path, weights_only=True)
    assert state["plan"] == StorePlan.version == "store-plan/2"
    for old in ({"plan": "store-plan/1"}, {}):  # {}: written before plans were versioned
        edited = {k: v for k, v in state.items() if k != "plan"} | old
        torch.save(edited, path)
        with pytest.raises(CheckpointError, match=r"planned under store-plan/1.*store-plan/2"):
            train(_cfg(tmp_path, store_url, stop_at_step=2, resume=True))
    torch.save(state, path)
    assert train(_cfg(tmp_path, store_url, stop_at_step=2, resume=True)).steps == 2
