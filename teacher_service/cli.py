"""Commands of the teacher side: ``disco precompute`` and ``disco store verify``.

Thin wrappers: options -> config -> library call -> one summary line. A ``DiscoError`` exits 1
with one line on stderr, no traceback. (``disco serve`` lives in ``teacher_service.service``.)
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from store.errors import ConfigError, DiscoError
from teacher_service.precompute import PrecomputeConfig, run_precompute
from teacher_service.verify import verify_store

__all__ = [
    "POOLING_HELP",
    "TEACHER_HELP",
    "WEIGHTS_HELP",
    "estimate_command",
    "precompute_command",
    "verify_command",
]

TEACHER_HELP = (
    "Teacher: timm:NAME, hf:PATH_OR_ID, open_clip:ARCH, py:MODULE:FUNCTION or a checkpoint."
)
WEIGHTS_HELP = "Teacher weights: .safetensors, .pth/.bin state dict or a snapshot folder."
POOLING_HELP = "ViT teachers: cls, mean or cls+mean instead of the model's own pooling."


def precompute_command(
    teacher: Annotated[str, typer.Option(help=TEACHER_HELP)],
    dataset: Annotated[str, typer.Option(help="Dataset spec: mnist5k, synthetic:N, imagefolder:P")],
    store: Annotated[str, typer.Option(help="Store path or fsspec URL (created if missing).")],
    views: Annotated[int, typer.Option(help="Planned views V per sample.")] = 8,
    split: Annotated[str, typer.Option(help="Dataset split: all, train or test.")] = "all",
    recipe: Annotated[str, typer.Option(help="View recipe: mocov2, digits.")] = "mocov2",
    size: Annotated[
        int | None, typer.Option(help="View size in px (default: teacher's, else 224).")
    ] = None,
    seed: Annotated[int, typer.Option(help="View-plan seed.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Views per teacher forward.")] = 256,
    workers: Annotated[
        int | None,
        typer.Option(help="DataLoader worker processes (default: 2 on CPU, cores per GPU - 1)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[str, typer.Option(help="Autocast on CUDA: none, bf16, fp16.")] = "none",
    dtype: Annotated[str, typer.Option(help="Stored embedding dtype: float16, int8.")] = "float16",
    shard_size: Annotated[int, typer.Option(help="Rows per zarr shard (new stores).")] = 4096,
    features: Annotated[bool, typer.Option(help="Also store backbone features.")] = False,
    num_shards: Annotated[int, typer.Option(help="Job-array size splitting the shards.")] = 1,
    shard_index: Annotated[int, typer.Option(help="This job's index in the job array.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
    max_shards: Annotated[
        int | None, typer.Option(help="Compute at most this many shards in this run.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    teacher_weights: Annotated[str | None, typer.Option(help=WEIGHTS_HELP)] = None,
    teacher_pooling: Annotated[str | None, typer.Option(help=POOLING_HELP)] = None,
) -> None:
    """Compute the teacher's final embedding of every planned view into a store (resumable)."""
    try:
        cfg = PrecomputeConfig(
            teacher=teacher,
            dataset=dataset,
            store=store,
            views=views,
            split=split,
            recipe=recipe,
            size=size,
            seed=seed,
            batch_size=batch_size,
            workers=workers,
            device=device,
            amp=amp,
            dtype=dtype,
            shard_size=shard_size,
            features=features,
            num_shards=num_shards,
            shard_index=shard_index,
            overwrite=overwrite,
            max_shards=max_shards,
            progress=progress,
            teacher_weights=teacher_weights,
            teacher_pooling=teacher_pooling,
        )
        report = run_precompute(cfg)
    except DiscoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
        return
    typer.echo(
        f"worker {report.worker}/{report.workers}: computed {report.shards_computed} shards "
        f"({report.views_computed} views, {report.images_per_s:.1f} img/s on {report.device}, "
        f"{report.compute_dtype}); {report.shards_skipped} already written; "
        f"{report.invalid_rows + len(report.errors)} undecodable samples skipped"
    )
    for key, reason in list(report.errors.items())[:10]:
        typer.echo(f"  skipped {key}: {reason}")


def verify_command(
    store: Annotated[str, typer.Argument(help="Store path or URL.")],
    teacher: Annotated[
        str, typer.Option(help="The store's teacher (same spelling as precompute).")
    ],
    samples: Annotated[int, typer.Option(help="Stored views to re-render and check.")] = 64,
    threshold: Annotated[float, typer.Option(help="Minimum cosine (cached vs live).")] = 0.999,
    seed: Annotated[int, typer.Option(help="Seed choosing the sampled views.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    teacher_weights: Annotated[str | None, typer.Option(help=WEIGHTS_HELP)] = None,
    teacher_pooling: Annotated[
        str | None, typer.Option(help="ViT pooling (default: the one the store recorded).")
    ] = None,
) -> None:
    """Re-render sampled views, run the live teacher, compare with the cache; exit 1 on failure."""
    try:
        result = verify_store(
            store,
            teacher,
            samples=samples,
            threshold=threshold,
            seed=seed,
            device=device,
            teacher_weights=teacher_weights,
            teacher_pooling=teacher_pooling,
        )
    except DiscoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result.to_dict()) if json_out else result.summary())
    if not result.passed:
        raise typer.Exit(1)


def estimate_command(
    dataset: Annotated[str, typer.Option(help="Dataset spec: mnist5k, digits, imagefolder:P.")],
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
    from store.datasets import open_dataset
    from teacher_service.estimate import estimate_store

    try:
        n = len(open_dataset(dataset).split_indices(split))
        feature_dim = None
        if dim is None or features:
            if teacher is None:
                raise ConfigError(
                    "give --dim D, or --teacher to read D (and F with --features) from the model"
                )
            from teacher_service.sources import load_teacher

            loaded = load_teacher(teacher, teacher_weights, teacher_pooling)
            dim = dim or loaded.model.embed_dim
            feature_dim = loaded.model.feature_dim if features else None
        est = estimate_store(n, views, dim, dtype=dtype, feature_dim=feature_dim)
    except DiscoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(est.to_dict()) if json_out else est.summary())
