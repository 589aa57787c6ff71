"""A student of several teachers (#28): the multi-teacher loss pinned by hand-computed values,
and the real loop on a real two-teacher store (one head per teacher, views a teacher has not
written skipped for its term only, the export is the backbone alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import ConfigError, StoreError
from store.manifest import build_manifest
from store.multi import MultiTargetStore
from store.views import get_recipe
from student_trainer.train.config import TrainConfig
from student_trainer.train.loop import train
from student_trainer.train.losses import (
    disco_mse,
    multi_teacher_loss,
    multi_teacher_seed_loss,
    seed_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")

DIMS = {"a": 8, "b": 6}


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)


def test_one_teacher_equals_disco() -> None:
    g = torch.Generator().manual_seed(0)
    raw1, raw2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    t1, t2 = _unit(torch.randn(5, 8, generator=g)), _unit(torch.randn(5, 8, generator=g))
    loss, per = multi_teacher_loss([raw1], [raw2], t1, t2, [(0, 8)], [3.0])
    expected = disco_mse(_unit(raw1), t1) + disco_mse(_unit(raw2), t2)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(per, expected[None])


def test_two_teachers_weighted_mean_and_missing_views_by_hand() -> None:
    # 2 images, teacher A (D 2) and B (D 1). Heads output unit vectors already.
    a1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b1 = torch.tensor([[1.0], [-1.0]])
    a2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    b2 = torch.tensor([[1.0], [1.0]])
    # view 1: A's targets (0,1) and (0,1); B's (1) for image 0, not written for image 1
    t1 = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    # view 2: A not written for image 0; B written for both
    t2 = torch.tensor([[0.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
    loss, per = multi_teacher_loss([a1, b1], [a2, b2], t1, t2, [(0, 2), (2, 3)], [1.0, 3.0])
    # A: view 1 d = [2, 0] -> mean 1; view 2 only image 1, d = 0 -> 0.   T_A = 1
    # B: view 1 only image 0, d = 0 -> 0; view 2 d = [4, 0] -> mean 2.   T_B = 2
    torch.testing.assert_close(per, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(loss, torch.tensor((1 * 1.0 + 3 * 2.0) / 4))
    # A teacher absent from the whole batch leaves the mean to the others.
    t1z, t2z = t1.clone(), t2.clone()
    t1z[:, 2:] = 0
    t2z[:, 2:] = 0
    loss, per = multi_teacher_loss([a1, b1], [a2, b2], t1z, t2z, [(0, 2), (2, 3)], [1.0, 3.0])
    torch.testing.assert_close(loss, torch.tensor(1.0))


def test_cosine_variant_and_teacher_dropping_by_hand() -> None:
    raw = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    t = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    loss, per = multi_teacher_loss(raw, raw, t, t, [(0, 2), (2, 4)], [1.0, 1.0], "cosine")
    # teacher 0: cos 0 -> 0.5; smooth-L1 of (2-0, 0-1): (1.5 + 0.5) / 2 = 1 -> 0.5; both views
    # teacher 1: identical -> 0
    torch.testing.assert_close(per, torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(loss, torch.tensor(1.0))
    # Dropping: teacher 0 has the larger loss and is always kept; teacher 1 (loss 0 here, so
    # use mse with a worse head 1) is dropped where its draw is below p.
    raw = [torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]])]
    t = torch.tensor([[0.0, 1.0, 0.6, 0.8]])
    d0, d1 = 2.0, (1 - 0.6) ** 2 + 0.8**2
    u = torch.tensor([[[0.0, 0.1]], [[0.0, 0.9]]])  # (2 views, 1 image, 2 teachers)
    loss, per = multi_teacher_loss(
        raw, raw, t, t, [(0, 2), (2, 4)], [1.0, 1.0], drop=0.5, uniform=u
    )
    # view 1: teacher 1 drawn 0.1 < 0.5 -> dropped; view 2: 0.9 -> kept. Teacher 0: argmax.
    torch.testing.assert_close(per, torch.tensor([2 * d0, d1]))
    with pytest.raises(ValueError, match="uniform"):
        multi_teacher_loss(raw, raw, t, t, [(0, 2), (2, 4)], [1.0, 1.0], drop=0.5)


@pytest.fixture(scope="module")
def two_teacher_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """synthetic:40, V=3 at 16 px, shards of 16 rows; teacher a writes every view, teacher b
    (added later, as `--as b`) leaves view 2 of every row unwritten."""
    url = str(tmp_path_factory.mktemp("store") / "s.zarr")
    manifest = build_manifest(open_dataset("synthetic:40"), "all", progress=False)
    store = EmbeddingStore.create(
        url, manifest=manifest, recipe=get_recipe("mocov2", 16), seed=3, views=3, shard_size=16,
        target="a",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for name, dim in DIMS.items():
        handle = store if name == "a" else EmbeddingStore.open(url, mode="r+", target=name)
        handle.attach_teacher({"arch": "tiny", "sha256": name * 32}, dim=dim)
        for s in range(handle.num_shards):
            a, b = handle.shard_bounds(s)
            emb = rng.standard_normal((b - a, 3, dim)).astype(np.float32)
            emb /= np.linalg.norm(emb, axis=2, keepdims=True)
            written = np.ones((b - a, 3), bool)
            if name == "b":
                written[:, 2] = False
            handle.write_shard(s, emb, written=written)
    return url


def _cfg(out: Path, store: str, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        method="disco", arch="tiny", out=str(out), store=store, batch_size=8, epochs=1,
        queue_size=16, head_hidden=32, num_workers=0, progress=False, targets="a:1,b:3",
    )  # fmt: skip
    return TrainConfig(**(base | kw))


def test_multi_target_blocks_keep_each_teachers_segment(two_teacher_store: str) -> None:
    multi = MultiTargetStore.open(two_teacher_store, ["a", "b"])
    a = EmbeddingStore.open(two_teacher_store, target="a").read_shard(1)
    b = EmbeddingStore.open(two_teacher_store, target="b").read_shard(1)
    block = multi.read_shard(1)
    assert block.embeddings.shape == (16, 3, 14) and block.written.all()
    np.testing.assert_array_equal(block.embeddings[..., :8], a.embeddings)
    np.testing.assert_array_equal(block.embeddings[:, :2, 8:], b.embeddings[:, :2])
    assert not block.embeddings[:, 2, 8:].any()  # b never wrote view 2: zeros
    concat = MultiTargetStore.open(two_teacher_store, ["a", "b"], "concat").read_shard(1)
    norms = np.linalg.norm(concat.embeddings, axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-3)
    with pytest.raises(StoreError, match=r"no teacher 'c' \(teachers: a, b\)"):
        MultiTargetStore.open(two_teacher_store, ["a", "c"])


def test_training_with_two_teachers_uses_one_head_each(
    two_teacher_store: str, tmp_path: Path
) -> None:
    seen: list[dict[str, float]] = []

    def hook(step: int, batch: Any, output: Any) -> None:
        assert batch.target1.shape[1] == 14
        seen.append({k: float(v) for k, v in output.terms.items()})

    result = train(
        _cfg(tmp_path, two_teacher_store, stop_at_step=3, teacher_drop=0.3), step_hook=hook
    )
    assert result.steps == 3
    assert {"mse", "mse_0", "mse_1", "distill", "infonce"} <= set(seen[0])
    for t in seen:
        expected = (1 * t["mse_0"] + 3 * t["mse_1"]) / 4
        assert t["mse"] == pytest.approx(expected, rel=1e-5)
    state = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    keys = state["model"].keys()
    assert any(k.startswith("target_heads.0.") for k in keys)
    head_b = state["model"]["target_heads.1.fc2.weight"]
    assert head_b.shape == (DIMS["b"], 32)
    deployed = torch.load(tmp_path / "deployed.pt", weights_only=True)
    flat = str(deployed.keys()) + str(deployed.get("state_dict", {}).keys())
    assert "target_heads" not in flat and "head" not in flat.replace("head_", "")


def test_single_named_teacher_and_refusals(two_teacher_store: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"several teachers \(a, b\)"):
        train(_cfg(tmp_path / "x", two_teacher_store, targets=None, stop_at_step=1))
    with pytest.raises(ConfigError, match="targets needs a store and the disco or seed method"):
        _cfg(tmp_path, two_teacher_store, method="mocov2")
    with pytest.raises(ConfigError, match="teacher_drop"):
        _cfg(tmp_path, two_teacher_store, teacher_drop=1.5)
    result = train(_cfg(tmp_path / "c", two_teacher_store, targets="a,b",
                        target_layout="concat", stop_at_step=1))  # fmt: skip
    assert result.steps == 1


def test_seed_per_teacher_matches_seed_on_each_slice() -> None:
    g = torch.Generator().manual_seed(1)
    raw = [torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)]

    def rand(n: int, d: int) -> torch.Tensor:
        return _unit(torch.randn(n, d, generator=g))

    t = torch.cat([rand(4, 3), rand(4, 2)], 1)
    t[3, 3:] = 0  # teacher 1 did not write image 3
    queue = torch.cat(
        [_unit(torch.randn(6, 3, generator=g)), _unit(torch.randn(6, 2, generator=g))], 1
    )
    queue[0, 3:] = 0  # nor the first queued row
    loss, per = multi_teacher_seed_loss(
        raw, raw, t, t, queue, [(0, 3), (3, 5)], [1.0, 2.0], 0.2, 0.1
    )
    s0 = seed_loss(_unit(raw[0]), t[:, :3], queue[:, :3], 0.2, 0.1)
    s1 = seed_loss(_unit(raw[1][:3]), t[:3, 3:], queue[1:, 3:], 0.2, 0.1)
    torch.testing.assert_close(per, torch.stack([s0, s1]))
    torch.testing.assert_close(loss, (s0 + 2 * s1) / 3)


def test_seed_with_two_teachers_trains(two_teacher_store: str, tmp_path: Path) -> None:
    seen: list[set[str]] = []
    result = train(
        _cfg(tmp_path, two_teacher_store, method="seed", stop_at_step=2),
        step_hook=lambda step, batch, out: seen.append(set(out.terms)),
    )
    assert result.steps == 2 and {"seed", "seed_0", "seed_1"} <= seen[0]
