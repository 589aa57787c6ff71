"""The demo and the study: the whole pipeline on real data, the service check, the claims measured
over seeds, and the runs ledger that makes both resumable.

Uses ``student_trainer.train`` and ``student_trainer.eval``; nothing imports it but the CLI.
Re-exported lazily (importing the package stays cheap, no torch): ``DemoConfig``, ``run_demo``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from store.lazy import lazy_exports

if TYPE_CHECKING:
    from student_trainer.demo.config import DemoConfig
    from student_trainer.demo.pipeline import run_demo

__all__ = ["DemoConfig", "run_demo"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {"DemoConfig": "student_trainer.demo.config", "run_demo": "student_trainer.demo.pipeline"},
)
