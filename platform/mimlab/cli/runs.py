"""``platform runs`` — read sweep results back from the MLflow tracking store."""

from __future__ import annotations

from typing import Annotated

import typer

from mimlab.cli.common import user_errors
from mimlab.urls import check_tracking_uri

runs_app = typer.Typer(help="Compare sweep results stored in MLflow.", no_args_is_help=True)


@runs_app.command()
@user_errors
def compare(
    name: Annotated[str, typer.Argument(help="sweep (experiment) name, e.g. masking-layers")],
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default sqlite:///./mlflow.db)")] = None,
    run_id: Annotated[str | None, typer.Option(help="a specific parent run (default: the latest sweep)")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="print the table as Markdown")] = False,
    plot: Annotated[str | None, typer.Option(help="also write the results figure (PNG) to this file")] = None,
) -> None:
    """Print the results table of the latest sweep NAME: untrained row, 95 % intervals, comparison with block."""
    from mimlab.errors import UserError
    from mimlab.runtime.mlflow_server import healthy
    from mimlab.runtime.sweep_results import compare as compare_sweep
    from mimlab.runtime.tracking import tracking_uri as resolve_uri

    check_tracking_uri(tracking_uri)
    uri = resolve_uri(tracking_uri)  # the option, else $MLFLOW_TRACKING_URI, else ./mlflow.db
    if uri.startswith(("http://", "https://")) and not healthy(uri.rstrip("/"), timeout=5):
        # MLflow's client would retry for minutes and end in a traceback: one line, at once
        raise UserError(f"MLflow tracking server '{uri}' is unreachable (GET /health failed)")

    if plot is not None:
        from mimlab.outputs import check_out_file

        check_out_file(plot, "--plot")
    parent, table, exp = compare_sweep(name=name, tracking_uri=tracking_uri, run_id=run_id)
    typer.echo(f"{parent.info.run_name} (run {parent.info.run_id}, {parent.info.status}) "
               f"({table.finished} trial(s) finished, {table.failed} failed)")
    typer.echo(table.to_markdown() if markdown else table.to_text())
    if plot is not None:
        from mimlab.runtime.sweep_results import plot_table

        fig = plot_table(exp, table) if exp is not None else None
        if fig is None:
            raise UserError(f"sweep '{name}': nothing to plot (no finished trial, or its experiment YAML is gone)")
        fig.savefig(plot, dpi=120)
        typer.echo(f"figure: {plot}")
