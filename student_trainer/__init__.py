"""student_trainer: students (MoCo-v2, DisCo, SEED) trained from cached teacher targets, and eval.

Three sub-packages, one direction (checked by ``lint-imports``): ``demo`` (the demo, its service
check, the study and the runs ledger) uses ``train`` and ``eval``; ``train`` (config, loop, data,
lazy fill, methods, losses, MoCo, schedule, models, export) uses only ``eval.monitor``; ``eval``
(features, kNN, metrics, linear probe, report, monitor) never imports ``train``. ``cli`` joins
every package's commands into the root ``disco`` app.

The training types are re-exported lazily (``store.lazy``: importing the package stays cheap, no
torch): ``TrainConfig``, ``TrainResult``, ``METHODS``, ``MethodSpec``, ``get_method``. Train with
``from student_trainer.train import train``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from store.lazy import lazy_exports

if TYPE_CHECKING:
    from student_trainer.train.config import TrainConfig
    from student_trainer.train.loop import TrainResult
    from student_trainer.train.methods import METHODS, MethodSpec, get_method

__all__ = ["METHODS", "MethodSpec", "TrainConfig", "TrainResult", "get_method"]

# resolved through student_trainer.train's own lazy exports (one map of where each name lives)
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(__all__, "student_trainer.train"))
