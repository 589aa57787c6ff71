"""SEED's distillation: match the student's similarity distribution to the teacher's.

As in SEED (jacobswan1/SEED ``seed/builder.py``): both networks score the teacher's embedding of
the same image ``t`` and a queue of teacher embeddings; the student's logits
``[ŝ·t | ŝ·queue] / τ_s`` are trained with soft cross-entropy against
``softmax([t·t | t·queue] / τ_t)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["seed_loss"]


def seed_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    teacher_queue: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> torch.Tensor:
    """Mean over the batch of ``-Σ_j p_t[j] log p_s[j]`` (nats); 0-d float tensor.

    ``student`` ``(B, D)`` and ``teacher`` ``(B, D)`` are L2-normalised embeddings of the same
    view; ``teacher_queue`` ``(K, D)`` holds earlier teacher embeddings. ``p_s`` is the softmax
    of ``[ŝ·t, ŝ·queue] / student_temperature`` and ``p_t`` that of
    ``[t·t, t·queue] / teacher_temperature`` (no gradient into the teacher side).
    """
    t = teacher.detach()
    bank = teacher_queue.detach()
    logits_s = torch.cat([(student * t).sum(1, keepdim=True), student @ bank.t()], dim=1)
    with torch.no_grad():
        logits_t = torch.cat([(t * t).sum(1, keepdim=True), t @ bank.t()], dim=1)
        p_t = F.softmax(logits_t / teacher_temperature, dim=1)
    log_p_s = F.log_softmax(logits_s / student_temperature, dim=1)
    return -(p_t * log_p_s).sum(dim=1).mean()
