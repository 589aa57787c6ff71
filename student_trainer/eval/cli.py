"""``disco eval``: kNN / retrieval evaluation of checkpoints, written as markdown + JSON + PNGs.

The options are derived from :class:`~student_trainer.eval.config.EvalConfig`. Torch, FAISS and
the models are imported when the command runs, not for ``--help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from store.cli_options import dataclass_options, exits_on_error, with_options
from student_trainer.eval.config import EvalConfig

__all__ = ["eval_command"]

_OPTIONS = dataclass_options(EvalConfig, decls={"k": ("--k",)})
"""Every ``EvalConfig`` field as an option: name, type, default and help come from the field."""


@with_options(_OPTIONS)
@exits_on_error
def eval_command(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(help="Checkpoints to evaluate (disco, MoCo-v2 or torchvision files)."),
    ] = None,
    **config: Any,
) -> None:
    """Evaluate checkpoints by kNN retrieval (train split = bank, test split = queries)."""
    cfg = EvalConfig(**config)
    # lazy: torch loads only when a command runs, so --help stays instant
    from student_trainer.eval.evaluate import evaluate
    from student_trainer.eval.features import TeacherFeatures
    from student_trainer.eval.linear_probe import ProbeConfig
    from student_trainer.eval.report import render_markdown

    teacher_model: Any = cfg.teacher
    if cfg.teacher is not None and (cfg.teacher_weights or cfg.teacher_pooling):
        teacher_model = TeacherFeatures(
            cfg.teacher, cfg.teacher_weights, cfg.teacher_pooling, size=cfg.size, device=cfg.device
        )
    records = evaluate(
        list(checkpoints or []),
        cfg.dataset,
        teacher=teacher_model,
        k=cfg.k,
        temperature=cfg.temperature,
        size=cfg.size,
        pixels=cfg.pixels,
        probe=ProbeConfig(epochs=cfg.probe_epochs) if cfg.probe else None,
        backend=cfg.backend,
        device=cfg.device,
        cache_dir=cfg.cache_dir,
        batch_size=cfg.batch_size,
        out=cfg.out,
        figures=cfg.figures,
    )
    typer.echo(render_markdown(records, title=f"Retrieval evaluation on {cfg.dataset}"))
    typer.echo(f"wrote {cfg.out / 'results.md'} and {cfg.out / 'results.json'}")
