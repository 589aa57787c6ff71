"""The demo's and the study's settings: :class:`DemoConfig` and :class:`StudyConfig`.

Imports no torch: ``disco demo --help`` derives its options from these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from store.devices import parse_device_name
from store.errors import ConfigError
from student_trainer.train.config import TrainConfig
from student_trainer.train.methods import METHODS
from teacher_service.config import parse_teacher

__all__ = ["DEMO_TEACHER_PATH", "STUDENT_DEFAULTS", "DemoConfig", "StudyConfig"]

DEMO_TEACHER_PATH = Path(__file__).parents[1] / "assets" / "demo_teacher.pt"
"""The shipped demo teacher (fp16, project format), trained by ``disco demo --train-teacher``."""

STUDENT_DEFAULTS: dict[str, Any] = {
    "batch_size": 128,
    "queue_size": 4096,
    "key_momentum": 0.99,
    "lr": 0.06,
    "weight_decay": 5e-4,
}
"""Student optimisation settings shared by every method (same budget, same seed)."""


@dataclass
class DemoConfig:
    """One demo run. Defaults are the mnist5k demo; ``quick`` shrinks every stage."""

    out: str = "runs/demo"
    """Output folder: store, student runs, results.md/json, neighbour pictures."""
    dataset: str = "mnist5k"
    """Dataset spec; its train split is distilled, its test split is the kNN query set."""
    teacher: str | None = None
    """Teacher (checkpoint, timm:NAME, hf:PATH_OR_ID, open_clip:ARCH, py:MODULE:FUNCTION);
    None = the shipped demo teacher (mnist5k only)."""
    teacher_weights: str | None = None
    """Weights of a timm:/hf:/open_clip:/py: teacher (.safetensors, .pth, snapshot folder)."""
    size: int = 32
    """View size in px."""
    recipe: str | None = None
    """View recipe; None = "digits" for digit datasets, else "mocov2"."""
    views: int = 8
    """Cached views V per train image."""
    student_arch: str = "resnet10"
    """Student backbone (teacher_service.encoders.ARCHS)."""
    student_width: int | None = 16
    """Student ResNet base width (None = the architecture's default)."""
    methods: tuple[str, ...] = ("mocov2", "disco", "seed")
    """Student methods, trained from the same seed and budget."""
    epochs: int = 8
    """Student epochs (8 keeps ``make demo`` within 15 minutes on 2 CPU cores)."""
    distill_weight: float = 8.0
    """DisCo λ (batch mean, per view)."""
    seed: int = 0
    """Seed of the view plan and of every student."""
    workers: int = 2
    """DataLoader workers for precompute and training."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    quick: bool = False
    """A ~3-minute run of the same stages (fewer views, epochs, verify samples; queue 512)."""
    progress: bool = True
    """Show progress bars."""
    verify_samples: int = 64
    """Views re-computed by the live teacher in the verify stage."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Extra TrainConfig fields applied to every student (e.g. {"head_hidden": 512})."""

    def __post_init__(self) -> None:
        parse_device_name(self.device)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(
                f"unknown demo methods {unknown}; valid methods: {', '.join(sorted(METHODS))}"
            )
        if self.views < 2:
            raise ConfigError(f"views must be >= 2 (a student pairs two views), got {self.views}")
        if self.epochs < 1 or self.size < 8:
            raise ConfigError("epochs must be >= 1 and size >= 8")
        if self.quick:
            self.views = min(self.views, 2)
            self.epochs = min(self.epochs, 1)
            self.verify_samples = min(self.verify_samples, 16)
            self.extra = {"queue_size": 512, **self.extra}  # fewer prefill batches

    def student(
        self,
        method: str,
        seed: int,
        name: str,
        source: dict[str, Any],
        overrides: dict[str, Any] | None = None,
    ) -> TrainConfig:
        """The ``TrainConfig`` of one demo or study student, trained into ``out/students/name``.

        ``source`` says where the targets come from (``{"store": ..., "expect": ...}`` or
        ``{"dataset": ..., "online_teacher": ...}``); the settings are :data:`STUDENT_DEFAULTS`,
        then ``extra``, then ``overrides`` (a study arm's), with this demo's architecture,
        epochs, λ, workers and device.
        """
        settings: dict[str, Any] = {**STUDENT_DEFAULTS, **self.extra, **(overrides or {})}
        return TrainConfig(
            method=method,
            arch=self.student_arch,
            width=self.student_width,
            out=str(Path(self.out) / "students" / name),
            epochs=self.epochs,
            distill_weight=settings.pop("distill_weight", self.distill_weight),
            seed=seed,
            num_workers=self.workers,
            device=self.device,
            progress=self.progress,
            **source,
            **settings,
        )

    def resolved_recipe(self) -> str:
        """Recipe name ("digits" for mnist5k/digits unless given)."""
        if self.recipe is not None:
            return self.recipe
        return "digits" if self.dataset.split(":", 1)[0] in ("mnist5k", "digits") else "mocov2"

    def resolved_teacher(self) -> str:
        """The teacher spec or checkpoint path; the shipped one only fits mnist5k."""
        if self.teacher is not None:
            if parse_teacher(self.teacher)[0] != "checkpoint":
                return self.teacher
            if not Path(self.teacher).is_file():
                raise ConfigError(f"teacher checkpoint not found: {self.teacher}")
            return self.teacher
        if self.dataset != "mnist5k":
            raise ConfigError("the shipped demo teacher is for mnist5k; give --teacher CKPT")
        if not DEMO_TEACHER_PATH.is_file():
            raise ConfigError(
                f"demo teacher missing at {DEMO_TEACHER_PATH}; run `disco demo --train-teacher`"
            )
        return str(DEMO_TEACHER_PATH)


@dataclass
class StudyConfig:
    """What the study measures beyond the demo (whose settings every arm starts from)."""

    seeds: int = 3
    """Student seeds of the main arms (mocov2, disco): seeds demo.seed .. demo.seed + seeds - 1."""
    ablation_seeds: int = 2
    """Student seeds of every other arm (each costs one student run per seed)."""
    lambdas: tuple[float, ...] = (2.0,)
    """DisCo λ values besides the demo's."""
    views: tuple[int, ...] = (2, 32)
    """Cached-view counts besides the demo's V (fewer: a prefix of the demo's store; more: a
    store of their own)."""
    online: bool = True
    """Also train ``disco`` with a live teacher on fresh views every step."""
    head_hidden: tuple[int, ...] = (128, 512)
    """Student head hidden widths besides the default 2048 (the Distilling BottleNeck)."""
    weak_teacher: bool = True
    """Also distil from the seed-0 mocov2 student (a teacher no better than the student)."""
    symmetric_mocov2: bool = True
    """Also train ``mocov2`` with the symmetric loss (``--symmetric``: both views query and key
    each step): the better no-teacher baseline at the demo's epochs."""

    def shrunk(self, demo_views: int) -> StudyConfig:
        """The ``--quick`` study: 2 main seeds, 1 ablation seed, one extra V (demo's + 1), one
        extra head width; every arm kind still runs."""
        return replace(
            self,
            seeds=min(self.seeds, 2),
            ablation_seeds=1,
            lambdas=self.lambdas[:1],
            views=(demo_views + 1,),
            head_hidden=self.head_hidden[:1],
        )

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.ablation_seeds < 1:
            raise ConfigError("seeds and ablation_seeds must be >= 1")
        if any(v < 2 for v in self.views):
            raise ConfigError(f"views must be >= 2, got {self.views}")
