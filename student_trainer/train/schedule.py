"""Learning-rate schedule as a plain function of the step (linear warm-up, then cosine)."""

from __future__ import annotations

import math

__all__ = ["cosine_lr", "scaled_lr"]


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = 256) -> float:
    """MoCo's linear scaling rule: ``base_lr * batch_size / reference_batch``."""
    return base_lr * batch_size / reference_batch


def cosine_lr(
    step: int, total_steps: int, peak_lr: float, warmup_steps: int = 0, final_lr: float = 0.0
) -> float:
    """Learning rate used for optimiser step ``step`` (0-based) of ``total_steps``.

    Steps ``0 .. warmup_steps-1`` ramp linearly from ``peak_lr / warmup_steps`` to ``peak_lr``;
    the rest follow a half cosine from ``peak_lr`` (at ``warmup_steps``) towards ``final_lr``
    (reached after the last step). Units are those of ``peak_lr``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final_lr + 0.5 * (peak_lr - final_lr) * (1.0 + math.cos(math.pi * progress))
