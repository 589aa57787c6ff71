"""DisCo's distillation term: squared distance between student and teacher final embeddings.

DisCo-pytorch (``DisCo/main.py``) uses ``nn.MSELoss(reduction="sum")(teacher, student)``, i.e. the
sum over the per-GPU batch (32 there) and over dimensions of ``(t - s)^2``, once for the query view
and once for the key view (both passed through the student's *query* encoder). Here the per-sample
squared distances are **averaged** over the batch, so the weight is independent of the batch size:
``batch * disco_mse(s, t) == sum-reduced MSE``, and DisCo's weight 1 at 32 per GPU is ``λ = 32``.
"""

from __future__ import annotations

import torch

__all__ = ["disco_mse", "disco_sum_reference"]


def disco_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``||s_b - t_b||^2`` (summed over D); 0-d float tensor.

    ``student`` ``(B, D)`` is the student's L2-normalised embedding (gradient flows here);
    ``teacher`` ``(B, D)`` is the teacher's L2-normalised target, treated as a constant.
    """
    diff = student - teacher.detach()
    return diff.pow(2).sum(dim=1).mean()


def disco_sum_reference(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """DisCo-pytorch's reduction: ``MSELoss(reduction="sum")`` over ``(B, D)``; 0-d tensor.

    Kept as the golden reference the tests compare :func:`disco_mse` against.
    """
    return torch.nn.functional.mse_loss(student, teacher.detach(), reduction="sum")
