"""``disco train``: options -> :class:`TrainConfig` -> :func:`train` -> one summary line.

The options are derived from ``TrainConfig``'s fields (``store.cli_options``): each flag's type,
default and help are its field's, so the two cannot disagree.

A ``DiscoError`` (bad option, mismatched store, non-finite loss) exits 1 with one line on stderr.
Under ``torchrun --nproc-per-node K disco train ...`` every rank runs this command (DDP).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer

from store.cli_options import (
    apply_remote_options,
    dataclass_options,
    exits_on_error,
    remote_options,
    with_options,
)
from store.errors import ConfigError
from student_trainer.train.config import TrainConfig
from student_trainer.train.methods import METHODS

__all__ = ["parse_expect", "train_command"]


def parse_expect(items: list[str]) -> dict[str, Any]:
    """``["teacher.sha256=ab12", "recipe.views=8"]`` -> dict; values parsed as JSON if possible."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--expect takes FIELD=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


_OPTIONS = dataclass_options(
    TrainConfig,
    exclude=("expect",),  # given as --expect FIELD=VALUE and the --expect-* shortcuts below
    decls={"num_workers": ("--workers",), "distill_weight": ("--lambda", "--distill-weight")},
    helps={"method": f"Training method: {', '.join(METHODS)} (student_trainer.train.methods)."},
)
"""Every ``TrainConfig`` field as an option: name, type, default and help come from the field."""


@with_options(_OPTIONS, remote_options(writes=False))
@exits_on_error
def train_command(
    expect_teacher: Annotated[
        str | None, typer.Option(help="Refuse a store whose teacher is not this checkpoint.")
    ] = None,
    expect_recipe: Annotated[
        str | None, typer.Option(help="Refuse a store made with another view recipe.")
    ] = None,
    expect_views: Annotated[
        int | None, typer.Option(help="Refuse a store with another number of views V.")
    ] = None,
    expect_dataset: Annotated[
        str | None, typer.Option(help="Refuse a store of another dataset spec.")
    ] = None,
    expect: Annotated[
        list[str] | None, typer.Option(help="Other store attrs that must match: FIELD=VALUE.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    **config: Any,
) -> None:
    """Train a student with mocov2, disco or seed (from a store, a dataset or an online teacher)."""
    apply_remote_options(config)
    expected = parse_expect(expect or [])
    if expect_teacher is not None:
        # lazy: torch loads only when a command runs, so --help stays instant
        from teacher_service.checkpoint import file_sha256

        expected["teacher.sha256"] = file_sha256(expect_teacher)
    if expect_recipe is not None:
        expected["recipe.name"] = expect_recipe
    if expect_views is not None:
        expected["recipe.views"] = expect_views
    if expect_dataset is not None:
        expected["dataset.spec"] = expect_dataset
    cfg = TrainConfig(**config, expect=expected)
    from student_trainer.train.loop import train  # torch: only once a run starts

    result = train(cfg)
    if json_out:
        typer.echo(json.dumps(asdict(result)))
    else:
        typer.echo(
            f"trained {cfg.method} {cfg.arch}: {result.steps} steps in {result.seconds:.1f} s "
            f"({result.samples_per_second:.0f} samples/s), "
            f"loss {result.first_terms.get('loss', 0):.3f} -> "
            f"{result.last_terms.get('loss', 0):.3f}; "
            f"deployed params "
            f"{result.deployed_parameters}; wrote {result.final_path} and {result.deployed_path}"
        )
        if result.knn:
            best = max(result.knn, key=lambda r: r["knn_weighted"])
            typer.echo(
                f"kNN monitor (weighted 20-NN): last {100 * result.knn[-1]['knn_weighted']:.1f} "
                f"at epoch {result.knn[-1]['epoch']}, best {100 * best['knn_weighted']:.1f} "
                f"at epoch {best['epoch']}"
                + (f"; wrote {result.best_path}" if result.best_path else "")
            )
