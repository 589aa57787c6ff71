"""Several teachers in one store: bytes per view, precompute cost per teacher, break-even.

Two teachers of different size and width (a ResNet-18 layout at ``--width`` with a 128-d head,
and a ResNet-10 layout at half that width with a 64-d head) are precomputed into **one** store
(``--as big``, ``--as small``) over ``--n`` mnist5k images x ``--views`` views, each timed on its
own (decode + render + forward + write, as ``disco precompute`` runs it). The online alternative
pays each teacher's forward on both views of every step of every student run; it is timed on the
same rendered views (forward only: the renders are paid by the student either way). For a student
run of ``--epochs`` epochs over the same images:

    online teacher seconds per run = 2 x epochs x n x online_s_per_view   (per teacher)
    break_even_runs = precompute seconds / online teacher seconds per run

i.e. the cache has paid for itself after that many runs (fewer with more epochs per run).
Repeats: ``--repeats`` precomputes into fresh stores and forward timings; medians reported.
Last line: one JSON object.

    python bench/several_teachers.py            # CPU, about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.inspection import store_info
from store.manifest import build_manifest
from store.views import get_recipe, render_view
from teacher_service.checkpoint import save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder
from teacher_service.precompute import PrecomputeConfig, run_precompute
from teacher_service.sources import load_teacher, to_pixels


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=512, help="mnist5k train images")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--width", type=int, default=16, help="base width of the big teacher")
    p.add_argument("--epochs", type=int, default=8, help="epochs of one student run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def _teachers(root: Path, width: int, size: int) -> dict[str, Path]:
    """Two checkpoints: ``big`` (resnet18 layout, 128-d) and ``small`` (resnet10, half width,
    64-d), random weights (the cost does not depend on them)."""
    specs = {"big": ("resnet18", width, 128), "small": ("resnet10", max(4, width // 2), 64)}
    pre = {"size": size, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear",
           "antialias": True, "recipe": "digits"}  # fmt: skip
    out = {}
    for name, (arch, w, dim) in specs.items():
        torch.manual_seed(0)
        enc = build_encoder(
            EncoderConfig(arch=arch, width=w, head_hidden=512, head_out=dim, small_stem=True)
        )
        out[name] = root / f"{name}.pt"
        save_checkpoint(out[name], enc.eval(), pre)
    return out


SHARD = 256


def _precompute(store: str, teacher: Path, name: str, a: argparse.Namespace) -> float:
    """Seconds to precompute the first ``ceil(n / 256)`` shards of teacher ``name``."""
    cfg = PrecomputeConfig(
        teacher=str(teacher), dataset="mnist5k", store=store, views=a.views, split="train",
        recipe="digits", size=a.size, seed=0, batch_size=128, workers=a.workers, device="cpu",
        shard_size=SHARD, progress=False, target=name, max_shards=-(-a.n // SHARD),
    )  # fmt: skip
    started = time.perf_counter()
    report = run_precompute(cfg)
    assert report.views_computed == -(-a.n // SHARD) * SHARD * a.views
    return time.perf_counter() - started


def _online_s_per_view(teacher: Path, views: torch.Tensor, repeats: int) -> float:
    """Median seconds per view of the teacher's forward on rendered views (as an online run
    calls it: inference mode, batches of 128)."""
    model = load_teacher(str(teacher), device="cpu").model
    model.requires_grad_(False)
    model.eval()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.inference_mode():
            for k in range(0, len(views), 128):
                model(views[k : k + 128])
        times.append((time.perf_counter() - started) / len(views))
    return statistics.median(times)


def main() -> None:
    a = _args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teachers = _teachers(root, a.width, a.size)
        pre: dict[str, list[float]] = {n: [] for n in teachers}
        store = ""
        manifest = build_manifest(open_dataset("mnist5k"), "train", progress=False)
        for r in range(a.repeats):
            store = str(root / f"s{r}.zarr")
            # Made untimed (`disco store create`): the manifest and plan are no teacher's cost.
            EmbeddingStore.create(
                store, manifest=manifest, recipe=get_recipe("digits", a.size), seed=0,
                views=a.views, shard_size=SHARD,
            )  # fmt: skip
            for name, path in teachers.items():
                pre[name].append(_precompute(store, path, name, a))
        info = store_info(store)
        opened = EmbeddingStore.open(store, target="big")
        n = -(-a.n // SHARD) * SHARD  # rows precomputed
        ds = open_dataset("mnist5k")
        rows = np.arange(min(n, 256))
        views = torch.stack(
            [
                render_view(ds.load(int(opened.manifest.indices[i])), opened.params[i, 0],
                            opened.recipe)
                for i in rows
            ]
        )  # fmt: skip
        pixels = to_pixels(views, opened.recipe.mean, opened.recipe.std)
        online = {name: _online_s_per_view(p, pixels, a.repeats) for name, p in teachers.items()}
    per_teacher: dict[str, dict[str, Any]] = {}
    for t in info["teachers"]:
        name = t["name"]
        pre_s = statistics.median(pre[name])
        views_total = n * a.views
        run_s = 2 * a.epochs * n * online[name]
        per_teacher[name] = {
            "dim": t["dim"],
            "bytes_per_view": t["bytes_per_view"],
            "bytes_on_disk": t["bytes_on_disk"],
            "precompute_s": pre_s,
            "precompute_s_per_view": pre_s / views_total,
            "online_s_per_view": online[name],
            "online_teacher_s_per_run": run_s,
            "break_even_runs": pre_s / run_s,
        }
    print(f"{n} images x {a.views} views, student runs of {a.epochs} epochs; median of "
          f"{a.repeats}")  # fmt: skip
    print(f"{'teacher':8} {'D':>4} {'B/view':>7} {'precompute s':>13} {'ms/view':>8} "
          f"{'online ms/view':>15} {'online s/run':>13} {'break-even runs':>16}")  # fmt: skip
    for name, t in per_teacher.items():
        print(
            f"{name:8} {t['dim']:>4} {t['bytes_per_view']:>7} {t['precompute_s']:>13.1f} "
            f"{1000 * t['precompute_s_per_view']:>8.3f} {1000 * t['online_s_per_view']:>15.3f} "
            f"{t['online_teacher_s_per_run']:>13.1f} {t['break_even_runs']:>16.2f}"
        )
    total_pre = sum(t["precompute_s"] for t in per_teacher.values())
    total_run = sum(t["online_teacher_s_per_run"] for t in per_teacher.values())
    line = {
        "bench": "several_teachers",
        "n": n,
        "views": a.views,
        "epochs_per_run": a.epochs,
        "teachers": per_teacher,
        "bytes_per_view_all": sum(t["bytes_per_view"] for t in per_teacher.values()),
        "precompute_s_all": total_pre,
        "online_teacher_s_per_run_all": total_run,
        "break_even_runs_all": total_pre / total_run,
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
