"""Benchmark: the kNN monitor's cost next to a training epoch, on the demo student's settings.

Runs ``train()`` for ``--steps`` steps of the demo student (mocov2, resnet10 width 16, mnist5k,
32 px, batch 128, the demo's optimiser settings) with ``knn_every=1``, which evaluates the monitor
once before step 1 (epoch 0); once with the full held-out split (bank 4,000 / queries 1,000) and
once subsampled (``--max-bank`` / ``--max-queries``), and optionally ``--symmetric``. Per run:
seconds per training step (``seconds`` of the log, monitor time excluded), the epoch time that
implies (steps per epoch x seconds per step) and the monitor's ``knn_seconds``. Prints a table,
then as its last line one JSON object ``{"bench": "monitor_cost", "runs": [...]}``.

    python bench/monitor_cost.py                  # ~10 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from student_trainer.demo.config import STUDENT_DEFAULTS
from student_trainer.train.config import TrainConfig
from student_trainer.train.loop import train


def _run(out: Path, steps: int, threads: int | None, **monitor: Any) -> dict[str, Any]:
    cfg = TrainConfig(
        method="mocov2",
        arch="resnet10",
        width=16,
        dataset="mnist5k",
        size=32,
        epochs=8,
        out=str(out),
        knn_every=1,
        stop_at_step=steps,
        num_workers=2,
        progress=False,
        threads=threads,
        **STUDENT_DEFAULTS,
        **monitor,
    )
    result = train(cfg)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    step_records = [r for r in log if "lr" in r]
    # the first step includes one-off costs (worker start-up): time the others
    per_step = (step_records[-1]["seconds"] - step_records[0]["seconds"]) / (len(step_records) - 1)
    knn = result.knn[0]
    epoch = per_step * result.steps_per_epoch
    return {
        "monitor": knn["monitor"],
        "symmetric": cfg.symmetric,
        "n_bank": knn["n_bank"],
        "n_queries": knn["n_queries"],
        "knn_weighted_init": knn["knn_weighted"],
        "step_s": per_step,
        "epoch_s": epoch,
        "knn_s": knn["knn_seconds"],
        "knn_over_epoch": knn["knn_seconds"] / epoch,
    }


def main() -> None:
    """Parse options, run the variants, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--max-bank", type=int, default=1000)
    parser.add_argument("--max-queries", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--symmetric", action="store_true", help="also time a symmetric run")
    args = parser.parse_args()
    variants: list[dict[str, Any]] = [
        {},
        {"monitor_max_bank": args.max_bank, "monitor_max_queries": args.max_queries},
    ]
    if args.symmetric:
        variants.append({"symmetric": True})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, extra in enumerate(variants):
            rows.append(_run(Path(tmp) / str(i), args.steps, args.threads, **extra))
    print("| monitor | symmetric | bank | queries | s/step | s/epoch | s/eval | eval/epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['monitor']} | {r['symmetric']} | {r['n_bank']} | {r['n_queries']} | "
            f"{r['step_s']:.2f} | {r['epoch_s']:.0f} | {r['knn_s']:.1f} | "
            f"{100 * r['knn_over_epoch']:.0f} % |"
        )
    print(json.dumps({"bench": "monitor_cost", "steps": args.steps, "runs": rows}))


if __name__ == "__main__":
    main()
