"""``disco serve``: start the teacher HTTP service under uvicorn.

The options are derived from :class:`teacher_service.service.settings.ServiceSettings` (one per
field, help from its description); an option not given falls back to its ``DISCO_*`` environment
variable, then to the field's default. Torch loads only when the service starts.
"""

from __future__ import annotations

import logging
import logging.config
import os
from typing import Any

import typer
from pydantic import ValidationError

from store.cli_options import (
    apply_remote_options,
    remote_options,
    settings_options,
    with_options,
)
from store.errors import DiscoError
from store.remote import single_writer_acknowledged
from teacher_service.service.settings import ServiceSettings

__all__ = ["serve_command"]


@with_options(settings_options(ServiceSettings), remote_options())
def serve_command(**given: Any) -> None:
    """Serve teacher embeddings over HTTP (dynamic batching; see /docs when running)."""
    # lazy: uvicorn, torch and the app load only when the server starts (--help stays instant)
    import uvicorn

    from teacher_service.service.app import create_app  # lazy: torch, as above
    from teacher_service.service.logs import log_config  # lazy: as above

    try:
        apply_remote_options(given)
    except DiscoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        settings = ServiceSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        typer.echo(f"error: {where}: {first['msg']} (flag or DISCO_{where.upper()})", err=True)
        raise typer.Exit(1) from None
    if settings.store_root is not None:
        try:  # the service writes its stores (write-through): on object storage, no locks
            single_writer_acknowledged(settings.store_root)
        except DiscoError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    # From here on every line is in the chosen format (JSON: one object per line), library
    # warnings included (as log records).
    logging.config.dictConfig(log_config(settings.log_format, settings.log_level))
    logging.captureWarnings(True)
    if settings.log_format == "json":
        # Hub download/loading progress bars are not log lines (set before transformers loads).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if settings.teacher is not None:
        # Fail before uvicorn starts: a broken checkpoint is one clear line, not a startup trace.
        from store.precision import compute_dtype
        from store.runtime import resolve_device
        from teacher_service.checkpoint import recipe_for
        from teacher_service.sources import load_teacher

        try:
            compute_dtype(settings.precision, resolve_device(settings.device).type)
            loaded = load_teacher(
                settings.teacher, settings.teacher_weights, settings.teacher_pooling, device="cpu"
            )
            loaded.model.check_size(
                recipe_for(loaded.info["preprocessing"], settings.recipe, settings.size).size
            )
        except (DiscoError, OSError) as exc:
            typer.echo(f"error: cannot load teacher {settings.teacher}: {exc}", err=True)
            raise typer.Exit(1) from None
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=log_config(settings.log_format, settings.log_level),
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    typer.run(serve_command)
