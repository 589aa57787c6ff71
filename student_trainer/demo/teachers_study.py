"""``disco demo --teachers-study``: one student, two complementary teachers, one store (#28).

The two teachers are made here with the project's own steps, deliberately complementary: the same
architecture trained with ``mocov2`` (what ``disco train --method mocov2 --store`` runs) on the
mnist5k **train** images of digits 0-4 (teacher ``lo``) and of digits 5-9 (teacher ``hi``). Each
trains on a params-only store whose manifest is those rows (no labels reach the training; no test
image is seen). Both are then precomputed into **one** store over the whole train split, as
``--as lo`` and ``--as hi`` (same view plan: every student sees exactly the views both teachers
saw). Students, all the same architecture, budget and seeds:

* ``single-lo`` / ``single-hi``: DisCo from one teacher through its own head (``--targets lo``);
* ``concat``: one head on the concatenated targets (``--target-layout concat``);
* ``multi``: one head per teacher, equal weights (``--targets lo,hi``);
* ``multi-drop``: the same with UNIC teacher dropping (``--teacher-drop 0.5``).

Scores: weighted 20-NN (k 20, T 0.07) on mnist5k's test split against its train split, for every
student over ``seeds`` seeds (mean ± std) and for both teachers. The acceptance: ``multi`` beats
each single-teacher student by more than two seed standard deviations (the larger of the two
arms' std). Every run goes through a :class:`RunLedger`, so an interrupted study resumes.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from store.atomic import atomic_write_text
from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import ConfigError
from store.manifest import Manifest, build_manifest
from store.views import get_recipe
from student_trainer.demo.config import STUDENT_DEFAULTS
from student_trainer.demo.ledger import RunLedger
from student_trainer.demo.pipeline import train_run
from student_trainer.eval.evaluate import evaluate
from student_trainer.eval.features import EncoderFeatures
from student_trainer.train.config import TrainConfig
from teacher_service.precompute import PrecomputeConfig, run_precompute

__all__ = ["ARMS", "TeachersStudyConfig", "render_teachers_study", "run_teachers_study"]

ARMS: dict[str, dict[str, Any]] = {
    "single-lo": {"targets": "lo"},
    "single-hi": {"targets": "hi"},
    "concat": {"targets": "lo,hi", "target_layout": "concat"},
    "multi": {"targets": "lo,hi"},
    "multi-drop": {"targets": "lo,hi", "teacher_drop": 0.5},
}
"""Student arms: TrainConfig overrides on top of the shared DisCo settings."""
HALVES = {"lo": (0, 1, 2, 3, 4), "hi": (5, 6, 7, 8, 9)}
"""Each teacher's digits (its mocov2 training images: the train split's images of these)."""


@dataclass
class TeachersStudyConfig:
    """Sizes of the several-teachers study (defaults: ~30 min on 2 loaded CPU cores)."""

    out: str = "runs/teachers-study"
    """Output folder: halves stores, teachers, the two-teacher store, students, results."""
    seeds: int = 3
    """Student seeds per arm (0 .. seeds - 1)."""
    teacher_epochs: int = 8
    """mocov2 epochs of each teacher (a short schedule: these teachers are weak on purpose)."""
    teacher_width: int = 8
    """ResNet-10 base width of the teachers."""
    student_epochs: int = 3
    """Student epochs (every arm the same budget)."""
    student_width: int = 8
    """ResNet-10 base width of the students."""
    views: int = 4
    """Cached views V per train image in the two-teacher store."""
    size: int = 16
    """View size in px (16: the whole study fits ~30 min on 2 shared CPU cores)."""
    workers: int = 1
    """DataLoader workers (precompute and training)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.seeds < 2:
            raise ConfigError("the teachers study needs at least 2 seeds (it reports a std)")
        if min(self.teacher_epochs, self.student_epochs, self.views - 1) < 1:
            raise ConfigError("epochs must be >= 1 and views >= 2")


def _half_manifest(full: Manifest, digits: tuple[int, ...]) -> Manifest:
    """The rows of ``full`` whose label is one of ``digits`` (same dataset, split, order)."""
    keep = np.isin(full.labels, digits)
    return Manifest(
        dataset=full.dataset, split=full.split, indices=full.indices[keep], keys=full.keys[keep],
        labels=full.labels[keep], sha256=full.sha256[keep], heights=full.heights[keep],
        widths=full.widths[keep], valid=full.valid[keep], row_order=full.row_order,
    )  # fmt: skip


def _train_cfg(cfg: TeachersStudyConfig, out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        **STUDENT_DEFAULTS,
        "arch": "resnet10",
        "num_workers": cfg.workers,
        "device": cfg.device,
        "progress": cfg.progress,
        "out": str(out),
        "queue_size": 1024,  # fewer prefill batches; still > 8 batches of negatives
        "threads": 1,  # one torch thread per process: faster on a small shared CPU
    }
    return TrainConfig(**(base | kw))


def _make_teachers(cfg: TeachersStudyConfig, runs: RunLedger, console: Console) -> dict[str, str]:
    """Train the ``lo`` and ``hi`` teachers (mocov2 on params-only stores of their digits);
    return name -> checkpoint path."""
    out = Path(cfg.out)
    full = build_manifest(open_dataset("mnist5k"), "train", progress=False)
    recipe = get_recipe("digits", cfg.size)
    paths = {}
    for name, digits in HALVES.items():
        url = out / "halves" / f"{name}.zarr"
        if not (url / "zarr.json").exists():
            EmbeddingStore.create(
                str(url), manifest=_half_manifest(full, digits), recipe=recipe, seed=100,
                views=8, shard_size=1024, overwrite=True,
            )  # fmt: skip
        tcfg = _train_cfg(
            cfg, out / "teachers" / name, method="mocov2", store=str(url),
            epochs=cfg.teacher_epochs, width=cfg.teacher_width, seed=0,
        )  # fmt: skip
        console.rule(f"[bold]teacher {name}: mocov2 on the train images of digits {digits}")
        entry = train_run(runs, f"teacher-{name}", tcfg, console)
        paths[name] = str(entry["final"])
    return paths


def _build_store(
    cfg: TeachersStudyConfig, runs: RunLedger, teachers: dict[str, str], console: Console
) -> tuple[str, dict[str, float]]:
    """Precompute both teachers into one store (``--as lo``, ``--as hi``); return its URL and
    each teacher's precompute seconds."""
    url = str(Path(cfg.out) / "store.zarr")
    seconds = {}
    for name, path in teachers.items():
        key = f"precompute:{name}"
        done = runs.entries.get(key)
        if done is not None:
            seconds[name] = float(done["seconds"])
            continue
        console.rule(f"[bold]precompute teacher {name} into {url} (--as {name})")
        pcfg = PrecomputeConfig(
            teacher=path, dataset="mnist5k", store=url, views=cfg.views, split="train",
            recipe="digits", size=cfg.size, seed=0, workers=cfg.workers, device=cfg.device,
            shard_size=1024, progress=cfg.progress, target=name,
        )  # fmt: skip
        report = run_precompute(pcfg)
        runs.record_build(name, report.seconds, report.views_computed)
        seconds[name] = report.seconds
    return url, seconds


def run_teachers_study(cfg: TeachersStudyConfig, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) the study into ``cfg.out``; write ``teachers-study.md``/``.json``; return
    the summary."""
    console = console or Console()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = RunLedger(out / "runs.json")
    started = time.perf_counter()
    teachers = _make_teachers(cfg, runs, console)
    url, build_s = _build_store(cfg, runs, teachers, console)
    keys = []
    for seed in range(cfg.seeds):
        for arm, overrides in ARMS.items():
            key = f"{arm}-s{seed}"
            scfg = _train_cfg(
                cfg, out / "students" / key, method="disco", store=url,
                epochs=cfg.student_epochs, width=cfg.student_width, seed=seed, **overrides,
            )  # fmt: skip
            console.rule(f"[bold]student {key}")
            train_run(runs, key, scfg, console)
            keys.append(key)
    console.rule("[bold]evaluate teachers and students (FAISS weighted kNN, mnist5k test)")
    device = None if cfg.device == "auto" else cfg.device
    models = [EncoderFeatures(p, size=cfg.size, device=device, name=f"teacher-{n}")
              for n, p in teachers.items()]  # fmt: skip
    models += [
        EncoderFeatures(runs.entries[k]["deployed"], size=cfg.size, device=device, name=k)
        for k in keys
    ]
    records = evaluate(
        models, "mnist5k", size=cfg.size, probe=None, device=device,
        cache_dir=out / "features", out=out / "eval", figures=False, progress=cfg.progress,
    )  # fmt: skip
    by_name = {r["name"]: r for r in records}
    summary = _summarise(cfg, by_name, runs, build_s, time.perf_counter() - started)
    md = render_teachers_study(summary)
    atomic_write_text(out / "teachers-study.md", md)
    atomic_write_text(out / "teachers-study.json", json.dumps(summary, indent=2, default=str))
    console.print(md)
    return summary


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values)}


def _summarise(
    cfg: TeachersStudyConfig,
    by_name: dict[str, dict[str, Any]],
    runs: RunLedger,
    build_s: dict[str, float],
    seconds: float,
) -> dict[str, Any]:
    arms: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        scores = [float(by_name[f"{arm}-s{s}"]["knn_weighted"]) for s in range(cfg.seeds)]
        train_s = [float(runs.entries[f"{arm}-s{s}"]["seconds"]) for s in range(cfg.seeds)]
        arms[arm] = {"scores": scores, **_stats(scores), "train_s": statistics.fmean(train_s)}
    verdict = {}
    for single in ("single-lo", "single-hi"):
        gap = float(arms["multi"]["mean"]) - float(arms[single]["mean"])
        bar = 2 * max(float(arms["multi"]["std"]), float(arms[single]["std"]))
        verdict[single] = {"gap": gap, "two_std": bar, "beats": gap > bar}
    pixels = by_name.get("raw pixels", {}).get("knn_weighted")
    return {
        "config": asdict(cfg),
        "teachers": {n: float(by_name[f"teacher-{n}"]["knn_weighted"]) for n in HALVES},
        "precompute_s": build_s,
        "raw_pixels": pixels,
        "arms": arms,
        "acceptance": verdict,
        "accepted": all(v["beats"] for v in verdict.values()),
        "seconds": seconds,
    }


def render_teachers_study(summary: dict[str, Any]) -> str:
    """The study's markdown table (weighted 20-NN on mnist5k test, mean ± std over seeds)."""
    c = summary["config"]
    lines = [
        "# Several teachers, one store: study",
        "",
        f"Teachers: resnet10 width {c['teacher_width']}, mocov2 {c['teacher_epochs']} epochs on "
        "the train images of digits 0-4 (`lo`) / 5-9 (`hi`). Students: resnet10 width "
        f"{c['student_width']}, disco {c['student_epochs']} epochs, V={c['views']}, "
        f"{c['seeds']} seeds. Weighted 20-NN (T 0.07) on mnist5k test vs train.",
        "",
        "| model | weighted kNN | per seed |",
        "|---|---|---|",
    ]
    for name, score in summary["teachers"].items():
        lines.append(f"| teacher {name} | {100 * score:.2f} | - |")
    for arm, row in summary["arms"].items():
        seeds = ", ".join(f"{100 * s:.2f}" for s in row["scores"])
        lines.append(f"| {arm} | {100 * row['mean']:.2f} ± {100 * row['std']:.2f} | {seeds} |")
    if summary.get("raw_pixels") is not None:
        lines.append(f"| raw pixels (cosine) | {100 * summary['raw_pixels']:.2f} | - |")
    lines += ["", "Acceptance (multi beats each single-teacher student by > 2 seed std):", ""]
    for single, v in summary["acceptance"].items():
        mark = "yes" if v["beats"] else "no"
        lines.append(
            f"- vs {single}: gap {100 * v['gap']:+.2f} points, 2 std {100 * v['two_std']:.2f}: "
            f"{mark}"
        )
    pre = ", ".join(f"{n} {s:.0f} s" for n, s in summary["precompute_s"].items())
    lines += ["", f"Precompute per teacher: {pre}. Whole study: {summary['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"
