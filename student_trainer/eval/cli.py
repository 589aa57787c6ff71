"""``disco eval``: kNN / retrieval evaluation of checkpoints, written as markdown + JSON + PNGs.

The options are derived from :class:`~student_trainer.eval.config.EvalConfig` (plus the shared
object-storage options). Torch, FAISS and the models are imported when the command runs, not
for ``--help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from store.cli_options import (
    apply_remote_options,
    dataclass_options,
    exits_on_error,
    remote_options,
    with_options,
)
from store.datasets import DATASET_HELP
from store.eval_data import open_bank_queries
from student_trainer.eval.config import EvalConfig

__all__ = ["eval_command"]

_OPTIONS = dataclass_options(
    EvalConfig,
    decls={"k": ("--k",)},
    helps={"dataset": f"{DATASET_HELP} Its train split is the bank, its test split the queries."},
)
"""Every ``EvalConfig`` field as an option: name, type, default and help come from the field."""


@with_options(_OPTIONS, remote_options(writes=False))
@exits_on_error
def eval_command(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(help="Checkpoints to evaluate (disco, MoCo-v2 or torchvision files)."),
    ] = None,
    **config: Any,
) -> None:
    """Evaluate checkpoints by kNN retrieval (default: train split = bank, test split = queries;
    or --bank/--queries, each with its split)."""
    apply_remote_options(config)
    cfg = EvalConfig(**config)
    # lazy: torch loads only when a command runs, so --help stays instant
    from student_trainer.eval.evaluate import evaluate
    from student_trainer.eval.features import TeacherFeatures
    from student_trainer.eval.linear_probe import ProbeConfig
    from student_trainer.eval.report import DEFAULT_ROLES, render_markdown

    data: Any = cfg.dataset
    if cfg.bank is not None or cfg.queries is not None or cfg.bank_split or cfg.queries_split:
        bank_spec = cfg.bank or cfg.dataset
        data = open_bank_queries(
            bank_spec, cfg.queries or bank_spec, cfg.bank_split, cfg.queries_split
        )
        if data.unmatched_classes:
            missing = ", ".join(data.unmatched_classes[:5])
            typer.echo(
                f"note: {len(data.unmatched_classes)} query classes are not in the bank "
                f"({missing}...); their queries count as wrong",
                err=True,
            )
    teacher_model: Any = cfg.teacher
    if cfg.teacher is not None and (cfg.teacher_weights or cfg.teacher_pooling):
        teacher_model = TeacherFeatures(
            cfg.teacher, cfg.teacher_weights, cfg.teacher_pooling, size=cfg.size, device=cfg.device
        )
    records = evaluate(
        list(checkpoints or []),
        data,
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
    title = f"Retrieval evaluation on {data if isinstance(data, str) else data.spec}"
    roles = getattr(data, "roles", DEFAULT_ROLES)
    typer.echo(render_markdown(records, title=title, roles=roles))
    typer.echo(f"wrote {cfg.out / 'results.md'} and {cfg.out / 'results.json'}")
