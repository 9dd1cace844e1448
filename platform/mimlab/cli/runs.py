"""``platform runs`` — read results back from the MLflow tracking store."""

import typer

runs_app = typer.Typer(help="Compare sweep results stored in MLflow.", no_args_is_help=True)
