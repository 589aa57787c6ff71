"""Training: config, the loop, streaming data, lazy fill, methods, losses, MoCo, schedule, models,
export.

Imports only ``student_trainer.eval.monitor`` from the rest of ``student_trainer``. Re-exported
lazily (importing the package stays cheap, no torch): ``train``, ``TrainResult``, ``TrainConfig``,
``METHODS``, ``MethodSpec``, ``get_method``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from store.lazy import lazy_exports

if TYPE_CHECKING:
    from student_trainer.train.config import TrainConfig
    from student_trainer.train.loop import TrainResult, train
    from student_trainer.train.methods import METHODS, MethodSpec, get_method

__all__ = ["METHODS", "MethodSpec", "TrainConfig", "TrainResult", "get_method", "train"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "METHODS": "student_trainer.train.methods",
        "MethodSpec": "student_trainer.train.methods",
        "TrainConfig": "student_trainer.train.config",
        "TrainResult": "student_trainer.train.loop",
        "get_method": "student_trainer.train.methods",
        "train": "student_trainer.train.loop",
    },
)
