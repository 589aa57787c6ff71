"""``disco eval``: kNN / retrieval evaluation of checkpoints, written as markdown + JSON + PNGs.

Torch, FAISS and the models are imported when the command runs, not for ``--help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from store.cli_options import apply_remote_options, exits_on_error, remote_options, with_options
from store.datasets import DATASET_HELP
from store.eval_data import open_bank_queries


@with_options(remote_options(writes=False))
@exits_on_error
def eval_command(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(help="Checkpoints to evaluate (disco, MoCo-v2 or torchvision files)."),
    ] = None,
    dataset: Annotated[
        str,
        typer.Option(
            help=f"{DATASET_HELP} Its train split is the bank, its test split the queries."
        ),
    ] = "mnist5k",
    bank: Annotated[
        str | None,
        typer.Option(help="Bank dataset spec (default: --dataset), e.g. imagefolder:/data/train."),
    ] = None,
    queries: Annotated[
        str | None,
        typer.Option(
            help="Query dataset spec (default: the bank), e.g. "
            "imagefolder:/data/val?labels=/data/val_labels.csv. Labels line up by class name."
        ),
    ] = None,
    bank_split: Annotated[
        str | None,
        typer.Option(
            help="Bank split: all, train, test (default: train of a shared dataset, else all)."
        ),
    ] = None,
    queries_split: Annotated[
        str | None,
        typer.Option(
            help="Query split: all, train, test (default: test of a shared dataset, else all)."
        ),
    ] = None,
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
    **config: Any,
) -> None:
    """Evaluate checkpoints by kNN retrieval: queries against a bank (by default the train and test
    splits of --dataset; --bank/--queries name two datasets, e.g. ImageNet train and val)."""
    # lazy: torch loads only when a command runs, so --help stays instant
    from student_trainer.eval.evaluate import evaluate
    from student_trainer.eval.linear_probe import ProbeConfig
    from student_trainer.eval.report import DEFAULT_ROLES, render_markdown

    apply_remote_options(config)
    data: Any = dataset
    if bank is not None or queries is not None or bank_split or queries_split:
        bank_spec = bank or dataset
        data = open_bank_queries(bank_spec, queries or bank_spec, bank_split, queries_split)
        if data.unmatched_classes:
            missing = ", ".join(data.unmatched_classes[:5])
            typer.echo(
                f"note: {len(data.unmatched_classes)} query classes are not in the bank "
                f"({missing}...); their queries count as wrong",
                err=True,
            )
    teacher_model: Any = teacher
    if teacher is not None and (teacher_weights or teacher_pooling):
        # lazy: torch loads only when a command runs, so --help stays instant
        from student_trainer.eval.features import TeacherFeatures

        teacher_model = TeacherFeatures(
            teacher, teacher_weights, teacher_pooling, size=size, device=device
        )
    records = evaluate(
        list(checkpoints or []),
        data,
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
    title = f"Retrieval evaluation on {data if isinstance(data, str) else data.spec}"
    roles = getattr(data, "roles", DEFAULT_ROLES)
    typer.echo(render_markdown(records, title=title, roles=roles))
    typer.echo(f"wrote {out / 'results.md'} and {out / 'results.json'}")
