"""Benchmark the precompute job against a bare teacher forward, on the same images and teacher.

(a) bare teacher forward on pre-rendered view tensors (no decode, no render, no write),
(b) the full pipeline (DataLoader decode + render, teacher, gather) with a null writer,
(c) the full pipeline writing a real zarr store.
Each is repeated ``--repeats`` times; medians are reported. Last line: one JSON object with
``bare_img_s``, ``pipeline_null_img_s``, ``pipeline_store_img_s``, ``store_cost_ratio`` (c / b)
and ``pipeline_ratio`` (c / a).

    python bench/precompute.py                      # CPU defaults, about 2 minutes on 2 cores
    python bench/precompute.py --device cuda --arch resnet50 --size 224 --n 2048 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from store.builtin import ArrayDataset
from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.precision import COMPUTE_DTYPES
from store.runtime import autocast, prepare_model, resolve_device, to_device
from store.views import render_view
from teacher_service.checkpoint import save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder
from teacher_service.precompute import PrecomputeConfig, run_precompute


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="resnet18", help="teacher architecture")
    p.add_argument("--width", type=int, default=16, help="ResNet base width (64 = torchvision)")
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--n", type=int, default=256, help="samples used (first n of the dataset)")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--recipe", default="mocov2")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--shard-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args()


class _Subset:
    """The first n samples of a dataset, pre-decoded in memory (same images for a, b and c)."""

    def __init__(self, spec: str, n: int) -> None:
        base = open_dataset(spec)
        n = min(n, len(base))
        images = [base.load(i) for i in range(n)]
        self.dataset = ArrayDataset(
            f"{spec}[:{n}]", images, np.asarray(base.labels[:n]), list(base.classes)
        )


def main() -> None:
    args = _args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    width = args.width if args.arch.startswith("resnet") else None
    cfg = EncoderConfig(arch=args.arch, small_stem=args.small_stem, width=width)
    encoder = build_encoder(cfg).eval()
    subset = _Subset(args.dataset, args.n).dataset
    teacher_name = (
        f"{args.arch}{f'-w{width}' if width else ''}{'-smallstem' if args.small_stem else ''}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "teacher.pt"
        save_checkpoint(ckpt, encoder, {"size": args.size, "mean": [0.5] * 3, "std": [0.5] * 3})

        def config(store: str) -> PrecomputeConfig:
            return PrecomputeConfig(
                teacher=str(ckpt),
                dataset=subset.spec,
                store=store,
                views=args.views,
                recipe=args.recipe,
                size=args.size,
                batch_size=args.batch_size,
                workers=args.workers,
                device=args.device,
                precision=args.precision,
                shard_size=args.shard_size,
                progress=False,
            )

        def fresh_store(name: str) -> str:
            url = str(Path(tmp) / name)
            c = config(url)
            c.max_shards = 0
            run_precompute(c, dataset=subset)  # creates the store, computes nothing
            return url

        # (a) bare forward on pre-rendered views of the same images and plan.
        plan_store = EmbeddingStore.open(fresh_store("plan.zarr"))
        params = plan_store.params
        rows = plan_store.manifest.indices  # store row -> sample (rows are permuted)
        views = torch.stack(
            [
                render_view(subset.load(int(rows[i])), params[i, v], plan_store.recipe)
                for i in range(len(subset))
                for v in range(args.views)
            ]
        )
        # The same device settings as the job (CUDA: channels_last, cuDNN autotuning, pinned
        # non-blocking copies), so (a) is the ceiling the pipeline is compared against.
        model = prepare_model(encoder, device)
        if device.type == "cuda":
            views = views.pin_memory()
        ctx = autocast(device, COMPUTE_DTYPES[args.precision])

        def bare() -> float:
            t0 = time.perf_counter()
            with torch.inference_mode(), ctx:
                for a in range(0, len(views), args.batch_size):
                    out = model(to_device(views[a : a + args.batch_size], device), output="both")
                    torch.nn.functional.normalize(out[1].float(), dim=1).cpu()
            return len(views) / (time.perf_counter() - t0)

        bare()  # warm-up
        results: dict[str, list[float]] = {"bare": [], "null": [], "store": []}
        for r in range(args.repeats):
            results["bare"].append(bare())
            null_url = fresh_store(f"null{r}.zarr")
            rep = run_precompute(config(null_url), sink=lambda *a: None, dataset=subset)
            results["null"].append(rep.images_per_s)
            rep = run_precompute(config(fresh_store(f"store{r}.zarr")), dataset=subset)
            assert rep.shards_computed == plan_store.num_shards
            results["store"].append(rep.images_per_s)

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"precompute bench: teacher {teacher_name} ({args.recipe} views at {args.size} px), "
          f"{len(subset)} images x {args.views} views, batch {args.batch_size}, "
          f"{args.workers} loader workers, device {device}, precision {args.precision}, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'stage':<34}{'median img/s':>14}   repeats")
    labels = {
        "bare": "(a) bare teacher forward",
        "null": "(b) pipeline, null writer",
        "store": "(c) pipeline, zarr store",
    }
    for k, label in labels.items():
        print(f"{label:<34}{med[k]:>14.1f}   {', '.join(f'{x:.1f}' for x in results[k])}")
    line = {
        "bench": "precompute",
        "bare_img_s": round(med["bare"], 1),
        "pipeline_null_img_s": round(med["null"], 1),
        "pipeline_store_img_s": round(med["store"], 1),
        "store_cost_ratio": round(med["store"] / med["null"], 3),
        "pipeline_ratio": round(med["store"] / med["bare"], 3),
        "teacher": teacher_name,
        "size": args.size,
        "views": args.views,
        "n": len(subset),
        "batch": args.batch_size,
        "workers": args.workers,
        "device": str(device),
        "precision": args.precision,
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
