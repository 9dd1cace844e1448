"""``platform tune NAME`` — Ray Tune sweeps over the thesis experiments in experiments/."""

from __future__ import annotations

from typing import Annotated

import typer

from mimlab.cli.common import user_errors
from mimlab.errors import check_range
from mimlab.urls import check_ray_address, check_tracking_uri

# MLflow 3.17 opens experiments on its GenAI traces overview unless the UI is switched to model training
UI_RUNS_URL = "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"

tune_app = typer.Typer(help="Run a sweep from experiments/ (e.g. `platform tune masking-layers`) with Ray Tune.",
                       invoke_without_command=True,
                       # NAME is an argument of the group itself (there are no sub-commands), so options may
                       # follow it: `platform tune masking-layers --profile demo`.
                       context_settings={"allow_interspersed_args": True})


@tune_app.callback(invoke_without_command=True)
@user_errors
def tune(
    name: Annotated[str | None, typer.Argument(help="experiment name (experiments/NAME.yaml) or a YAML path; "
                                                    "omit to list them")] = None,
    profile: Annotated[str | None, typer.Option(help="scale: demo | cifar10 | imagenet-20pct | imagenet-full "
                                                     "(default: the experiment's, usually demo)")] = None,
    data: Annotated[str | None, typer.Option(help="dataset root URL with train/ and val/ shards "
                                                  "(default: the embedded dataset)")] = None,
    seeds: Annotated[int | None, typer.Option(help="repeat every sweep point with seeds 0..S-1 "
                                                   "(default: the profile's, usually 1)")] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="trials running at once")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(help="GPUs per trial (default: the profile's)")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(help="CPUs per trial (default: the profile's)")] = None,
    workers_per_trial: Annotated[int, typer.Option(help=">1: Train-in-Tune, a multi-worker TorchTrainer per "
                                                        "trial (no early-stopping scheduler)")] = 1,
    point: Annotated[list[str] | None, typer.Option("--point", help="run only the sweep point with this label "
                                                                    "(repeat; default: all)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the latest interrupted sweep")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default sqlite:///./mlflow.db)")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default $RAY_ADDRESS or local)")] = None,
    storage_path: Annotated[str | None, typer.Option(help="Tune storage root: folder or s3://… "
                                                          "(default ./runs/tune)")] = None,
) -> None:
    """Sweep experiment NAME on Ray Tune; each trial pretrains then evaluates k-NN and the linear probe."""
    from mimlab.config.experiment import list_experiments, load_profiles

    check_range("--seeds", seeds, at_least=1)
    check_range("--max-concurrent", max_concurrent, at_least=1)
    check_range("--gpus-per-trial", gpus_per_trial, at_least=0)
    check_range("--cpus-per-trial", cpus_per_trial, above=0)
    check_range("--workers-per-trial", workers_per_trial, at_least=1)
    check_tracking_uri(tracking_uri)
    check_ray_address(address)
    if name is None:
        profiles = ", ".join(load_profiles())
        typer.echo("experiments: " + ", ".join(list_experiments()) + f"\nprofiles: {profiles}\n"
                   "run: platform tune NAME [--profile P] [--data URL] [--seeds S] [--resume]")
        return
    _check_data(data)
    from mimlab.runtime.tracking import ui_command
    from mimlab.runtime.tune import run_sweep

    result = run_sweep(name=name, profile=profile, data=data, seeds=seeds, max_concurrent=max_concurrent,
                       gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial,
                       workers_per_trial=workers_per_trial, points=point, resume=resume, tracking_uri=tracking_uri,
                       address=address, storage_path=storage_path, echo=lambda s: typer.echo(s))
    typer.echo("")
    typer.echo(f"{result.name} [{result.profile}] — mean ± std over seeds "
               f"({result.table.finished} trial(s) finished, {result.table.failed} failed)")
    typer.echo(result.table.to_text())
    if result.interrupted:
        typer.echo(f"\nsweep interrupted; continue with: platform tune {name} --profile {result.profile} --resume")
    uri = result.tracking_uri
    browse = ui_command(uri) if uri.startswith("sqlite") else uri
    typer.echo(f"\nbrowse and compare: {browse}")
    typer.echo(f"  then open {UI_RUNS_URL}, experiment 'tune-{result.name}', expand parent run "
               f"{result.parent_run_id[:8]}…, tick its child runs and press Compare")
    typer.echo(f"  or: platform runs compare {result.name}")


def _check_data(data: str | None) -> None:
    """Check the dataset's train/ and val/ shards (columns, types, labels for the evaluation) before Ray starts."""
    if data is None:
        return
    import pyarrow.parquet as pq

    from mimlab.data.pipeline import shard_files
    from mimlab.errors import UserError

    for split in ("train", "val"):
        fs, files = shard_files(data, split)
        for f in files:
            with fs.open(f, "rb") as handle:
                column = pq.read_table(handle, columns=["label"]).column("label")
            if column.null_count:
                raise UserError(f"--data '{data}': shard '{f}' has images without labels; the sweep's k-NN and "
                                "linear evaluation need labelled train/ and val/ shards")
