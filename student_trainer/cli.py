"""The ``disco`` command line: a thin root that joins each package's command group.

Each package owns its commands' code; this module only registers them.
"""

from __future__ import annotations

import typer

from store.cli import app as store_app
from student_trainer.demo.cli import demo_command
from student_trainer.eval.cli import eval_command
from student_trainer.train.cli import train_command
from teacher_service.cli import estimate_command, precompute_command, verify_command
from teacher_service.serve_cli import serve_command

app = typer.Typer(
    help="DisCo cache: distil small self-supervised vision models from a cached teacher.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

store_app.command("verify")(verify_command)
store_app.command("estimate")(estimate_command)
app.add_typer(store_app, name="store")
app.command("precompute")(precompute_command)
app.command("serve")(serve_command)
app.command("train")(train_command)
app.command("eval")(eval_command)
app.command("demo")(demo_command)

if __name__ == "__main__":
    app()
