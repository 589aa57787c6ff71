"""Commands of the teacher side: ``disco precompute`` and ``disco store verify``.

Thin wrappers: options -> config -> library call -> one summary line. The options are derived from
the configs' fields (:class:`teacher_service.config.PrecomputeConfig`, :class:`VerifyConfig`), so a
flag's default and help are its field's. A ``DiscoError`` exits 1 with one line on stderr, no
traceback. Torch is imported only when a command runs. (``disco serve`` lives in ``serve_cli``.)
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from store.cli_options import dataclass_options, with_options
from store.errors import DiscoError
from teacher_service.config import PrecomputeConfig, VerifyConfig

__all__ = ["precompute_command", "verify_command"]


@with_options(dataclass_options(PrecomputeConfig))
def precompute_command(
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    **config: Any,
) -> None:
    """Compute the teacher's final embedding of every planned view into a store (resumable)."""
    try:
        cfg = PrecomputeConfig(**config)
        from teacher_service.precompute import run_precompute

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
        f"{report.renderer} renderer, "
        f"{report.compute_dtype}); {report.shards_skipped} already written; "
        f"{report.invalid_rows + len(report.errors)} undecodable samples skipped"
    )
    for key, reason in list(report.errors.items())[:10]:
        typer.echo(f"  skipped {key}: {reason}")


@with_options(dataclass_options(VerifyConfig))
def verify_command(
    store: Annotated[str, typer.Argument(help="Store path or URL.")],
    teacher: Annotated[str, typer.Option(help="Teacher checkpoint the store was built with.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    **config: Any,
) -> None:
    """Re-render sampled views, run the live teacher, compare with the cache; exit 1 on failure."""
    try:
        opts = VerifyConfig(**config)
        from teacher_service.verify import verify_store

        result = verify_store(
            store,
            teacher,
            samples=opts.samples,
            threshold=opts.threshold,
            seed=opts.seed,
            device=opts.device,
            batch_size=opts.batch_size,
        )
    except DiscoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result.to_dict()) if json_out else result.summary())
    if not result.passed:
        raise typer.Exit(1)
