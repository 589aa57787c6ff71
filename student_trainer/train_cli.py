"""``disco train``: options -> :class:`TrainConfig` -> :func:`train` -> one summary line.

A ``DiscoError`` (bad option, mismatched store, non-finite loss) exits 1 with one line on stderr.
Under ``torchrun --nproc-per-node K disco train ...`` every rank runs this command (DDP).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer

from store.errors import ConfigError, DiscoError
from student_trainer.config import METHODS, TrainConfig

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


def train_command(
    method: Annotated[str, typer.Option(help=f"Method: {', '.join(sorted(METHODS))}.")],
    arch: Annotated[str, typer.Option(help="Student backbone (tiny, resnet10/18/34, ...).")],
    out: Annotated[str, typer.Option(help="Output folder (final.pt, deployed.pt, log, ...).")],
    store: Annotated[str | None, typer.Option(help="Teacher-target store path/URL.")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset spec, to train without a store (mocov2/online).")
    ] = None,
    split: Annotated[str, typer.Option(help="Split with --dataset: all, train, test.")] = "train",
    recipe: Annotated[
        str | None, typer.Option(help="View recipe with --dataset (default: digits for digits).")
    ] = None,
    size: Annotated[int, typer.Option(help="View size in px with --dataset.")] = 32,
    online_teacher: Annotated[
        str | None, typer.Option(help="Teacher checkpoint computing targets live (no cache).")
    ] = None,
    views: Annotated[
        int | None,
        typer.Option(help="Use only the first N views of each store row (default: all)."),
    ] = None,
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
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 15,
    batch_size: Annotated[int, typer.Option(help="Global batch size.")] = 128,
    lr: Annotated[float | None, typer.Option(help="Peak lr (default 0.03 x batch/256).")] = None,
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay.")] = 1e-4,
    warmup_epochs: Annotated[float, typer.Option(help="Linear warm-up epochs.")] = 1.0,
    key_momentum: Annotated[float, typer.Option(help="Key-encoder EMA momentum m.")] = 0.999,
    temperature: Annotated[float, typer.Option(help="InfoNCE / SEED student temperature.")] = 0.2,
    queue_size: Annotated[int, typer.Option(help="Queue length (capped at N - batch).")] = 65536,
    prefill_queue: Annotated[
        bool, typer.Option(help="Fill the queue with real keys before step 1.")
    ] = True,
    head_hidden: Annotated[int, typer.Option(help="Student MLP hidden width.")] = 2048,
    head_out: Annotated[
        int | None, typer.Option(help="Embedding dim (default: the teacher's, else 128).")
    ] = None,
    head_bn: Annotated[bool, typer.Option(help="BatchNorm in the head's hidden layer.")] = True,
    bn_groups: Annotated[int, typer.Option(help="Head-BN groups (0: per-rank batch // 32).")] = 0,
    shuffle_keys: Annotated[bool, typer.Option(help="Shuffle the key batch (shuffle-BN).")] = True,
    small_stem: Annotated[
        bool | None, typer.Option(help="3x3 stride-1 stem (default: on for <= 64 px views).")
    ] = None,
    width: Annotated[int | None, typer.Option(help="ResNet base width.")] = None,
    distill_weight: Annotated[
        float, typer.Option("--lambda", "--distill-weight", help="DisCo λ (batch-mean, per view).")
    ] = 8.0,
    seed_teacher_temperature: Annotated[float, typer.Option(help="SEED teacher τ_t.")] = 1e-4,
    symmetric: Annotated[
        bool, typer.Option(help="Both views as query and key each step (mean of both InfoNCEs).")
    ] = False,
    knn_every: Annotated[
        int, typer.Option(help="kNN monitor every N epochs (weighted 20-NN, as disco eval); 0 off.")
    ] = 0,
    keep_best: Annotated[
        bool, typer.Option(help="Write best.pt at each new best kNN monitor figure.")
    ] = False,
    monitor_dataset: Annotated[
        str | None, typer.Option(help="Dataset the monitor evaluates on (default: training's).")
    ] = None,
    monitor_split: Annotated[
        str, typer.Option(help="Monitor queries: test, or val (last 20% of train; bank the rest).")
    ] = "test",
    monitor_max_queries: Annotated[
        int | None, typer.Option(help="Monitor at most this many queries (evenly spaced).")
    ] = None,
    monitor_max_bank: Annotated[
        int | None, typer.Option(help="Monitor bank of at most N images (evenly spaced).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[
        int | None,
        typer.Option(help="DataLoader render workers (default: 2 on CPU, cores per GPU - 1)."),
    ] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 200,
    resume: Annotated[bool, typer.Option(help="Resume from OUT/ckpt/last.pt if present.")] = False,
    stop_at_step: Annotated[
        int | None, typer.Option(help="Stop after this many steps (schedule unchanged).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads (default: torch's choice).")
    ] = None,
    amp: Annotated[bool, typer.Option(help="bfloat16 autocast on CUDA.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a student with mocov2, disco or seed (from a store, a dataset or an online teacher)."""
    from student_trainer.train import train

    try:
        expected = parse_expect(expect or [])
        if expect_teacher is not None:
            from teacher_service.checkpoint import file_sha256

            expected["teacher.sha256"] = file_sha256(expect_teacher)
        if expect_recipe is not None:
            expected["recipe.name"] = expect_recipe
        if expect_views is not None:
            expected["recipe.views"] = expect_views
        if expect_dataset is not None:
            expected["dataset.spec"] = expect_dataset
        cfg = TrainConfig(
            method=method,
            arch=arch,
            out=out,
            store=store,
            dataset=dataset,
            split=split,
            recipe=recipe,
            size=size,
            online_teacher=online_teacher,
            views=views,
            expect=expected,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            key_momentum=key_momentum,
            temperature=temperature,
            queue_size=queue_size,
            prefill_queue=prefill_queue,
            head_hidden=head_hidden,
            head_out=head_out,
            head_bn=head_bn,
            bn_groups=bn_groups,
            shuffle_keys=shuffle_keys,
            small_stem=small_stem,
            width=width,
            distill_weight=distill_weight,
            seed_teacher_temperature=seed_teacher_temperature,
            symmetric=symmetric,
            knn_every=knn_every,
            keep_best=keep_best,
            monitor_dataset=monitor_dataset,
            monitor_split=monitor_split,
            monitor_max_queries=monitor_max_queries,
            monitor_max_bank=monitor_max_bank,
            seed=seed,
            num_workers=workers,
            checkpoint_every=checkpoint_every,
            resume=resume,
            stop_at_step=stop_at_step,
            device=device,
            threads=threads,
            amp=amp,
            progress=progress,
        )
        result = train(cfg)
    except DiscoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if json_out:
        typer.echo(json.dumps(asdict(result)))
    else:
        typer.echo(
            f"trained {method} {arch}: {result.steps} steps in {result.seconds:.1f} s "
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
