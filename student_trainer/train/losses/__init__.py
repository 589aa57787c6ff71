"""Training losses: MoCo's InfoNCE, DisCo's embedding MSE, SEED's soft cross-entropy and the
weighted mean over several teachers' heads."""

from student_trainer.train.losses.disco import disco_mse, disco_sum_reference
from student_trainer.train.losses.infonce import (
    infonce_logits,
    infonce_loss,
    symmetric_infonce_loss,
)
from student_trainer.train.losses.multi_teacher import (
    multi_teacher_loss,
    multi_teacher_seed_loss,
    teacher_present,
)
from student_trainer.train.losses.seed import seed_loss

__all__ = [
    "disco_mse",
    "disco_sum_reference",
    "infonce_logits",
    "infonce_loss",
    "multi_teacher_loss",
    "multi_teacher_seed_loss",
    "seed_loss",
    "symmetric_infonce_loss",
    "teacher_present",
]
