"""``disco eval``: kNN / retrieval evaluation of checkpoints, written as markdown + JSON + PNGs.

Torch, FAISS and the models are imported when the command runs, not for ``--help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from store.errors import DiscoError


def eval_command(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(help="Checkpoints to evaluate (disco, MoCo-v2 or torchvision files)."),
    ] = None,
    dataset: Annotated[
        str,
        typer.Option(help="Dataset spec: mnist5k, digits, synthetic[:N], imagefolder:PATH."),
    ] = "mnist5k",
    teacher: Annotated[
        str | None,
        typer.Option(
            help="Teacher (checkpoint, timm:, hf:, open_clip:, py:): adds its row and the "
            "neighbour agreement column."
        ),
    ] = None,
    teacher_weights: Annotated[
        str | None, typer.Option(help="Teacher weights (.safetensors, .pth, snapshot folder).")
    ] = None,
    teacher_pooling: Annotated[
        str | None, typer.Option(help="ViT teacher pooling: cls, mean, cls+mean.")
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Directory for results.md, results.json, neighbour PNGs.")
    ] = Path("eval_out"),
    k: Annotated[int, typer.Option("--k", help="Neighbours for the kNN votes.")] = 20,
    temperature: Annotated[
        float, typer.Option(help="Weighted-kNN vote temperature: weight exp(sim / T).")
    ] = 0.07,
    size: Annotated[
        int | None,
        typer.Option(help="Input size in pixels (default: each checkpoint's own size)."),
    ] = None,
    pixels: Annotated[
        bool | None,
        typer.Option(
            "--pixels/--no-pixels",
            help="Raw-pixel baseline rows (default: on for mnist5k, digits, synthetic).",
        ),
    ] = None,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Run the linear probe.")] = True,
    probe_epochs: Annotated[int, typer.Option(help="Linear-probe epochs.")] = 30,
    backend: Annotated[
        str,
        typer.Option(
            help="kNN backend: auto (fastest exact), faiss, torch, brute; faiss-ivf (approximate)."
        ),
    ] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Feature cache (default $DISCO_FEATURE_CACHE or ~/.cache/disco)."),
    ] = None,
    figures: Annotated[
        bool, typer.Option("--figures/--no-figures", help="Write neighbour PNGs.")
    ] = True,
) -> None:
    """Evaluate checkpoints by kNN retrieval (train split = bank, test split = queries)."""
    # lazy: torch loads only when a command runs, so --help stays instant
    from student_trainer.eval.evaluate import evaluate
    from student_trainer.eval.linear_probe import ProbeConfig
    from student_trainer.eval.report import render_markdown

    try:
        teacher_model: Any = teacher
        if teacher is not None and (teacher_weights or teacher_pooling):
            # lazy: torch loads only when a command runs, so --help stays instant
            from student_trainer.eval.features import TeacherFeatures

            teacher_model = TeacherFeatures(
                teacher, teacher_weights, teacher_pooling, size=size, device=device
            )
        records = evaluate(
            list(checkpoints or []),
            dataset,
            teacher=teacher_model,
            k=k,
            temperature=temperature,
            size=size,
            pixels=pixels,
            probe=ProbeConfig(epochs=probe_epochs) if probe else None,
            backend=backend,
            device=device,
            cache_dir=cache_dir,
            batch_size=batch_size,
            out=out,
            figures=figures,
        )
    except DiscoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(render_markdown(records, title=f"Retrieval evaluation on {dataset}"))
    typer.echo(f"wrote {out / 'results.md'} and {out / 'results.json'}")
