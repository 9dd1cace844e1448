"""``platform tune`` — Ray Tune sweeps over the thesis experiments."""

import typer

tune_app = typer.Typer(help="Run a sweep from experiments/ (e.g. masking-layers) with Ray Tune.",
                       no_args_is_help=True)
