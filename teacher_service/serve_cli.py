"""``disco serve``: start the teacher HTTP service under uvicorn.

Every option falls back to its ``DISCO_*`` environment variable, then to the default of
:class:`teacher_service.service.settings.ServiceSettings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

__all__ = ["serve_command"]


def serve_command(
    teacher: Annotated[
        str | None,
        typer.Option(
            help="Teacher: timm:NAME, hf:PATH_OR_ID, open_clip:ARCH, py:MODULE:FUNCTION or a "
            "checkpoint [env DISCO_TEACHER]."
        ),
    ] = None,
    teacher_weights: Annotated[
        Path | None,
        typer.Option(help="Teacher weights file or snapshot folder [env DISCO_TEACHER_WEIGHTS]."),
    ] = None,
    teacher_pooling: Annotated[
        str | None, typer.Option(help="ViT teachers: cls, mean, cls+mean [DISCO_TEACHER_POOLING].")
    ] = None,
    store_root: Annotated[
        Path | None,
        typer.Option(help="Directory of the stores served / written [env DISCO_STORE_ROOT]."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8000).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="Compute dtype on CUDA: float32, float16, bfloat16.")
    ] = None,
    recipe: Annotated[
        str | None, typer.Option(help="View recipe of request params (default: checkpoint's).")
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Rows per model batch.")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="Longest batch wait, ms.")] = None,
    max_queue: Annotated[int | None, typer.Option(help="Rows queued before 429.")] = None,
    max_body_bytes: Annotated[int | None, typer.Option(help="Largest body, bytes (413).")] = None,
    max_images: Annotated[int | None, typer.Option(help="Images per request (413).")] = None,
    max_pixels: Annotated[int | None, typer.Option(help="Pixels per image (H*W).")] = None,
    threads: Annotated[int | None, typer.Option(help="Torch threads for the model.")] = None,
    prep_threads: Annotated[
        int | None, typer.Option(help="Threads decoding + rendering request images.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="Bearer token required on all routes but /healthz [env DISCO_TOKEN]."),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="uvicorn log level.")] = None,
) -> None:
    """Serve teacher embeddings over HTTP (dynamic batching; see /docs when running)."""
    import uvicorn

    from teacher_service.service.app import create_app
    from teacher_service.service.settings import ServiceSettings

    given: dict[str, Any] = {
        "teacher": teacher,
        "teacher_weights": teacher_weights,
        "teacher_pooling": teacher_pooling,
        "store_root": store_root,
        "host": host,
        "port": port,
        "device": device,
        "dtype": dtype,
        "recipe": recipe,
        "max_batch_size": max_batch_size,
        "max_wait_ms": max_wait_ms,
        "max_queue": max_queue,
        "max_body_bytes": max_body_bytes,
        "max_images": max_images,
        "max_pixels": max_pixels,
        "threads": threads,
        "prep_threads": prep_threads,
        "token": token,
        "log_level": log_level,
    }
    try:
        settings = ServiceSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        typer.echo(f"error: {where}: {first['msg']} (flag or DISCO_{where.upper()})", err=True)
        raise typer.Exit(1) from None
    if settings.teacher is not None:
        # Fail before uvicorn starts: a broken checkpoint is one clear line, not a startup trace.
        from store.errors import DiscoError
        from teacher_service.sources import load_teacher

        try:
            load_teacher(
                settings.teacher, settings.teacher_weights, settings.teacher_pooling, device="cpu"
            )
        except (DiscoError, OSError) as exc:
            typer.echo(f"error: cannot load teacher {settings.teacher}: {exc}", err=True)
            raise typer.Exit(1) from None
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    typer.run(serve_command)
