"""The ``disco`` command line: a thin root that joins each package's command group."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="DisCo cache: distil small self-supervised vision models from a cached teacher.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# --- command registrations (one line each; each package owns its commands' code) ---
