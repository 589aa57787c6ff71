"""``disco demo``: the end-to-end demo (or, with --train-teacher, retrain its teacher)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from store.cli_options import exits_on_error

__all__ = ["demo_command"]


@exits_on_error
def demo_command(
    out: Annotated[str, typer.Option(help="Output folder.")] = "runs/demo",
    quick: Annotated[
        bool, typer.Option(help="Same stages at a ~3-minute size (2 views, 1 epoch).")
    ] = False,
    train_teacher: Annotated[
        bool,
        typer.Option(
            help="Retrain the demo teacher from scratch (MoCo-v2, 80 epochs: ~70 minutes on 2 CPU "
            "cores) and install "
            "it as student_trainer/assets/demo_teacher.pt; then stop."
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
    seeds: Annotated[int, typer.Option(help="With --study: seeds of mocov2 and disco.")] = 3,
    ablation_seeds: Annotated[
        int, typer.Option(help="With --study: seeds of every other study arm.")
    ] = 2,
    study_views: Annotated[
        list[int] | None,
        typer.Option(help="With --study: other cached-view counts V (repeatable; default 2, 32)."),
    ] = None,
    study_heads: Annotated[
        list[int] | None,
        typer.Option(help="With --study: other head hidden widths (repeatable; default 128, 512)."),
    ] = None,
    study_lambdas: Annotated[
        list[float] | None,
        typer.Option(help="With --study: other DisCo λ values (repeatable; default 2)."),
    ] = None,
    dataset: Annotated[str, typer.Option(help="Dataset spec (train split is distilled).")] = (
        "mnist5k"
    ),
    teacher: Annotated[
        str | None,
        typer.Option(
            help="Teacher: checkpoint, timm:NAME, hf:PATH_OR_ID, open_clip:ARCH, "
            "py:MODULE:FUNCTION (default: the shipped demo teacher)."
        ),
    ] = None,
    teacher_weights: Annotated[
        str | None, typer.Option(help="Teacher weights (.safetensors, .pth, snapshot folder).")
    ] = None,
    size: Annotated[int, typer.Option(help="View size in px (224 for ImageNet-like data).")] = 32,
    views: Annotated[int, typer.Option(help="Cached views V per train image.")] = 8,
    student_arch: Annotated[str, typer.Option(help="Student backbone.")] = "resnet10",
    student_width: Annotated[
        int | None, typer.Option(help="Student ResNet base width (0: architecture default).")
    ] = 16,
    epochs: Annotated[int, typer.Option(help="Student epochs.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the view plan and the students.")] = 0,
    workers: Annotated[int, typer.Option(help="DataLoader workers.")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run the whole pipeline on real data: precompute → verify → students → FAISS evaluation.

    With --study, also measure the DisCo claim and the cache's claim over seeds (study.md).
    """
    # lazy: torch loads only when a command runs, so --help stays instant
    from student_trainer.demo.pipeline import DemoConfig, run_demo, train_demo_teacher

    if train_teacher:
        path = train_demo_teacher(epochs=teacher_epochs, progress=progress)
        typer.echo(f"demo teacher written to {path}")
        return
    cfg = DemoConfig(
        out=out,
        dataset=dataset,
        teacher=teacher,
        teacher_weights=teacher_weights,
        size=size,
        views=views,
        student_arch=student_arch,
        student_width=student_width or None,
        epochs=epochs,
        seed=seed,
        workers=workers,
        device=device,
        quick=quick,
        progress=progress,
    )
    if study:
        # lazy: torch loads only when a command runs, so --help stays instant
        from student_trainer.demo.study import StudyConfig, run_study

        arms: dict[str, Any] = {"seeds": seeds, "ablation_seeds": ablation_seeds}
        if study_views:
            arms["views"] = tuple(study_views)
        if study_heads:
            arms["head_hidden"] = tuple(study_heads)
        if study_lambdas:
            arms["lambdas"] = tuple(study_lambdas)
        run_study(cfg, StudyConfig(**arms))
    else:
        run_demo(cfg)
