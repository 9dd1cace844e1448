"""``platform eval`` — representation quality: k-NN and linear probing."""

from __future__ import annotations

from typing import Annotated

import typer

from mimlab.cli.common import echo_err, user_errors
from mimlab.errors import UserError, check_range
from mimlab.outputs import KNN_OUTPUTS, LINEAR_OUTPUTS, check_out_folder
from mimlab.urls import check_tracking_uri

eval_app = typer.Typer(help="Evaluate representations: k-NN and linear probe.", no_args_is_help=True)

ModelArg = Annotated[str, typer.Argument(help="timm name, `platform pretrain` checkpoint dir / .safetensors, or "
                                              "package.module:callable (as in `platform explain`)")]
WeightsOpt = Annotated[str | None, typer.Option("--weights", help="local weights for a timm name / callable")]
StudentOpt = Annotated[bool, typer.Option("--student", help="use the checkpoint's student (default: teacher)")]
TrainOpt = Annotated[str | None, typer.Option("--train", help="train split: shards, ImageFolder tree or a root "
                                                              "with train/+val/ (default: embedded dataset)")]
ValOpt = Annotated[str | None, typer.Option("--val", help="val split (same forms as --train)")]
OutOpt = Annotated[str | None, typer.Option("--out", help="folder for the JSON results (and the curve plot)")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="use only the first N images of each split")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="feature actors in the Ray Data pool; 0 = in-process")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="images per forward (linear: also the SGD batch)")]
TrackingOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow store (default sqlite:///mlflow.db)")]
NoMlflowOpt = Annotated[bool, typer.Option("--no-mlflow", help="do not log to MLflow")]


def parse_ks(text: str) -> list[int]:
    """``"10,20,100,200"`` → ``[10, 20, 100, 200]``; a clear error for anything else."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--k expects comma-separated positive integers like 10,20,100,200; got '{text}'") from None
    if not ks or min(ks) < 1:
        raise UserError(f"--k expects comma-separated positive integers like 10,20,100,200; got '{text}'")
    return ks


def _check_common(limit: int | None, workers: int, batch_size: int) -> None:
    check_range("--limit", limit, at_least=1)
    check_range("--workers", workers, at_least=0)
    check_range("--batch-size", batch_size, at_least=1)


def _skipped(result: dict) -> None:
    from mimlab.evaluation.api import skipped_line

    line = skipped_line(result)
    if line:
        echo_err(line)


@eval_app.command("knn")
@user_errors
def knn(
    model: ModelArg,
    weights: WeightsOpt = None,
    student: StudentOpt = False,
    train: TrainOpt = None,
    val: ValOpt = None,
    k: Annotated[str, typer.Option("--k", help="neighbour counts, all from one pass")] = "10,20,100,200",
    temperature: Annotated[float, typer.Option("--temperature", help="vote weight exp(sim/T)")] = 0.07,
    out: OutOpt = None,
    limit: LimitOpt = None,
    workers: WorkersOpt = 1,
    batch_size: BatchOpt = 128,
    tracking_uri: TrackingOpt = None,
    no_mlflow: NoMlflowOpt = False,
) -> None:
    """Weighted k-NN (DINO protocol): train split = bank, val split = queries; prints top-1/top-5 per k."""
    from mimlab.evaluation.api import knn_table, run_knn

    _check_common(limit, workers, batch_size)
    check_range("--temperature", temperature, above=0)
    check_tracking_uri(tracking_uri, env=not no_mlflow)  # --no-mlflow: the variable is never read
    check_out_folder(out, KNN_OUTPUTS)

    result = run_knn(model, weights=weights, student=student, train=train, val=val, ks=parse_ks(k),
                     temperature=temperature, limit=limit, out=out, log_mlflow=not no_mlflow, batch_size=batch_size,
                     workers=workers, tracking_uri=tracking_uri)
    typer.echo(knn_table(result))
    _skipped(result)
    if result["json"]:
        typer.echo(f"results: {result['json']}")


@eval_app.command("linear")
@user_errors
def linear(
    model: ModelArg,
    weights: WeightsOpt = None,
    student: StudentOpt = False,
    train: TrainOpt = None,
    val: ValOpt = None,
    epochs: Annotated[int, typer.Option("--epochs", help="cosine schedule length; val every epoch")] = 100,
    reach: Annotated[float | None, typer.Option("--reach", help="print the first epoch with val top-1 >= ACC %")]
    = None,
    cached_features: Annotated[bool, typer.Option(
        "--cached-features", help="extract train features once, no augmentation (fast sweeps; labelled)")] = False,
    lr: Annotated[float, typer.Option("--lr", help="base lr per 256 images")] = 0.003,
    out: OutOpt = None,
    limit: LimitOpt = None,
    workers: WorkersOpt = 1,
    batch_size: BatchOpt = 256,
    tracking_uri: TrackingOpt = None,
    no_mlflow: NoMlflowOpt = False,
) -> None:
    """Linear probe on the frozen last-4-blocks [cls]: per-epoch curve, best epoch/value, epochs to --reach."""
    from mimlab.evaluation.api import linear_table, run_linear

    _check_common(limit, workers, batch_size)
    check_range("--epochs", epochs, at_least=1)
    check_range("--lr", lr, above=0)
    check_tracking_uri(tracking_uri, env=not no_mlflow)  # --no-mlflow: the variable is never read
    check_out_folder(out, LINEAR_OUTPUTS)

    result = run_linear(model, weights=weights, student=student, train=train, val=val, epochs=epochs, reach=reach,
                        cached_features=cached_features, base_lr=lr, batch_size=batch_size, limit=limit, out=out,
                        log_mlflow=not no_mlflow, workers=workers, tracking_uri=tracking_uri)
    typer.echo(linear_table(result))
    _skipped(result)
    if result["json"]:
        typer.echo(f"results: {result['json']}")
