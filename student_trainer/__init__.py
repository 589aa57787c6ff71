"""student_trainer: students (MoCo-v2, DisCo, SEED) trained from cached teacher targets, and eval.

The training types are re-exported lazily (importing the package stays cheap): ``TrainConfig``,
``TrainResult``, ``METHODS``. Train with ``from student_trainer.train import train`` (the
submodule ``student_trainer.train`` shadows a package-level function of that name).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["METHODS", "TrainConfig", "TrainResult"]

_LAZY = {
    "METHODS": "student_trainer.methods",
    "TrainConfig": "student_trainer.config",
    "TrainResult": "student_trainer.train",
}


def __getattr__(name: str) -> Any:
    """Import ``name`` from its module on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'student_trainer' has no attribute {name!r}")
