"""``RunLedger``: the record of finished training runs and cache builds that makes the demo and
the study resumable (``runs.json`` in a demo folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from store.atomic import atomic_write_text
from student_trainer.config import TrainConfig

if TYPE_CHECKING:
    from student_trainer.demo import DemoConfig

__all__ = ["RunLedger"]


class RunLedger:
    """``runs.json`` in a demo folder: every finished training run and cache build, with its time.

    A run whose key is recorded with the same settings (and whose deployed checkpoint still
    exists) is not trained again, so an interrupted demo or study picks up where it stopped;
    an unfinished run resumes from its own ``ckpt/last.pt``. The recorded seconds are what the
    study's cost table uses (a skipped run keeps the time of the run that trained it).
    """

    IGNORED = ("progress", "num_workers", "resume", "threads", "checkpoint_every")
    """TrainConfig fields that do not change a run's result."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = (
            json.loads(path.read_text()) if path.is_file() else {}
        )

    def record(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` under ``key`` (atomic rewrite of the file)."""
        self.entries[key] = entry
        atomic_write_text(self.path, json.dumps(self.entries, indent=2, default=str))

    def build_store(self, cfg: DemoConfig, name: str, teacher: str, views: int) -> str:
        """Precompute ``teacher`` over ``views`` views of every train image into ``cfg.out/name``
        (resumes a partial store); record the build as ``precompute:<name>``; return the URL."""
        from teacher_service.precompute import PrecomputeConfig, run_precompute

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
        key = f"precompute:{name}"
        if key not in self.entries and report.views_computed:
            self.record(key, {"seconds": report.seconds, "views": report.views_computed})
        return url

    @classmethod
    def _settings(cls, cfg: TrainConfig) -> dict[str, Any]:
        return {k: v for k, v in cfg.to_dict().items() if k not in cls.IGNORED}

    def train(self, key: str, cfg: TrainConfig, console: Console | None = None) -> dict[str, Any]:
        """Train ``cfg`` unless ``key`` is already done with these settings; return its entry
        (deployed and final checkpoint paths, training seconds, steps)."""
        from student_trainer.train import train

        done = self.entries.get(key)
        if (
            done is not None
            and done.get("settings") == json.loads(json.dumps(self._settings(cfg), default=str))
            and Path(done["deployed"]).is_file()
        ):
            if console is not None:
                console.print(f"{key}: already trained ({done['seconds']:.0f} s), reusing it")
            return done
        # An interrupted run with these settings continues from its last checkpoint; a folder
        # left by other settings is trained afresh (train overwrites it).
        started = Path(cfg.out) / "config.json"
        cfg.resume = started.is_file() and self._settings(
            TrainConfig.from_dict(json.loads(started.read_text()))
        ) == self._settings(cfg)
        result = train(cfg)
        entry = {
            "settings": self._settings(cfg),
            "deployed": result.deployed_path,
            "final": result.final_path,
            "seconds": round(result.seconds, 2),
            "steps": result.steps,
            "deployed_parameters": result.deployed_parameters,
        }
        self.record(key, json.loads(json.dumps(entry, default=str)))
        return self.entries[key]
