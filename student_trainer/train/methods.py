"""The training methods, one registry entry each: what a method uses and which loss it adds.

Every method runs through :class:`student_trainer.train.moco.MoCo`; a :class:`MethodSpec` says
whether it trains MoCo's InfoNCE (momentum key encoder + key queue), whether it needs teacher
targets (from a store or an online teacher), whether it keeps SEED's queue of teacher embeddings,
and its teacher loss. Adding a method is one entry in :data:`METHODS` plus its loss function (in
``student_trainer.train.losses``). Importing this module imports no torch: the CLI's help lists
the methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from store.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["METHODS", "DistillInputs", "MethodSpec", "get_method"]


@dataclass(frozen=True)
class DistillInputs:
    """What a teacher loss sees in one step.

    ``q1``/``q2`` ``(b, D)``: the student's L2-normalised embeddings of view 1 and view 2;
    ``t1``/``t2`` ``(b, D) float32``: the teacher's embeddings of the same views;
    ``teacher_queue`` ``(K_t, D)``: SEED's queue of older teacher embeddings (1 row if unused).
    """

    q1: torch.Tensor
    q2: torch.Tensor
    t1: torch.Tensor
    t2: torch.Tensor
    teacher_queue: torch.Tensor
    temperature: float
    """Student temperature τ (InfoNCE's τ; SEED's τ_s)."""
    teacher_temperature: float
    """SEED's teacher temperature τ_t."""
    distill_weight: float
    """DisCo's λ."""


DistillLoss = Callable[[DistillInputs], "dict[str, torch.Tensor]"]
"""A teacher loss: inputs -> named 0-d terms (the spec's ``loss_terms`` among them)."""


@dataclass(frozen=True)
class MethodSpec:
    """One training method. ``loss = sum(terms[name] for name in loss_terms)``, in that order."""

    name: str
    help: str
    """One line for ``--help`` and the docs."""
    uses_contrast: bool
    """MoCo-v2's InfoNCE: a momentum key encoder and a queue of its keys (term "infonce")."""
    uses_teacher: bool
    """Needs teacher embeddings of both views (a store's cached targets or an online teacher)."""
    uses_teacher_queue: bool
    """Keeps a ring queue of teacher embeddings (SEED's negatives)."""
    loss_terms: tuple[str, ...]
    """Terms summed into the loss; ``StepOutput.terms`` may log more (DisCo's unweighted "mse")."""
    distill: DistillLoss | None = None
    """The teacher loss (exactly when ``uses_teacher``)."""

    def __post_init__(self) -> None:
        if self.uses_teacher != (self.distill is not None):
            raise ValueError(f"method {self.name}: a teacher loss exactly when it uses a teacher")
        if self.uses_teacher_queue and not self.uses_teacher:
            raise ValueError(f"method {self.name}: a teacher queue needs teacher targets")
        if self.uses_contrast != ("infonce" in self.loss_terms) or not self.loss_terms:
            raise ValueError(f"method {self.name}: loss_terms must include infonce iff contrast")


def _disco_loss(x: DistillInputs) -> dict[str, torch.Tensor]:
    """DisCo: λ · (mean_b ‖q1 − t1‖² + mean_b ‖q2 − t2‖²), logged unweighted as "mse"."""
    # lazy: torch; the CLI imports this registry for --help
    from student_trainer.train.losses import disco_mse

    mse = disco_mse(x.q1, x.t1) + disco_mse(x.q2, x.t2)
    return {"mse": mse, "distill": x.distill_weight * mse}


def _seed_loss(x: DistillInputs) -> dict[str, torch.Tensor]:
    """SEED: mean of both views' soft cross-entropy over [t | teacher queue]."""
    # lazy: torch; the CLI imports this registry for --help
    from student_trainer.train.losses import seed_loss

    tau_s, tau_t = x.temperature, x.teacher_temperature
    s1 = seed_loss(x.q1, x.t1, x.teacher_queue, tau_s, tau_t)
    s2 = seed_loss(x.q2, x.t2, x.teacher_queue, tau_s, tau_t)
    return {"seed": 0.5 * (s1 + s2)}


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "mocov2",
            "MoCo-v2 alone (query/key encoders, queue, InfoNCE); needs no teacher",
            uses_contrast=True,
            uses_teacher=False,
            uses_teacher_queue=False,
            loss_terms=("infonce",),
        ),
        MethodSpec(
            "disco",
            "MoCo-v2 + λ·mean_b ||ŝ - t||² on both views (DisCo)",
            uses_contrast=True,
            uses_teacher=True,
            uses_teacher_queue=False,
            loss_terms=("infonce", "distill"),
            distill=_disco_loss,
        ),
        MethodSpec(
            "seed",
            "SEED: student softmax over [ŝ·t | ŝ·teacher-queue] matched to the teacher's",
            uses_contrast=False,
            uses_teacher=True,
            uses_teacher_queue=True,
            loss_terms=("seed",),
            distill=_seed_loss,
        ),
    )
}
"""Registered methods by name."""


def get_method(name: str) -> MethodSpec:
    """The spec registered as ``name``; ``ConfigError`` naming the valid methods otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        valid = ", ".join(sorted(METHODS))
        raise ConfigError(f"unknown method {name!r}; valid methods: {valid}") from None
