"""``disco demo``: teacher → store → verify → students → evaluation, end to end, with stage times.

The demo is the whole system on one small real dataset: precompute the demo teacher's final
embedding for V planned views of every train image, verify the cache against the live teacher,
train a ``mocov2``, a ``disco`` and a ``seed`` student from the same seed and budget, and score the
raw-pixel baselines, the teacher and the students with FAISS kNN. Every stage's wall time is kept
in ``results.json`` beside the metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from store.atomic import atomic_write_text
from store.errors import DiscoError
from student_trainer.demo.config import DEMO_TEACHER_PATH, DemoConfig
from student_trainer.demo.ledger import RunLedger
from student_trainer.demo.service_check import check_service
from student_trainer.eval.evaluate import evaluate
from student_trainer.eval.features import EncoderFeatures, TeacherFeatures
from student_trainer.eval.linear_probe import ProbeConfig
from student_trainer.train.config import TrainConfig
from student_trainer.train.loop import train
from teacher_service.checkpoint import load_encoder, save_checkpoint
from teacher_service.precompute import PrecomputeConfig, run_precompute
from teacher_service.sources import parse_teacher, weights_sha256
from teacher_service.verify import verify_store

__all__ = [
    "DEMO_TEACHER",
    "DEMO_TEACHER_PATH",
    "DemoConfig",
    "DemoResult",
    "demo_teacher_config",
    "install_demo_teacher",
    "run_demo",
    "train_demo_teacher",
]


DEMO_TEACHER: dict[str, Any] = {
    "method": "mocov2",
    "arch": "resnet18",
    "width": 32,
    "dataset": "mnist5k",
    "split": "train",
    "size": 32,
    "epochs": 80,
    "batch_size": 128,
    "queue_size": 4096,
    "key_momentum": 0.99,
    "lr": 0.06,
    "weight_decay": 5e-4,
    "seed": 0,
}
"""How the demo teacher is trained: ResNet-18 layout at half width, small stem, 32 px, MoCo-v2
with a pre-filled queue and grouped head BN (the small-scale settings of DESIGN §7)."""


@dataclass
class DemoResult:
    """What a demo run produced."""

    out: str
    records: list[dict[str, Any]]
    """One evaluation record per row (teacher, students, pixel baselines)."""
    stage_seconds: dict[str, float]
    """Wall time of each stage, s."""
    table: str
    """The markdown results table."""


def demo_teacher_config(out: str, epochs: int | None = None, **overrides: Any) -> TrainConfig:
    """The ``TrainConfig`` that trains the demo teacher into ``out`` (see ``DEMO_TEACHER``)."""
    settings = {**DEMO_TEACHER, **overrides}
    if epochs is not None:
        settings["epochs"] = epochs
    return TrainConfig(out=out, **settings)


def train_demo_teacher(
    out: str = "runs/demo-teacher",
    epochs: int | None = None,
    install: bool = True,
    progress: bool = True,
) -> str:
    """Train the demo teacher with ``disco train --method mocov2`` settings; return its path.

    With ``install`` the final encoder (with its head) is re-saved in fp16 as the shipped
    ``student_trainer/assets/demo_teacher.pt``; its sha256 goes into the README.
    """
    result = train(demo_teacher_config(out, epochs=epochs, progress=progress))
    if not install:
        return result.final_path
    return install_demo_teacher(result.final_path)


def install_demo_teacher(final_path: str) -> str:
    """Re-save a trained teacher (``final.pt`` with its head) in fp16 as the shipped
    ``student_trainer/assets/demo_teacher.pt``; return that path."""
    loaded = load_encoder(final_path)
    raw = _load_raw(final_path)
    DEMO_TEACHER_PATH.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        str(DEMO_TEACHER_PATH),
        loaded.encoder,
        preprocessing=dict(raw.get("preprocessing") or {}),
        train=dict(raw.get("train") or {}),
        meta={**dict(raw.get("meta") or {}), "name": "demo teacher", "role": "teacher"},
        half=True,
    )
    return str(DEMO_TEACHER_PATH)


def _load_raw(path: str) -> dict[str, Any]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    return dict(data) if isinstance(data, dict) else {}


class _Stages:
    """Times named stages and prints one line per stage."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.console.rule(f"[bold]{name}")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self.console.print(f"[green]done[/] {name} in {self.seconds[name]:.1f} s")


def run_demo(cfg: DemoConfig, console: Console | None = None) -> DemoResult:
    """Run every demo stage into ``cfg.out``; return the records, stage times and table.

    Writes ``results.md``, ``results.json`` and ``neighbours_*.png`` into ``cfg.out``. Raises a
    ``DiscoError`` subclass when a stage fails (e.g. the cache does not verify).
    """
    console = console or Console()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = cfg.resolved_teacher()
    stages = _Stages(console)
    students: dict[str, str] = {}
    device = None if cfg.device == "auto" else cfg.device

    runs = RunLedger(out / "runs.json")
    with stages.stage(f"precompute: {cfg.views} views per train image"):
        store = build_store(runs, cfg, "store.zarr", teacher, cfg.views)
    with stages.stage("verify cached targets against the live teacher"):
        check = verify_store(
            store,
            teacher,
            samples=cfg.verify_samples,
            device=cfg.device,
            teacher_weights=cfg.teacher_weights,
        )
        console.print(check.summary())
        if not check.passed:
            raise DiscoError(f"store verify failed: {check.summary()}")
    with stages.stage("service: planned views over HTTP (disco serve + client)"):
        served = check_service(
            store, teacher, seed=cfg.seed, device=cfg.device, teacher_weights=cfg.teacher_weights
        )
        console.print(served.summary())
        if not served.passed:
            raise DiscoError(f"service check failed: {served.summary()}")
    for method in cfg.methods:
        with stages.stage(f"train {method} student ({cfg.student_arch}, {cfg.epochs} epochs)"):
            key = f"{method}-s{cfg.seed}"
            source = {"store": store, "expect": _expect_teacher(cfg, teacher)}
            entry = train_run(runs, key, cfg.student(method, cfg.seed, key, source), console)
            students[method] = entry["deployed"]
    with stages.stage("evaluate: raw pixels, teacher, students (FAISS kNN + linear probe)"):
        records = evaluate(
            [
                EncoderFeatures(students[m], size=cfg.size, device=device, name=f"{m} student")
                for m in cfg.methods
            ],
            cfg.dataset,
            teacher=_eval_teacher(cfg, teacher, device),
            size=cfg.size,
            probe=ProbeConfig(),
            device=device,
            cache_dir=out / "features",
            out=out,
            progress=cfg.progress,
        )
    table = (out / "results.md").read_text()
    _write_summary(out, cfg, records, stages.seconds)
    console.print(table)
    total = sum(stages.seconds.values())
    console.print(
        "stage times: "
        + ", ".join(f"{k.split(':')[0]} {v:.0f} s" for k, v in stages.seconds.items())
        + f"; total {total:.0f} s"
    )
    return DemoResult(str(out), records, stages.seconds, table)


def build_store(runs: RunLedger, cfg: DemoConfig, name: str, teacher: str, views: int) -> str:
    """Precompute ``teacher`` over ``views`` views of every train image into ``cfg.out/name``
    (resumes a partial store); record the build in ``runs`` as ``precompute:<name>``; return the
    URL."""
    url = str(Path(cfg.out) / name)
    report = run_precompute(
        PrecomputeConfig(
            teacher=teacher,
            dataset=cfg.dataset,
            store=url,
            views=views,
            split="train",
            recipe=cfg.resolved_recipe(),
            size=cfg.size,
            seed=cfg.seed,
            workers=cfg.workers,
            device=cfg.device,
            shard_size=1024,
            progress=cfg.progress,
            teacher_weights=cfg.teacher_weights,
        )
    )
    runs.record_build(name, report.seconds, report.views_computed)
    return url


def train_run(
    runs: RunLedger, key: str, cfg: TrainConfig, console: Console | None = None
) -> dict[str, Any]:
    """Train ``cfg`` unless ``runs`` holds ``key`` done with these settings; return its entry
    (deployed and final checkpoint paths, training seconds, steps)."""
    done = runs.finished(key, cfg)
    if done is not None:
        if console is not None:
            console.print(f"{key}: already trained ({done['seconds']:.0f} s), reusing it")
        return done
    cfg.resume = runs.resumable(cfg)
    return runs.record_run(key, cfg, train(cfg))


def _sha(path: str) -> str:
    """sha256 of a checkpoint or weights file (for a snapshot folder: of its weight files)."""
    return weights_sha256(path)


def _expect_teacher(cfg: DemoConfig, teacher: str) -> dict[str, Any]:
    """Store attrs a demo student insists on: the teacher's weights sha256 when it is a file."""
    if cfg.teacher_weights:
        return {"teacher.sha256": _sha(cfg.teacher_weights)}
    if parse_teacher(teacher)[0] == "checkpoint":
        return {"teacher.sha256": _sha(teacher)}
    return {}


def _eval_teacher(cfg: DemoConfig, teacher: str, device: str | None) -> Any:
    """The teacher row of the evaluation: a checkpoint path, or a teacher source's features."""
    if parse_teacher(teacher)[0] == "checkpoint":
        return teacher
    return TeacherFeatures(teacher, cfg.teacher_weights, device=device, name="teacher")


def _write_summary(
    out: Path, cfg: DemoConfig, records: list[dict[str, Any]], seconds: dict[str, float]
) -> None:
    """Rewrite results.json with the demo config and stage times beside the records."""
    summary = {"demo": asdict(cfg), "stage_seconds": seconds, "records": records}
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2, default=str))
    lines = ["", "## Stage times", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {sec:.1f} |" for name, sec in seconds.items()]
    table = (out / "results.md").read_text()
    atomic_write_text(out / "results.md", table + "\n".join(lines) + "\n")
