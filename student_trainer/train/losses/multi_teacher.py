"""Distillation from several teachers at once: one student head per teacher, a weighted mean.

The batch carries each view's targets of K teachers side by side, ``(B, D_1 + ... + D_K)``, with
a teacher's segment all zeros where it has not written that view (``store.multi``). For teacher k
and view j the per-image term is

- ``mse`` (DisCo): ``d = ||ŝ_k - t_k||²`` with ``ŝ_k`` the L2-normalised output of head k, or
- ``cosine`` (UNIC): ``d = 0.5 (1 - cos(z_k, t_k)) + 0.5 smooth_l1(z_k, t_k)`` on the raw head
  output ``z_k`` (smooth-L1 averaged over the D_k dimensions, beta 1).

Teacher k's term sums over the two views the mean of ``d`` over the images where it wrote the
view (DisCo's ``mean_b d(view 1) + mean_b d(view 2)``; a view it has not written counts for no
other teacher's term). The loss is the weighted mean over the teachers present in the batch:
``L = Σ_k w_k T_k / Σ_k w_k``. With one teacher, full targets and no dropping it equals DisCo's
:func:`~student_trainer.train.losses.disco_mse` on both views.

Teacher dropping (UNIC, "teacher dropping regularisation"): per image and view, each present
teacher except the one with the largest ``d`` is dropped with probability ``p``; ``uniform``
``(2, B, K)`` are the draws (the caller seeds them by the step, so a run replays exactly).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from student_trainer.train.losses.seed import seed_loss

__all__ = ["multi_teacher_loss", "multi_teacher_seed_loss", "teacher_present"]


def teacher_present(target: torch.Tensor, segments: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``(B, K) bool``: which teachers wrote each row of ``target`` ``(B, ΣD)`` (a written target
    is a unit vector; an unwritten segment is zeros)."""
    norms = [target[:, a:b].norm(dim=1) for a, b in segments]
    return torch.stack(norms, dim=1) > 0.5


def _per_image(raw: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """``(B,)`` per-image term of one head's raw output ``(B, D)`` against ``target``."""
    t = target.detach()
    if kind == "mse":
        return (F.normalize(raw.float(), dim=1) - t).pow(2).sum(dim=1)
    if kind == "cosine":
        cos = F.cosine_similarity(raw.float(), t, dim=1)
        sl1 = F.smooth_l1_loss(raw.float(), t, reduction="none", beta=1.0).mean(dim=1)
        return 0.5 * (1.0 - cos) + 0.5 * sl1
    raise ValueError(f"unknown per-teacher loss {kind!r}; valid: mse, cosine")


def multi_teacher_loss(
    raw1: Sequence[torch.Tensor],
    raw2: Sequence[torch.Tensor],
    target1: torch.Tensor,
    target2: torch.Tensor,
    segments: Sequence[tuple[int, int]],
    weights: Sequence[float],
    kind: str = "mse",
    drop: float = 0.0,
    uniform: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, T)``: the weighted mean ``L`` (0-d) and the per-teacher terms ``T`` ``(K,)``
    (detached; 0 for a teacher absent from the batch) — see the module docstring.

    ``raw1``/``raw2``: K head outputs ``(B, D_k)`` for view 1 / view 2 (gradients flow);
    ``target1``/``target2`` ``(B, ΣD)`` teachers' targets (constants); ``segments``: each
    teacher's ``[start, stop)`` in them; ``weights`` (K,) > 0; ``drop`` in [0, 1) with
    ``uniform`` ``(2, B, K)`` in [0, 1) (required when ``drop`` > 0).
    """
    k = len(segments)
    if not (len(raw1) == len(raw2) == len(weights) == k):
        raise ValueError("one head output, weight and segment per teacher")
    terms = []
    present_any = []
    for j, (raws, target) in enumerate(((raw1, target1), (raw2, target2))):
        present = teacher_present(target, segments).float()  # (B, K)
        d = torch.stack(
            [_per_image(raws[i], target[:, a:b], kind) for i, (a, b) in enumerate(segments)],
            dim=1,
        )  # (B, K)
        keep = present
        if drop > 0:
            if uniform is None:
                raise ValueError("teacher dropping needs its uniform draws")
            with torch.no_grad():
                masked = d.detach().masked_fill(present == 0, float("-inf"))
                top = F.one_hot(masked.argmax(dim=1), k).float()
                kept = (uniform[j].to(d.device) >= drop).float()
                keep = present * torch.maximum(kept, top)
        count = present.sum(dim=0)  # images with a target, per teacher
        terms.append((d * keep).sum(dim=0) / count.clamp(min=1.0))
        present_any.append(count > 0)
    per_teacher = terms[0] + terms[1]
    active = (present_any[0] | present_any[1]).float()
    w = torch.as_tensor(list(weights), dtype=per_teacher.dtype, device=per_teacher.device)
    denom = (w * active).sum()
    loss = (w * active * per_teacher).sum() / denom.clamp(min=1e-12)
    return loss, per_teacher.detach()


def multi_teacher_seed_loss(
    raw1: Sequence[torch.Tensor],
    raw2: Sequence[torch.Tensor],
    target1: torch.Tensor,
    target2: torch.Tensor,
    queue: torch.Tensor,
    segments: Sequence[tuple[int, int]],
    weights: Sequence[float],
    student_temperature: float,
    teacher_temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SEED per teacher: ``(L, T)`` as :func:`multi_teacher_loss`, with teacher k's term the
    mean over both views of SEED's soft cross-entropy
    (:func:`~student_trainer.train.losses.seed_loss`) of head k's L2-normalised output against
    teacher k's target, over the images where k wrote the view, with teacher k's slice of the
    teacher ``queue`` ``(K_t, ΣD)`` as negatives (rows where k wrote nothing left out)."""
    terms = []
    active = []
    for i, (a, b) in enumerate(segments):
        bank = queue[:, a:b]
        bank = bank[bank.norm(dim=1) > 0.5]
        total = target1.new_zeros(())
        seen = False
        for raw, target in ((raw1[i], target1), (raw2[i], target2)):
            rows = target[:, a:b].norm(dim=1) > 0.5
            if not bool(rows.any()):
                continue
            seen = True
            s = F.normalize(raw[rows].float(), dim=1)
            total = total + 0.5 * seed_loss(
                s, target[rows, a:b], bank, student_temperature, teacher_temperature
            )
        terms.append(total)
        active.append(1.0 if seen else 0.0)
    per_teacher = torch.stack(terms)
    w = torch.as_tensor(list(weights), dtype=per_teacher.dtype, device=per_teacher.device)
    act = torch.as_tensor(active, dtype=per_teacher.dtype, device=per_teacher.device)
    loss = (w * act * per_teacher).sum() / (w * act).sum().clamp(min=1e-12)
    return loss, per_teacher.detach()
