"""``RunLedger``: the record of finished training runs and cache builds that makes the demo and
the study resumable (``runs.json`` in a demo folder).

The ledger records and answers; it runs nothing (``student_trainer.demo.pipeline`` trains and
builds through it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store.atomic import atomic_write_text
from student_trainer.train.config import RESULT_NEUTRAL_FIELDS, TrainConfig

if TYPE_CHECKING:
    from student_trainer.train.loop import TrainResult

__all__ = ["RunLedger"]


class RunLedger:
    """``runs.json`` in a demo folder: every finished training run and cache build, with its time.

    A run whose key is recorded with the same settings (and whose deployed checkpoint still
    exists) is not trained again, so an interrupted demo or study picks up where it stopped;
    an unfinished run resumes from its own ``ckpt/last.pt``. The recorded seconds are what the
    study's cost table uses (a skipped run keeps the time of the run that trained it).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = (
            json.loads(path.read_text()) if path.is_file() else {}
        )

    def record(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` under ``key`` (atomic rewrite of the file)."""
        self.entries[key] = entry
        atomic_write_text(self.path, json.dumps(self.entries, indent=2, default=str))

    def record_build(self, name: str, seconds: float, views: int) -> None:
        """Record the first build of store ``name`` as ``precompute:<name>`` (a resumed or
        already complete build keeps the time of the build that computed its views)."""
        key = f"precompute:{name}"
        if key not in self.entries and views:
            self.record(key, {"seconds": seconds, "views": views})

    @classmethod
    def _settings(cls, cfg: TrainConfig) -> dict[str, Any]:
        return {k: v for k, v in cfg.to_dict().items() if k not in RESULT_NEUTRAL_FIELDS}

    def finished(self, key: str, cfg: TrainConfig) -> dict[str, Any] | None:
        """The entry of run ``key`` if it finished with ``cfg``'s settings and its deployed
        checkpoint still exists, else None."""
        done = self.entries.get(key)
        if (
            done is not None
            and done.get("settings") == json.loads(json.dumps(self._settings(cfg), default=str))
            and Path(done["deployed"]).is_file()
        ):
            return done
        return None

    def resumable(self, cfg: TrainConfig) -> bool:
        """Whether ``cfg.out`` holds an interrupted run with ``cfg``'s settings (it continues from
        its last checkpoint; a folder left by other settings is trained afresh)."""
        started = Path(cfg.out) / "config.json"
        return started.is_file() and self._settings(
            TrainConfig.from_dict(json.loads(started.read_text()))
        ) == self._settings(cfg)

    def record_run(self, key: str, cfg: TrainConfig, result: TrainResult) -> dict[str, Any]:
        """Record a finished run under ``key``; return its entry (deployed and final checkpoint
        paths, training seconds, steps)."""
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
