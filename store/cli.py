"""``disco store`` commands: create (manifest + view plan), append, compact, info, check. Thin
wrappers.

The store's modules (zarr, torch via the renderer) are imported inside the commands, so
``disco store --help`` stays instant.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from store.cli_options import apply_remote_options, exits_on_error, remote_options, with_options
from store.datasets import DATASET_HELP

app = typer.Typer(help="Create and inspect DisCo embedding stores.", no_args_is_help=True)
console = Console()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


@app.command()
@with_options(remote_options())
@exits_on_error
def create(
    path: Annotated[str, typer.Argument(help="Store location: a path or an fsspec URL.")],
    dataset: Annotated[str, typer.Option(help=DATASET_HELP)] = "mnist5k",
    split: Annotated[str, typer.Option(help="Split: all, train or test.")] = "train",
    recipe: Annotated[
        str, typer.Option(help="View recipe (mocov2, digits, ...; store.views.RECIPES).")
    ] = "mocov2",
    size: Annotated[int, typer.Option(help="Output view size in pixels.")] = 32,
    interpolation: Annotated[
        str,
        typer.Option(
            help="Crop resize kernel: bilinear, bicubic, nearest (store.views.INTERPOLATIONS)."
        ),
    ] = "bilinear",
    views: Annotated[int, typer.Option(help="Views per sample (V).")] = 8,
    seed: Annotated[int, typer.Option(help="Plan seed of the view parameters.")] = 0,
    shard_size: Annotated[int, typer.Option(help="Rows per shard file.")] = 4096,
    chunk_size: Annotated[
        int | None, typer.Option(help="Rows per inner chunk (divides shard size).")
    ] = None,
    codec: Annotated[
        str, typer.Option(help="Embedding codec: none, zstd or blosc-bitshuffle.")
    ] = "none",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Processes reading image headers and hashing files (default: all cores)."
        ),
    ] = None,
    **config: Any,
) -> None:
    """Build the manifest and view plan of a dataset into a new store (no teacher needed)."""
    # lazy: zarr and numpy load only when a command runs, so --help stays instant
    from store.datasets import open_dataset
    from store.embedding_store import EmbeddingStore
    from store.manifest import build_manifest
    from store.views import get_recipe

    apply_remote_options(config)
    t0 = time.perf_counter()
    rec = get_recipe(
        recipe, size, interpolation
    )  # validate cheap options before decoding the dataset
    ds = open_dataset(dataset)
    manifest = build_manifest(ds, split, progress=True, workers=workers)
    store = EmbeddingStore.create(
        path,
        manifest=manifest,
        recipe=rec,
        seed=seed,
        views=views,
        shard_size=shard_size,
        chunk_size=chunk_size,
        codec=codec,
        overwrite=overwrite,
        progress=True,
    )
    console.print(
        f"created {path}: N={store.n} V={store.views} P={store.num_params} "
        f"shards={store.num_shards} manifest={manifest.hash[:12]} "
        f"({manifest.num_invalid} undecodable) in {time.perf_counter() - t0:.1f}s",
        highlight=False,
        soft_wrap=True,
    )
    for key, reason in list(manifest.errors.items())[:20]:
        console.print(f"  undecodable {key}: {reason}", highlight=False, soft_wrap=True)


@app.command()
@with_options(remote_options())
@exits_on_error
def append(
    path: Annotated[str, typer.Argument(help="Store location: a path or an fsspec URL.")],
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset spec that grew (default: the store's), e.g. imagefolder:PATH."),
    ] = None,
    lock_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for running writers before giving up.")
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(help="Processes hashing and probing the files (default: all cores)."),
    ] = None,
    **config: Any,
) -> None:
    """Add the dataset's new samples as new rows (planned, unwritten); old rows stay as they are.

    Refuses (naming the key, nothing written) a sample whose content changed or that is gone.
    Then `disco precompute` fills only the new rows.
    """
    # lazy: zarr and numpy load only when a command runs, so --help stays instant
    from store.append import append_rows

    apply_remote_options(config)
    report = append_rows(
        path, dataset, progress=not as_json, lock_timeout=lock_timeout, workers=workers
    )
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
        return
    if report.added == 0:
        console.print(
            f"{path}: nothing to append, every sample of {report.dataset} is in the store "
            f"(N={report.n_after})",
            highlight=False,
            soft_wrap=True,
        )
        return
    console.print(
        f"appended {report.added} rows to {path}: N {report.n_before} -> {report.n_after} "
        f"({report.undecodable} undecodable, {report.relabelled} relabelled, {report.moved} "
        f"re-indexed) in {report.seconds:.1f}s; fill them with `disco precompute --dataset "
        f"{report.dataset} --store {path} ...`",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@exits_on_error
def compact(
    path: Annotated[str, typer.Argument(help="Store location (a local path).")],
    target: Annotated[
        str | None,
        typer.Option(help="Teacher of a store of several (default: every teacher)."),
    ] = None,
) -> None:
    """Merge the slot logs (single-slot writes of the service and lazy fill) into the shard files.

    Readers see the same slots before and after; plain zarr readers (tensorstore) see the logged
    slots only after it. Safe while writers run (each shard under its lock).
    """
    # lazy: zarr and numpy load only when a command runs, so --help stays instant
    from store.embedding_store import EmbeddingStore

    store = EmbeddingStore.open(path, mode="r+")
    names = [target] if target is not None else store.teachers
    merged = sum(store.for_target(name).compact() for name in names)
    console.print(f"{path}: merged the slot logs of {merged} shard(s)", highlight=False)


@app.command()
@exits_on_error
def convert(
    path: Annotated[str, typer.Argument(help="Store location: a path or an fsspec URL.")],
    name: Annotated[
        str, typer.Option(help="Name of the store's (root) teacher from now on.")
    ] = "default",
) -> None:
    """Convert a single-teacher store in place into a store of named teachers (disco-store/4).

    Records NAME for the existing teacher; no embedding byte moves. Further teachers are then
    added with `disco precompute --as NAME2` (which converts automatically when needed).
    """
    # lazy: zarr and numpy load only when a command runs, so --help stays instant
    from store.embedding_store import EmbeddingStore

    store = EmbeddingStore.open(path, mode="r+")
    store.convert(name)
    console.print(f"{path}: teachers {', '.join(store.teachers)}", highlight=False)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items() if not isinstance(v, dict))
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _recipe_line(r: dict[str, Any]) -> str:
    names = ", ".join(r.get("param_names", []))
    return f"{r['name']} @ {r['size']}px, seed={r['seed']}, V={r['views']}; params: {names}"


@app.command()
@with_options(remote_options(writes=False))
@exits_on_error
def info(
    path: Annotated[str, typer.Argument(help="Store location: a path or an fsspec URL.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    target: Annotated[
        str | None,
        typer.Option(help="Teacher of a store of several (default: the store's only teacher)."),
    ] = None,
    **config: Any,
) -> None:
    """Show a store's shape, layout, size on disk, compression, progress, identity and teachers."""
    # lazy: zarr and numpy load only when a command runs, so --help stays instant
    from store.inspection import store_info

    apply_remote_options(config)
    data = store_info(path, target)
    if as_json:
        console.print_json(json.dumps(data))
        return
    table = Table(title=f"store {path}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    ratio = data["compression_ratio"]
    teacher = data["teacher"]
    rows = [
        ("N (rows)", str(data["n"])),
        ("V (views)", str(data["views"])),
        ("D (dim)", str(data["dim"]) if data["dim"] is not None else "- (no teacher)"),
        ("P (params/view)", str(data["params"])),
        ("dtype", str(data["dtype"] or "-")),
        ("codec", data["codec"]),
        ("chunks", f"({data['chunk_rows']}, V, D)"),
        ("shards", f"({data['shard_rows']}, V, D) x {data['num_shards']}"),
        ("bytes on disk", _human(data["bytes_on_disk"])),
        ("compression ratio", f"{ratio:.3f}" if ratio else "-"),
        ("% written", f"{100 * data['written_fraction']:.1f}%"),
        ("missing shards", str(len(data["missing_shards"] or [])) if data["dim"] else "-"),
        ("teacher", _short(teacher) if teacher else "-"),
        ("recipe", _recipe_line(data["recipe"])),
        ("dataset", _short(data["dataset"])),
        ("versions", _short(data["versions"])),
    ]
    for t in data["teachers"]:
        done = "complete" if t["complete"] else f"{len(t['missing_shards'])} shards missing"
        rows.append(
            (
                f"teacher {t['name']}",
                f"{t['teacher_name']} ({t['source']}), D={t['dim']} {t['dtype']}, "
                f"{t['bytes_per_view']} B/view, {100 * t['written_fraction']:.1f}% written, "
                f"{done}",
            )
        )
    for step in data["history"]:
        rows.append(
            (
                "appended",
                f"{step.get('time')}: +{step.get('added')} rows, N {step.get('n_before')} -> "
                f"{step.get('n_after')} from {step.get('dataset')}",
            )
        )
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)


@app.command()
@with_options(remote_options(writes=False))
@exits_on_error
def check(
    path: Annotated[str, typer.Argument(help="Store location: a path or an fsspec URL.")],
    dataset: Annotated[
        str | None, typer.Option(help="Dataset spec to compare with (default: the store's).")
    ] = None,
    skip_dataset: Annotated[
        bool, typer.Option(help="Do not compare the manifest with the dataset.")
    ] = False,
    target: Annotated[
        str | None,
        typer.Option(help="Teacher of a store of several (default: every teacher)."),
    ] = None,
    **config: Any,
) -> None:
    """Check written mask vs data, non-finite/zero-norm embeddings, and manifest vs dataset.

    Exits 1 when a problem is found.
    """
    # lazy: zarr and numpy load only when a command runs, so --help stays instant
    from store.inspection import check_store

    apply_remote_options(config)
    report = check_store(path, dataset=dataset, check_dataset=not skip_dataset, target=target)
    console.print(
        f"{path}: {report.written_slots}/{report.total_slots} slots written, "
        f"{report.bad_rows} bad, dataset "
        f"{'checked' if report.dataset_checked else 'not checked'}",
        highlight=False,
        soft_wrap=True,
    )
    for note in report.notes:
        console.print(f"  note: {note}", highlight=False, soft_wrap=True)
    for problem in report.problems:
        console.print(f"  [red]problem:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)
    console.print("[green]OK[/green]")
