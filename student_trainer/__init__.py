"""student_trainer: students (MoCo-v2, DisCo, SEED) trained from cached teacher targets, and eval.

The training types are re-exported lazily (``store.lazy``: importing the package stays cheap, no
torch): ``TrainConfig``, ``TrainResult``, ``METHODS``, ``MethodSpec``, ``get_method``. Train with
``from student_trainer.train import train`` (the submodule ``student_trainer.train`` shadows a
package-level function of that name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from store.lazy import lazy_exports

if TYPE_CHECKING:
    from student_trainer.config import TrainConfig
    from student_trainer.methods import METHODS, MethodSpec, get_method
    from student_trainer.train import TrainResult

__all__ = ["METHODS", "MethodSpec", "TrainConfig", "TrainResult", "get_method"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "METHODS": "student_trainer.methods",
        "MethodSpec": "student_trainer.methods",
        "TrainConfig": "student_trainer.config",
        "TrainResult": "student_trainer.train",
        "get_method": "student_trainer.methods",
    },
)
