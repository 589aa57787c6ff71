"""``disco demo``: the end-to-end demo (or, with --train-teacher, retrain its teacher).

The demo's options are derived from :class:`~student_trainer.demo.config.DemoConfig` and the
study's defaults and help come from :class:`~student_trainer.demo.config.StudyConfig`, so a flag
and its field cannot disagree.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from store.cli_options import dataclass_options, exits_on_error, field_docs, with_options
from student_trainer.demo.config import DemoConfig, StudyConfig

__all__ = ["demo_command"]

_STUDY = field_docs(StudyConfig)

_OPTIONS = dataclass_options(
    DemoConfig,
    # set through the study or a library call, not as flags
    exclude=("recipe", "methods", "distill_weight", "verify_samples", "extra"),
    helps={"student_width": "Student ResNet base width (0: the architecture's default)."},
)
"""The ``DemoConfig`` fields as options (name, type, default, help from the field)."""


@with_options(_OPTIONS)
@exits_on_error
def demo_command(
    train_teacher: Annotated[
        bool,
        typer.Option(
            help="Retrain the demo teacher from scratch (MoCo-v2, 80 epochs: ~70 minutes on 2 CPU "
            "cores) and install it as student_trainer/assets/demo_teacher.pt; then stop."
        ),
    ] = False,
    teacher_epochs: Annotated[
        int | None, typer.Option(help="With --train-teacher: epochs (default: the shipped one's).")
    ] = None,
    study: Annotated[
        bool,
        typer.Option(
            help="After the demo, measure the claims over seeds into OUT/study.md: mocov2 vs disco "
            "(--seeds), mocov2 with the symmetric loss, DisCo λ 2, V 2/32 views vs an online "
            "teacher, head 128/512, a weak teacher, cache cost (about 1.5 hours on 2 CPU cores; "
            "resumable)."
        ),
    ] = False,
    teachers_study: Annotated[
        bool,
        typer.Option(
            help="Instead of the demo: one student, two complementary teachers in one store "
            "(mocov2 teachers on digits 0-4 / 5-9; single-teacher, concatenated and multi-head "
            "students over --seeds) into OUT/teachers-study.md (about 30 min on 2 CPU cores; "
            "resumable)."
        ),
    ] = False,
    seeds: Annotated[
        int, typer.Option(help=f"With --study: {_STUDY['seeds']}")
    ] = StudyConfig.seeds,
    ablation_seeds: Annotated[
        int, typer.Option(help=f"With --study: {_STUDY['ablation_seeds']}")
    ] = StudyConfig.ablation_seeds,
    study_views: Annotated[
        list[int] | None,
        typer.Option(help=f"With --study (repeatable): {_STUDY['views']}"),
    ] = None,
    study_heads: Annotated[
        list[int] | None,
        typer.Option(help=f"With --study (repeatable): {_STUDY['head_hidden']}"),
    ] = None,
    study_lambdas: Annotated[
        list[float] | None,
        typer.Option(help=f"With --study (repeatable): {_STUDY['lambdas']}"),
    ] = None,
    **config: Any,
) -> None:
    """Run the whole pipeline on real data: precompute → verify → students → FAISS evaluation.

    With --study, also measure the DisCo claim and the cache's claim over seeds (study.md).
    """
    if teachers_study:
        _teachers_study(config, seeds)
        return
    if train_teacher:
        # lazy: torch loads only when a command runs, so --help stays instant
        from student_trainer.demo.pipeline import train_demo_teacher

        path = train_demo_teacher(epochs=teacher_epochs, progress=config["progress"])
        typer.echo(f"demo teacher written to {path}")
        return
    config["student_width"] = config["student_width"] or None  # 0: the architecture's default
    cfg = DemoConfig(**config)
    if study:
        # lazy: torch loads only when a command runs, so --help stays instant
        from student_trainer.demo.study import run_study

        arms = _study_arms(seeds, ablation_seeds, study_views, study_heads, study_lambdas)
        run_study(cfg, StudyConfig(**arms))
    else:
        # lazy: torch loads only when a command runs, so --help stays instant
        from student_trainer.demo.pipeline import run_demo

        run_demo(cfg)


def _teachers_study(config: dict[str, Any], seeds: int) -> None:
    """``--teachers-study``: two complementary teachers in one store, students over ``seeds``."""
    # lazy: torch loads only when a command runs, so --help stays instant
    from student_trainer.demo.teachers_study import TeachersStudyConfig, run_teachers_study

    run_teachers_study(
        TeachersStudyConfig(
            out=config["out"],
            seeds=seeds,
            workers=config["workers"],
            device=config["device"],
            progress=config["progress"],
        )
    )


def _study_arms(
    seeds: int,
    ablation_seeds: int,
    views: list[int] | None,
    heads: list[int] | None,
    lambdas: list[float] | None,
) -> dict[str, Any]:
    """``StudyConfig`` keyword arguments from the ``--study`` options (unset lists: defaults)."""
    arms: dict[str, Any] = {"seeds": seeds, "ablation_seeds": ablation_seeds}
    if views:
        arms["views"] = tuple(views)
    if heads:
        arms["head_hidden"] = tuple(heads)
    if lambdas:
        arms["lambdas"] = tuple(lambdas)
    return arms
