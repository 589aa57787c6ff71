"""Batched renderer (``store.views.batched``) against the per-view reference ``render_view``.

On CPU the claim is byte equality, for every registered recipe, for sources of different sizes,
with both resize implementations (torch's native per-view kernel and the exact fixed-point matrix
products that CUDA runs). The CUDA claim (±1 per value, teacher cosine >= 0.9999 on the demo
teacher and a ResNet-50 layout) is the gpu-marked test at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from store.datasets import open_dataset
from store.errors import ConfigError, DatasetError
from store.views import (
    INTERPOLATIONS,
    RECIPES,
    RENDER_BOUND,
    Recipe,
    aa_resize_weights,
    batched,
    crop_resize,
    get_recipe,
    normalise_views,
    plan_views,
    render_center,
    render_centers,
    render_view,
    render_views,
    resize_crops,
)
from store.views import (
    RENDERER_CHOICES as RENDERER_CHOICES_VIEWS,
)

DEMO_TEACHER = (
    Path(__file__).resolve().parents[1] / "student_trainer" / "assets" / "demo_teacher.pt"
)


def _images(n: int, seed: int, lo: int = 12, hi: int = 120) -> list[np.ndarray]:
    """Sources of different sizes: half noise, half smooth gradients (saturated, grey, edges)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        h, w = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
        if k % 2:
            out.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        else:
            yy, xx = np.mgrid[0:h, 0:w]
            img = np.stack(
                [xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 7 % 256], -1
            )
            if k % 4 == 0:
                img[..., 1] = img[..., 0]  # some exactly grey pixels (hue/saturation edge cases)
                img[..., 2] = img[..., 0]
            out.append(img.astype(np.uint8))
    return out


def _plan(recipe: Recipe, images: list[np.ndarray], views: int, seed: int = 3) -> np.ndarray:
    hs = np.array([a.shape[0] for a in images])
    ws = np.array([a.shape[1] for a in images])
    return plan_views(recipe, seed, hs, ws, views)


def _reference(images: list[np.ndarray], params: np.ndarray, recipe: Recipe) -> torch.Tensor:
    return torch.stack([render_view(a, p, recipe) for a, p in zip(images, params, strict=True)])


@pytest.mark.parametrize(
    "name,size,interpolation",
    [
        ("mocov2", 32, "bilinear"),
        ("mocov2", 40, "bicubic"),
        ("digits", 32, "bilinear"),
        ("digits", 32, "nearest"),
    ],
)
@pytest.mark.parametrize("resize", ["native", "matmul"])
def test_batched_equals_reference_bytes(
    name: str, size: int, interpolation: str, resize: str
) -> None:
    recipe = get_recipe(name, size, interpolation)
    images = _images(12, seed=size)
    plan = _plan(recipe, images, views=2)
    srcs = [a for a in images for _ in range(2)]  # the same source several times in a batch
    params = plan.reshape(-1, recipe.num_params)
    got = render_views(srcs, params, recipe, "cpu", resize=resize)  # type: ignore[arg-type]
    assert got.dtype == torch.uint8 and got.shape == (len(srcs), 3, size, size)
    want = _reference(srcs, params, recipe)
    assert torch.equal(normalise_views(got, recipe.mean, recipe.std), want)


def test_every_registered_recipe_is_supported_or_refused() -> None:
    images = _images(3, seed=1)
    for name in RECIPES:
        recipe = get_recipe(name, 32)
        params = _plan(recipe, images, 1)[:, 0]
        out = render_views(images, params, recipe)
        assert torch.equal(
            normalise_views(out, recipe.mean, recipe.std), _reference(images, params, recipe)
        )

    @dataclass(frozen=True)
    class Odd(Recipe):
        pass

    with pytest.raises(ConfigError, match=r"does not support recipe 'odd'.*reference"):
        render_views(
            images,
            np.zeros((3, 0), np.float32),
            Odd(name="odd", size=32, mean=(0, 0, 0), std=(1, 1, 1)),
        )


def test_mocov2_every_branch_and_order_is_exercised_exactly() -> None:
    """Force each jitter order, grey/blur/flip combination and a zero hue on a few images."""
    recipe = get_recipe("mocov2", 32)
    images = _images(4, seed=5, lo=30, hi=60)
    rng = np.random.default_rng(0)
    rows, srcs = [], []
    for n in range(32):
        img = images[n % 4]
        p = recipe.sample(1, n, 0, img.shape[0], img.shape[1]).copy()
        p[5] = 1.0
        p[6:10] = [
            rng.uniform(0.6, 1.4),
            rng.uniform(0.6, 1.4),
            rng.uniform(0.6, 1.4),
            rng.uniform(-0.1, 0.1),
        ]
        if n % 7 == 0:
            p[9] = 0.0
        p[10:14] = rng.permutation(4)
        p[14], p[4] = n % 3 == 0, n % 2
        p[15] = 0.0 if n % 5 == 0 else rng.uniform(0.1, 2.0)
        rows.append(p)
        srcs.append(img)
    params = np.stack(rows).astype(np.float32)
    assert len(rows) > batched.CPU_CHUNK  # the CPU path renders in chunks: cross a boundary
    got = render_views(srcs, params, recipe)
    assert torch.equal(
        normalise_views(got, recipe.mean, recipe.std), _reference(srcs, params, recipe)
    )


def test_digits_dataset_views_exact_and_tensor_sources() -> None:
    """The real small-image case (sklearn digits, 8x8 upscaled: rotation, shear, gamma), with
    sources given as tensors."""
    data = open_dataset("digits")
    recipe = get_recipe("digits", 32)
    images = [data.load(i) for i in range(16)]
    params = _plan(recipe, images, 1)[:, 0]
    got = render_views([torch.from_numpy(a) for a in images], params, recipe)
    assert torch.equal(
        normalise_views(got, recipe.mean, recipe.std), _reference(images, params, recipe)
    )


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_does_not_change_bytes(threads: int) -> None:
    recipe = get_recipe("mocov2", 32)
    images = _images(8, seed=9)
    params = _plan(recipe, images, 1)[:, 0]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = render_views(images, params, recipe, resize="matmul")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(
        normalise_views(got, recipe.mean, recipe.std), _reference(images, params, recipe)
    )


@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
def test_resize_crops_matches_the_reference_crop_resize(interpolation: str) -> None:
    """Down- and up-scaling, extreme aspect ratios, 1-px sides, non-contiguous crops."""
    rng = np.random.default_rng(2)
    shapes = [(1, 1), (1, 37), (200, 3), (31, 32), (32, 32), (64, 64), (17, 250), (97, 13)]
    shapes += [(int(rng.integers(1, 300)), int(rng.integers(1, 300))) for _ in range(12)]
    for size in (8, 32, 45):
        images = [rng.integers(0, 256, (h + 3, w + 2, 3), dtype=np.uint8) for h, w in shapes]
        boxes = [np.array([2, 1, h, w]) for h, w in shapes]
        crops = [
            torch.from_numpy(a[2 : 2 + h, 1 : 1 + w]).permute(2, 0, 1)
            for a, (h, w) in zip(images, shapes, strict=True)
        ]
        got = resize_crops(crops, size, interpolation, chunk=7)
        for img, box, out in zip(images, boxes, got, strict=True):
            want = crop_resize(img, box, size, interpolation)
            assert torch.equal(out, want), (interpolation, tuple(box), size)


@pytest.mark.parametrize("resize", ["native", "matmul"])
@pytest.mark.parametrize("name,interpolation", [("mocov2", "bicubic"), ("digits", "nearest")])
def test_render_centers_equals_render_center(name: str, interpolation: str, resize: str) -> None:
    recipe = get_recipe(name, 32, interpolation)
    images = [*_images(9, seed=4, lo=5, hi=90), np.zeros((32, 32, 3), np.uint8)]
    got = render_centers(images, recipe, "cpu", resize=resize)  # type: ignore[arg-type]
    assert got.dtype == torch.uint8 and got.shape == (len(images), 3, 32, 32)
    want = torch.stack([render_center(a, recipe) for a in images])
    assert torch.equal(normalise_views(got, recipe.mean, recipe.std), want)
    assert render_centers([], recipe).shape == (0, 3, 32, 32)


def test_aa_weights_are_a_partition_of_unity_in_fixed_point() -> None:
    for n_in, n_out in [(640, 224), (100, 224), (5, 32), (224, 224)]:
        index, weight, precision = aa_resize_weights(n_in, n_out)
        assert index.min() >= 0 and index.max() < n_in
        sums = weight.sum(axis=1)
        assert np.all(np.abs(sums - (1 << precision)) <= weight.shape[1])
        assert weight.max() < (1 << 15)  # fits the kernel's int16 weights


def test_bad_input_is_refused_in_one_line() -> None:
    recipe = get_recipe("mocov2", 32)
    img = np.zeros((10, 10, 3), np.uint8)
    p = recipe.sample(0, 0, 0, 10, 10)
    with pytest.raises(ConfigError, match=r"params must be \(1, 16\)"):
        render_views([img], p[None, :8], recipe)
    bad = p.copy()
    bad[2] = 50
    with pytest.raises(DatasetError, match="outside the 10x10 image"):
        render_views([img], bad[None], recipe)
    with pytest.raises(DatasetError, match=r"\(H, W, 3\) uint8"):
        render_views([np.zeros((10, 10), np.uint8)], p[None], recipe)
    assert render_views([], np.zeros((0, 16), np.float32), recipe).shape == (0, 3, 32, 32)


def test_stated_bound_is_the_documented_one() -> None:
    assert RENDER_BOUND == {"max_abs_diff": 1.0, "min_cosine": 0.9999}


# ------------------------------------------------------------------------------------------------
# CUDA: the same code on the GPU, within the stated bound of the CPU reference.


def _embed(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return nnf.normalize(model(x).float(), dim=1)


@pytest.mark.gpu
def test_cuda_batched_within_bound_of_cpu_reference() -> None:
    import torchvision

    from teacher_service.checkpoint import load_encoder

    for name, size in [("mocov2", 64), ("digits", 32)]:
        recipe = get_recipe(name, size)
        images = _images(32, seed=size, lo=16, hi=200)
        params = _plan(recipe, images, 2).reshape(-1, recipe.num_params)
        srcs = [a for a in images for _ in range(2)]
        cpu = render_views(srcs, params, recipe, "cpu")
        assert torch.equal(
            normalise_views(cpu, recipe.mean, recipe.std), _reference(srcs, params, recipe)
        )
        gpu = render_views(srcs, params, recipe, "cuda")
        assert gpu.device.type == "cuda"
        diff = (gpu.cpu().int() - cpu.int()).abs().max().item()
        assert diff <= RENDER_BOUND["max_abs_diff"], (name, diff)
        torch.manual_seed(0)
        teachers = [load_encoder(DEMO_TEACHER).encoder.eval(), torchvision.models.resnet50().eval()]
        for model in teachers:
            a = _embed(model, normalise_views(cpu, recipe.mean, recipe.std))
            b = _embed(model, normalise_views(gpu, recipe.mean, recipe.std).cpu())
            assert (a * b).sum(1).min().item() >= RENDER_BOUND["min_cosine"]


# ------------------------------------------------------------------------------------------------
# Wiring: precompute with the batched renderer writes the reference renderer's bytes on CPU.


def test_precompute_batched_renderer_writes_the_reference_store(tmp_path: Path) -> None:
    from store.embedding_store import EmbeddingStore
    from teacher_service.checkpoint import save_checkpoint
    from teacher_service.encoders import EncoderConfig, build_encoder
    from teacher_service.precompute import PrecomputeConfig, run_precompute

    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(arch="tiny", head_hidden=16, head_out=8, small_stem=True))
    pre = {
        "size": 16,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "interpolation": "bilinear",
        "antialias": True,
    }
    teacher = tmp_path / "t.pt"
    save_checkpoint(teacher, enc.eval(), pre)
    stores = {}
    for renderer, workers in [("reference", 0), ("batched", 1)]:
        cfg = PrecomputeConfig(
            teacher=str(teacher), dataset="synthetic:12", views=2, recipe="mocov2",
            store=str(tmp_path / f"{renderer}.zarr"), size=16, shard_size=8, batch_size=6,
            workers=workers, device="cpu", progress=False, renderer=renderer,
        )  # fmt: skip
        report = run_precompute(cfg)
        assert report.renderer == renderer and report.views_computed == 24
        stores[renderer] = EmbeddingStore.open(cfg.store)
    for s in range(stores["reference"].num_shards):
        a, b = (stores[r].read_shard(s).embeddings for r in ("reference", "batched"))
        assert a.tobytes() == b.tobytes()
    assert stores["batched"].attrs["renderers"] == {
        "producers": [{"renderer": "batched", "device": "cpu"}],
        "bound": RENDER_BOUND,
    }
    with pytest.raises(
        ConfigError, match="unknown renderer 'fast'; valid: auto, reference, batched"
    ):
        PrecomputeConfig(teacher="t", dataset="d", store="s", renderer="fast")


def test_config_renderer_choices_match_the_renderer_module() -> None:
    from store.views import RENDERER_CHOICES
    from teacher_service.config import RENDERERS

    assert tuple(RENDERERS) == tuple(RENDERER_CHOICES)


def test_training_with_the_batched_renderer_repeats_the_reference_run(tmp_path: Path) -> None:
    """Workers only decode, the loop renders on the device: the steps see the reference's views
    and a short DisCo run ends with the very same loss terms as with the reference renderer."""
    from store.embedding_store import EmbeddingStore
    from store.manifest import build_manifest
    from student_trainer.train.config import RENDERER_CHOICES, TrainConfig
    from student_trainer.train.loop import train

    assert RENDERER_CHOICES == RENDERER_CHOICES_VIEWS
    url = str(tmp_path / "s.zarr")
    data = open_dataset("synthetic:24")
    store = EmbeddingStore.create(
        url, manifest=build_manifest(data, "all", progress=False),
        recipe=get_recipe("mocov2", 16), seed=3, views=3, shard_size=8,
    )  # fmt: skip
    store.attach_teacher({"arch": "tiny", "sha256": "ab" * 32}, dim=8)
    rng = np.random.default_rng(0)
    for s in range(store.num_shards):
        a, b = store.shard_bounds(s)
        emb = rng.standard_normal((b - a, 3, 8)).astype(np.float32)
        store.write_shard(s, emb / np.linalg.norm(emb, axis=2, keepdims=True))
    params = store.params
    seen: list[int] = []

    def hook(step: int, batch: Any, output: Any) -> None:
        assert batch.sources is None and batch.view1.shape == (8, 3, 16, 16)
        for j, row in enumerate(batch.rows.tolist()):
            v1, v2 = batch.views[j].tolist()
            img = data.load(int(store.manifest.indices[row]))
            assert torch.equal(batch.view1[j], render_view(img, params[row, v1], store.recipe))
            assert torch.equal(batch.view2[j], render_view(img, params[row, v2], store.recipe))
            seen.append(row)

    results = {}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for renderer, workers in [("reference", 0), ("batched", 1)]:
            cfg = TrainConfig(
                method="disco", arch="tiny", out=str(tmp_path / renderer), store=url,
                batch_size=8, epochs=1, queue_size=16, head_hidden=16, num_workers=workers,
                progress=False, renderer=renderer, stop_at_step=3, device="cpu",
            )  # fmt: skip
            results[renderer] = train(cfg, step_hook=hook if renderer == "batched" else None)
    finally:
        torch.set_num_threads(before)
    assert len(seen) == 24
    ref, bat = results["reference"], results["batched"]
    assert ref.steps == bat.steps == 3
    assert ref.first_terms == bat.first_terms and ref.last_terms == bat.last_terms


def test_store_verify_checks_the_batched_renderer_against_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``disco store verify --renderer batched``: passes at 0 difference on CPU; a renderer that
    is 2 levels off fails on the stated bound even though the teacher barely notices."""
    import json

    from typer.testing import CliRunner

    import teacher_service.verify as verify
    from student_trainer.cli import app
    from teacher_service.checkpoint import save_checkpoint
    from teacher_service.encoders import EncoderConfig, build_encoder
    from teacher_service.precompute import PrecomputeConfig, run_precompute

    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(arch="tiny", head_hidden=16, head_out=8, small_stem=True))
    pre = {"size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
    teacher = tmp_path / "t.pt"
    save_checkpoint(teacher, enc.eval(), pre)
    store = str(tmp_path / "s.zarr")
    run_precompute(
        PrecomputeConfig(
            teacher=str(teacher),
            dataset="synthetic:8",
            store=store,
            views=2,
            recipe="mocov2",
            size=16,
            shard_size=8,
            workers=0,
            device="cpu",
            progress=False,
        )
    )
    args = ["store", "verify", store, "--teacher", str(teacher), "--samples", "16"]
    out = CliRunner().invoke(app, [*args, "--renderer", "batched", "--device", "cpu", "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    assert got["renderer"] == "batched" and got["render_max_abs_diff"] == 0
    assert got["render_cos_min"] >= 0.99999 and got["render_ok"] and got["passed"]

    real = verify.render_views

    def off_by_two(*a: Any, **k: Any) -> torch.Tensor:
        return real(*a, **k).int().add(2).clamp(0, 255).to(torch.uint8)

    monkeypatch.setattr(verify, "render_views", off_by_two)
    out = CliRunner().invoke(app, [*args, "--renderer", "batched", "--device", "cpu"])
    assert out.exit_code == 1 and "max |diff| 2 (bound 1)" in out.output and "OUT" in out.output
