"""Benchmark: student training samples/s for mocov2 alone, disco from a store, disco online.

One run, one student, one batch size, the same images: (a) ``mocov2`` from the dataset,
(b) ``disco`` reading cached targets from a store built here by ``disco precompute`` with the
teacher, (c) ``disco`` with the same teacher run live (``--online-teacher``). The teacher is a
randomly initialised encoder (its weights do not change its cost) with at least 4x the student's
FLOPs. Each figure is the median of ``--repeats`` runs of ``--steps`` optimiser steps (set-up and
queue pre-fill excluded). Prints a table, then as its last line one JSON object:
``{"bench": "train_throughput", "mocov2_sps", "disco_cached_sps", "disco_online_sps",
"cache_overhead_ratio" (b / a), "speedup_vs_online" (b / c), "predicted_speedup_vs_online",
"student", "teacher", "student_gflops", "teacher_gflops", ...}``.

The FLOP prediction counts per image: ``disco`` runs the student forward on both views with
backward (~3x forward each) and the key encoder's forward on one view = 7 student forwards;
``mocov2`` needs only 4 (one query view), so even a free cache gives b / a = 4/7 by FLOPs
(``predicted_cache_overhead_ratio``); online adds 2 teacher forwards:
predicted speed-up = (7 F_s + 2 F_t) / (7 F_s). Small students on CPU are dominated by per-step
overheads, which these FLOP counts ignore.

    python bench/train_throughput.py                          # CPU, ~5 min on 2 busy cores
    python bench/train_throughput.py --device cuda --batch 256 --size 64 --dataset synthetic:4096
    python bench/train_throughput.py --device cuda --amp --student resnet18 --teacher resnet50 \
        --teacher-width 64 --size 224 --batch 128 --workers 15   # GPU host, bf16 everywhere
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from store.views import get_recipe
from student_trainer.config import TrainConfig
from student_trainer.models import build_student, student_config
from student_trainer.train import train
from teacher_service.checkpoint import save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder
from teacher_service.precompute import PrecomputeConfig, run_precompute


def forward_gflops(encoder: torch.nn.Module, size: int) -> float:
    """Forward FLOPs (2 x MACs) of one (3, size, size) image, in GFLOPs."""
    encoder.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", default="tiny", help="student arch (tiny = resnet10 w8)")
    parser.add_argument("--student-width", type=int, default=None)
    parser.add_argument("--teacher", default="resnet18", help="teacher arch")
    parser.add_argument("--teacher-width", type=int, default=32)
    parser.add_argument("--dataset", default="synthetic:640")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--amp", action="store_true", help="bf16 autocast on CUDA (precompute and training)"
    )
    parser.add_argument(
        "--min-flops-ratio",
        type=float,
        default=4.0,
        help="refuse teachers with fewer x the student's FLOPs (ResNet-50/18 at 224 px: 2.3)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    recipe = get_recipe("mocov2", args.size)
    small_stem = args.size <= 64
    teacher = build_encoder(
        EncoderConfig(args.teacher, width=args.teacher_width, small_stem=small_stem)
    )
    student = build_student(
        student_config(args.student, 128, small_stem=small_stem, width=args.student_width)
    )
    f_t, f_s = forward_gflops(teacher, args.size), forward_gflops(student, args.size)
    if f_t < args.min_flops_ratio * f_s:
        raise SystemExit(
            f"teacher has {f_t / f_s:.1f}x the student's FLOPs; need >= {args.min_flops_ratio}x"
        )

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    ckpt = work / "teacher.pt"
    preprocessing = {"size": args.size, "mean": list(recipe.mean), "std": list(recipe.std)}
    save_checkpoint(ckpt, teacher, preprocessing | {"recipe": recipe.to_dict()})
    store = str(work / "store.zarr")
    run_precompute(
        PrecomputeConfig(
            teacher=str(ckpt),
            dataset=args.dataset,
            store=store,
            views=args.views,
            recipe="mocov2",
            size=args.size,
            workers=args.workers,
            device=args.device,
            amp="bf16" if args.amp else "none",
            progress=False,
        )
    )

    common: dict[str, Any] = dict(
        arch=args.student,
        width=args.student_width,
        batch_size=args.batch,
        epochs=100,
        queue_size=1024,
        num_workers=args.workers,
        progress=False,
        stop_at_step=args.steps,
        device=args.device,
        amp=args.amp,
        threads=args.threads,
        checkpoint_every=10**6,
    )
    runs = {
        "mocov2": dict(method="mocov2", dataset=args.dataset, recipe="mocov2", size=args.size),
        "disco_cached": dict(method="disco", store=store),
        "disco_online": dict(
            method="disco",
            dataset=args.dataset,
            recipe="mocov2",
            size=args.size,
            online_teacher=str(ckpt),
        ),
    }
    sps: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.repeats):
        for name, kw in runs.items():  # interleaved, so machine noise hits all three alike
            cfg = TrainConfig(out=str(work / f"{name}{r}"), **(common | kw))
            sps[name].append(train(cfg).samples_per_second)
    med = {name: statistics.median(v) for name, v in sps.items()}
    predicted = (7 * f_s + 2 * f_t) / (7 * f_s)
    print(f"{'run':<14}{'samples/s (median)':>20}{'all repeats':>36}")
    for name, values in sps.items():
        print(f"{name:<14}{med[name]:>20.1f}{', '.join(f'{v:.1f}' for v in values):>36}")
    print(f"student {args.student}: {f_s:.4f} GFLOPs/img; teacher {args.teacher}: {f_t:.4f}")
    result = {
        "bench": "train_throughput",
        "mocov2_sps": round(med["mocov2"], 2),
        "disco_cached_sps": round(med["disco_cached"], 2),
        "disco_online_sps": round(med["disco_online"], 2),
        "cache_overhead_ratio": round(med["disco_cached"] / med["mocov2"], 3),
        "speedup_vs_online": round(med["disco_cached"] / med["disco_online"], 3),
        "predicted_speedup_vs_online": round(predicted, 3),
        "predicted_cache_overhead_ratio": round(4 / 7, 3),
        "student": args.student,
        "teacher": f"{args.teacher}(width={args.teacher_width})",
        "student_gflops": round(f_s, 5),
        "teacher_gflops": round(f_t, 5),
        "flops_ratio": round(f_t / f_s, 2),
        "batch": args.batch,
        "size": args.size,
        "steps": args.steps,
        "repeats": args.repeats,
        "device": args.device,
        "amp": args.amp,
        "workers": args.workers,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
