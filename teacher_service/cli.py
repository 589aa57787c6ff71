"""Commands of the teacher side: ``disco precompute`` and ``disco store verify``.

Thin wrappers: options -> config -> library call -> one summary line. The options are derived from
the configs' fields (:class:`teacher_service.config.PrecomputeConfig`, :class:`VerifyConfig`), so a
flag's default and help are its field's. A ``DiscoError`` exits 1 with one line on stderr, no
traceback. Torch is imported only when a command runs. (``disco serve`` lives in ``serve_cli``.)
"""

from __future__ import annotations

import dataclasses
import json
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
from store.errors import ConfigError
from teacher_service.config import PrecomputeConfig, VerifyConfig

__all__ = ["estimate_command", "precompute_command", "verify_command"]

TEACHER_HELP = (
    "Teacher: timm:NAME, hf:PATH_OR_ID, open_clip:ARCH, py:MODULE:FUNCTION or a checkpoint."
)
WEIGHTS_HELP = "Teacher weights: .safetensors, .pth/.bin state dict or a snapshot folder."
POOLING_HELP = "ViT teachers: cls, mean or cls+mean instead of the model's own pooling."


@with_options(dataclass_options(PrecomputeConfig, decls={"target": ["--as"]}), remote_options())
@exits_on_error
def precompute_command(
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    **config: Any,
) -> None:
    """Compute the teacher's final embedding of every planned view into a store (resumable)."""
    apply_remote_options(config)
    cfg = PrecomputeConfig(**config)
    # lazy: torch loads only when a command runs, so --help stays instant
    from teacher_service.precompute import run_precompute

    report = run_precompute(cfg)
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
        return
    typer.echo(
        f"worker {report.worker}/{report.workers}: computed {report.shards_computed} shards "
        f"({report.views_computed} views, {report.images_per_s:.1f} img/s on {report.device}, "
        f"{report.renderer} renderer, "
        f"{report.compute_dtype}); {report.shards_skipped} shards already written, "
        f"{report.slots_kept} written slots kept in the others; "
        f"{report.invalid_rows + len(report.errors)} undecodable samples skipped"
    )
    for key, reason in list(report.errors.items())[:10]:
        typer.echo(f"  skipped {key}: {reason}")


@with_options(dataclass_options(VerifyConfig), remote_options())
@exits_on_error
def verify_command(
    store: Annotated[str, typer.Argument(help="Store path or URL.")],
    teacher: Annotated[
        str, typer.Option(help="The store's teacher (same spelling as for precompute).")
    ],
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    **config: Any,
) -> None:
    """Re-render sampled views, run the live teacher, compare with the cache; exit 1 on failure."""
    apply_remote_options(config)
    opts = VerifyConfig(**config)
    # lazy: torch loads only when a command runs, so --help stays instant
    from teacher_service.verify import verify_store

    result = verify_store(store, teacher, **dataclasses.asdict(opts))
    typer.echo(json.dumps(result.to_dict()) if json_out else result.summary())
    if not result.passed:
        raise typer.Exit(1)


@exits_on_error
def estimate_command(
    dataset: Annotated[str, typer.Option(help=DATASET_HELP)],
    views: Annotated[int, typer.Option(help="Planned views V per sample.")] = 8,
    split: Annotated[str, typer.Option(help="Dataset split: all, train or test.")] = "all",
    dim: Annotated[
        int | None, typer.Option(help="Embedding width D (default: ask the teacher).")
    ] = None,
    teacher: Annotated[str | None, typer.Option(help=TEACHER_HELP)] = None,
    teacher_weights: Annotated[str | None, typer.Option(help=WEIGHTS_HELP)] = None,
    teacher_pooling: Annotated[str | None, typer.Option(help=POOLING_HELP)] = None,
    dtype: Annotated[str, typer.Option(help="Stored embedding dtype: float16, int8.")] = "float16",
    features: Annotated[bool, typer.Option(help="Also store backbone features.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON.")] = False,
) -> None:
    """Print a store's size (images x V x D x 2 bytes) before anything is computed."""
    # lazy: torch loads only when a command runs, so --help stays instant
    from store.datasets import open_dataset
    from teacher_service.estimate import estimate_store

    n = len(open_dataset(dataset).split_indices(split))
    feature_dim = None
    if dim is None or features:
        if teacher is None:
            raise ConfigError(
                "give --dim D, or --teacher to read D (and F with --features) from the model"
            )
        # lazy: torch loads only when a command runs, so --help stays instant
        from teacher_service.sources import load_teacher

        loaded = load_teacher(teacher, teacher_weights, teacher_pooling)
        dim = dim or loaded.model.embed_dim
        feature_dim = loaded.model.feature_dim if features else None
    est = estimate_store(n, views, dim, dtype=dtype, feature_dim=feature_dim)
    typer.echo(json.dumps(est.to_dict()) if json_out else est.summary())
