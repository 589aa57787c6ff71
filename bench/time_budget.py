"""Where the time goes in precompute and training, per stage, on this machine.

Precompute, per image / per view, in two settings:

* ``demo``: mnist5k (28 px sources), ``digits`` recipe at 32 px, the shipped demo teacher;
* ``224``: generated 640x427 JPEGs (bench/render.py's), ``mocov2`` at 224 px, a ResNet-50 layout
  with the MoCo-v2 head, random init, fp32.

Stages: decode (Pillow, ``store.decode``; mnist5k: loading the array), render (reference
``render_view`` per view; batched ``render_views`` over the batch), teacher forward (per view, in
batches), store write and read (whole shards of a zarr store, fp16 (N, V, D) = (·, 8, 128), per
view).

Training, per step of the demo's DisCo student (ResNet-10 layout, width 16, small stem, batch
128, queue 4096, 32 px, targets from a V = 8 store): the data cost of one batch (load + two
renders per sample, what one DataLoader worker spends; reference and batched), target read (the
step's share of a shard read + the gather), student forward (query + momentum key encoder +
losses), backward, optimizer step (+ momentum update).

Everything runs in this process with the torch thread count given (default 1: what one
DataLoader worker or one loaded core gives); medians of ``--repeats``. The load average is
printed: on a shared machine absolute figures move with it, shares within one run are what to
read. Last line: one JSON object with every figure (ms).

    nice python bench/time_budget.py                # 12 minutes niced at load average 12 here
    python bench/time_budget.py --device cuda       # on a GPU host (bench/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from render import _jpegs  # bench/render.py (this script's folder is on sys.path)

from store.datasets import open_dataset
from store.decode import decode_image
from store.embedding_store import EmbeddingStore
from store.manifest import build_manifest
from store.views import get_recipe, normalise_views, plan_views, render_view, render_views
from teacher_service.checkpoint import load_encoder
from teacher_service.encoders import EncoderConfig, build_encoder

DEMO_TEACHER = (
    Path(__file__).resolve().parents[1] / "student_trainer" / "assets" / "demo_teacher.pt"
)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda (forward, batched render)")
    p.add_argument("--images", type=int, default=8, help="224-px setting: source JPEGs")
    p.add_argument("--views", type=int, default=8, help="views per image (store V)")
    p.add_argument("--r50-batch", type=int, default=4, help="ResNet-50 forward batch (views)")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--skip-224", action="store_true", help="only the demo settings")
    return p.parse_args()


def _median_s(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _store(tmp: str, name: str, n: int, views: int, dim: int) -> EmbeddingStore:
    store = EmbeddingStore.create(
        str(Path(tmp) / name),
        manifest=build_manifest(open_dataset(f"synthetic:{n}"), "all", progress=False),
        recipe=get_recipe("mocov2", 32),
        seed=0,
        views=views,
        shard_size=n,
    )
    store.attach_teacher({"arch": "bench", "sha256": "0" * 64}, dim=dim)
    return store


def _store_costs(tmp: str, views: int, repeats: int) -> dict[str, float]:
    """Per-view ms of writing and reading whole 512-row shards (D = 128, fp16)."""
    n, dim = 512, 128
    store = _store(tmp, "io", n, views, dim)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n, views, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    write = _median_s(lambda: store.write_shard(0, emb), repeats, lambda: None)
    read = _median_s(lambda: store.read_shard(0), repeats, lambda: None)
    per = 1000.0 / (n * views)
    return {"store_write_ms": write * per, "store_read_ms": read * per}


def _precompute_demo(
    a: argparse.Namespace, dev: torch.device, sync: Callable[[], None]
) -> dict[str, float]:
    dataset = open_dataset("mnist5k")
    recipe = get_recipe("digits", 32)
    n = 64
    images = [dataset.load(i) for i in range(n)]
    hs = np.array([im.shape[0] for im in images])
    ws = np.array([im.shape[1] for im in images])
    params = plan_views(recipe, 0, hs, ws, 2).reshape(-1, recipe.num_params)
    srcs = [im for im in images for _ in range(2)]
    load = _median_s(lambda: [dataset.load(i) for i in range(n)], a.repeats, sync)
    ref = _median_s(
        lambda: [render_view(s, p, recipe) for s, p in zip(srcs, params, strict=True)],
        a.repeats,
        sync,
    )
    bat = _median_s(lambda: render_views(srcs, params, recipe, dev), a.repeats, sync)
    teacher = load_encoder(DEMO_TEACHER).encoder.eval().to(dev)
    x = normalise_views(render_views(srcs, params, recipe, dev), recipe.mean, recipe.std)
    x = torch.cat([x, x])  # 256 views, the demo's precompute batch

    def forward() -> None:
        with torch.inference_mode():
            teacher(x, output="embedding")

    fwd = _median_s(forward, a.repeats, sync)
    return {
        "demo_decode_ms": 1000 * load / n,
        "demo_render_reference_ms": 1000 * ref / len(srcs),
        "demo_render_batched_ms": 1000 * bat / len(srcs),
        "demo_teacher_forward_ms": 1000 * fwd / x.shape[0],
    }


def _precompute_224(
    a: argparse.Namespace, dev: torch.device, sync: Callable[[], None]
) -> dict[str, float]:
    recipe = get_recipe("mocov2", 224)
    jpegs = _jpegs(a.images)
    images = [decode_image(b) for b in jpegs]
    views = 2  # views per image in the render timings (params differ per view)
    hs = np.array([im.shape[0] for im in images])
    ws = np.array([im.shape[1] for im in images])
    params = plan_views(recipe, 0, hs, ws, views).reshape(-1, recipe.num_params)
    srcs = [im for im in images for _ in range(views)]
    decode = _median_s(lambda: [decode_image(b) for b in jpegs], a.repeats, sync)
    ref = _median_s(
        lambda: [render_view(s, p, recipe) for s, p in zip(srcs, params, strict=True)],
        a.repeats,
        sync,
    )
    bat = _median_s(lambda: render_views(srcs, params, recipe, dev), a.repeats, sync)
    torch.manual_seed(0)
    teacher = build_encoder(EncoderConfig(arch="resnet50")).eval().to(dev)
    x = render_views(srcs[: a.r50_batch], params[: a.r50_batch], recipe, dev)
    x = normalise_views(x, recipe.mean, recipe.std)

    def forward() -> None:
        with torch.inference_mode():
            teacher(x, output="embedding")

    fwd = _median_s(forward, max(1, a.repeats - 1), sync)
    return {
        "r50_decode_ms": 1000 * decode / len(jpegs),
        "r50_render_reference_ms": 1000 * ref / len(srcs),
        "r50_render_batched_ms": 1000 * bat / len(srcs),
        "r50_teacher_forward_ms": 1000 * fwd / x.shape[0],
    }


def _training(
    a: argparse.Namespace, tmp: str, dev: torch.device, sync: Callable[[], None]
) -> dict[str, float]:
    from store.runtime import to_device
    from student_trainer.train.config import TrainConfig
    from student_trainer.train.moco import MoCo
    from student_trainer.train.models import build_student, resolve_bn_groups, student_config

    b = a.train_batch
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    dataset = open_dataset("mnist5k")
    recipe = get_recipe("digits", 32)
    images = [dataset.load(i) for i in range(b)]
    hs = np.array([im.shape[0] for im in images])
    ws = np.array([im.shape[1] for im in images])
    plan = plan_views(recipe, 0, hs, ws, a.views)
    p1, p2 = plan[:, 0], plan[:, 1]

    def data_reference() -> torch.Tensor:
        imgs = [dataset.load(i) for i in range(b)]
        v1 = [render_view(im, p, recipe) for im, p in zip(imgs, p1, strict=True)]
        v2 = [render_view(im, p, recipe) for im, p in zip(imgs, p2, strict=True)]
        return torch.stack(v1 + v2)

    def data_batched() -> torch.Tensor:
        imgs = [dataset.load(i) for i in range(b)]
        return render_views([*imgs, *imgs], np.concatenate([p1, p2]), recipe, dev)

    data_ref = _median_s(data_reference, a.repeats, sync)
    data_bat = _median_s(data_batched, a.repeats, sync)

    # Targets: a V x 128 fp16 store read in whole 512-row shards; a step uses
    # b rows of a shard read once per shard, plus the gather of its two views' targets.
    shard_rows = 512
    store = _store(tmp, "targets", shard_rows, a.views, 128)
    emb = np.random.default_rng(1).standard_normal((shard_rows, a.views, 128)).astype(np.float32)
    store.write_shard(0, emb / np.linalg.norm(emb, axis=-1, keepdims=True))
    read = _median_s(lambda: store.read_shard(0), a.repeats, sync)
    block = store.read_shard(0).embeddings
    rows = np.random.default_rng(2).permutation(shard_rows)[:b]
    v1 = np.zeros(b, np.int64)
    v2 = np.ones(b, np.int64)

    def gather() -> tuple[torch.Tensor, torch.Tensor]:
        t1 = torch.from_numpy(block[rows, v1]).to(dev)
        t2 = torch.from_numpy(block[rows, v2]).to(dev)
        return t1, t2

    gather_s = _median_s(gather, a.repeats, sync)
    target_s = read * b / shard_rows + gather_s

    torch.manual_seed(0)
    cfg = student_config(
        "resnet10", 128, head_hidden=defaults["head_hidden"], head_bn=defaults["head_bn"],
        bn_groups=resolve_bn_groups(defaults["bn_groups"], b), small_stem=True, width=16,
    )  # fmt: skip
    model = MoCo(build_student(cfg), method="disco", queue_size=4096, distill_weight=8.0)
    model.to(dev).train()
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.06, momentum=0.9,
        weight_decay=5e-4,
    )  # fmt: skip
    x = data_reference()
    x1, x2 = to_device(x[:b], dev), to_device(x[b:], dev)
    t1, t2 = gather()
    timings: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for step in range(a.repeats + 1):
        sync()
        t = time.perf_counter()
        out = model(x1, x2, t1, t2, shuffle_seed=step)
        sync()
        t_fwd = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        sync()
        t_bwd = time.perf_counter()
        optimizer.step()
        model.momentum_update(0.99)
        model.enqueue(out.keys, out.teacher_keys)
        sync()
        t_opt = time.perf_counter()
        if step:  # the first step warms up
            timings["forward"].append(t_fwd - t)
            timings["backward"].append(t_bwd - t_fwd)
            timings["optimizer"].append(t_opt - t_bwd)
    med = {k: statistics.median(v) for k, v in timings.items()}
    return {
        "train_data_reference_ms": 1000 * data_ref,
        "train_data_batched_ms": 1000 * data_bat,
        "train_target_read_ms": 1000 * target_s,
        "train_forward_ms": 1000 * med["forward"],
        "train_backward_ms": 1000 * med["backward"],
        "train_optimizer_ms": 1000 * med["optimizer"],
    }


def _table(title: str, unit: str, rows: list[tuple[str, float]], total_keys: list[str]) -> None:
    print(f"\n{title}")
    print(f"| stage | ms {unit} | share (of the pipeline with the reference renderer) |")
    print("|---|---|---|")
    total = sum(v for k, v in rows if k in total_keys)
    for name, value in rows:
        share = f"{100 * value / total:.0f} %" if name in total_keys and total > 0 else "-"
        print(f"| {name} | {value:.3f} | {share} |")


def _precompute_table(
    title: str, fig: dict[str, float], prefix: str, views: int, decode: str, forward: str
) -> None:
    """Per-view precompute stages of the ``prefix`` figures (ms): decode (one image serves its
    ``views`` views), both renderers, the teacher's forward and the store write; the share column
    counts the reference renderer only."""
    rows = [
        (f"{decode}, per view of V={views}", fig[f"{prefix}_decode_ms"] / views),
        ("render reference, per view", fig[f"{prefix}_render_reference_ms"]),
        ("render batched, per view", fig[f"{prefix}_render_batched_ms"]),
        (f"{forward}, per view", fig[f"{prefix}_teacher_forward_ms"]),
        ("store write, per view", fig["store_write_ms"]),
    ]
    keys = [rows[0][0], rows[1][0], rows[3][0], rows[4][0]]
    _table(title, "per view", rows, keys)


def main() -> None:
    a = _args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    fig: dict[str, Any] = {"bench": "time_budget", "device": str(dev), "threads": a.threads}
    with tempfile.TemporaryDirectory(prefix="time_budget") as tmp:
        stages: list[tuple[str, Callable[[], dict[str, float]]]] = [
            ("store", lambda: _store_costs(tmp, a.views, a.repeats)),
            ("precompute demo", lambda: _precompute_demo(a, dev, sync)),
            ("precompute 224", lambda: _precompute_224(a, dev, sync)),
            ("training", lambda: _training(a, tmp, dev, sync)),
        ]
        for name, stage in stages:
            if name == "precompute 224" and a.skip_224:
                continue
            started = time.perf_counter()
            fig |= stage()
            print(f"{name}: {time.perf_counter() - started:.1f} s", flush=True)
    fig["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    fig["seconds"] = round(time.perf_counter() - t0, 1)

    v = a.views
    print(f"threads {a.threads}, device {dev}, load average {fig['load_average']} (before, after)")
    _precompute_table(
        "Precompute, demo (mnist5k, digits, 32 px)", fig, "demo", v,
        "decode (mnist5k load)", "teacher forward (demo teacher)",
    )  # fmt: skip
    if not a.skip_224:
        _precompute_table(
            "Precompute, 224 px (mocov2, ResNet-50 layout)", fig, "r50", v,
            "decode 640x427 JPEG", "ResNet-50 forward fp32",
        )  # fmt: skip
        fig["r50_forward_over_render"] = round(
            fig["r50_teacher_forward_ms"] / fig["r50_render_reference_ms"], 2
        )
    train = [
        ("data: load + 2 reference renders per sample", fig["train_data_reference_ms"]),
        ("data: load + batched render of both views", fig["train_data_batched_ms"]),
        ("target read (shard share + gather)", fig["train_target_read_ms"]),
        ("student forward (query + key + losses)", fig["train_forward_ms"]),
        ("backward", fig["train_backward_ms"]),
        ("optimizer step + momentum update", fig["train_optimizer_ms"]),
        ("store read, per view", fig["store_read_ms"]),
    ]
    keys = [train[i][0] for i in (0, 2, 3, 4, 5)]
    _table(f"Training, demo DisCo student (batch {a.train_batch}, 32 px)", "per step", train, keys)
    print(json.dumps({k: round(x, 4) if isinstance(x, float) else x for k, x in fig.items()}))


if __name__ == "__main__":
    main()
