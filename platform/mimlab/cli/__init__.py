"""The ``platform`` command line. Each command group lives in its own thin module."""

from __future__ import annotations

import sys

import typer

from mimlab.cli.common import OneLineErrors
from mimlab.cli.data import data_app
from mimlab.cli.evaluate import evaluate_app
from mimlab.cli.represent import eval_app
from mimlab.cli.runs import runs_app
from mimlab.cli.tune import tune_app
from mimlab.errors import UserError

app = typer.Typer(
    name="platform",
    help="mimlab: explain CNNs/ViTs, score saliency maps, pretrain iBOT with attention-guided masking, sweep on Ray.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    cls=OneLineErrors,
)
app.add_typer(data_app, name="data")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(eval_app, name="eval")
app.add_typer(tune_app, name="tune")
app.add_typer(runs_app, name="runs")


def _register_single_commands() -> None:
    """Top-level commands (explain, pretrain) are registered by their modules' ``register(app)``."""
    from mimlab.cli import explain, pretrain

    for module in (explain, pretrain):
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_single_commands()


def main() -> None:
    """Console-script entry point; a stray :class:`UserError` still becomes one line and exit 2."""
    try:
        app()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
