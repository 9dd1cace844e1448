"""``platform pretrain`` — iBOT pretraining with a masking strategy as a parameter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mimlab.cli.common import echo_err, user_errors
from mimlab.errors import UserError, check_range
from mimlab.urls import check_ray_address, check_tracking_uri


@user_errors
def pretrain(
    experiment: Annotated[Path, typer.Argument(help="experiment YAML (see experiments/pretrain-*.yaml)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: dotted.key=value (repeat)")] = None,
    data: Annotated[str | None, typer.Option(help="training shards URL (default: data.train, else embedded)")] = None,
    workers: Annotated[int | None, typer.Option(help="DDP workers (0 = Ray Train local mode, in this process)")] = None,
    gpus_per_worker: Annotated[float | None, typer.Option(help="GPUs per worker (> 0 enables GPU training)")] = None,
    epochs: Annotated[int | None, typer.Option(help="override optim.epochs")] = None,
    init: Annotated[str | None, typer.Option(help="start from this local checkpoint (model.init): DINO/iBOT, "
                                                  "released backbone, DeiT/MAE, timm or `platform pretrain`")] = None,
    name: Annotated[str | None, typer.Option(help="run name; re-using it resumes the same config, or extends it "
                                                  "with more --epochs (default: the YAML's stem)")] = None,
    storage_path: Annotated[str | None, typer.Option(help="checkpoint store: folder or s3://… (train.storage_path)")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default ./mlflow.db)")] = None,
) -> None:
    """Pretrain a ViT with iBOT on Ray Train; a checkpoint every epoch, resumable by --name."""
    from mimlab.config.pretrain import load_pretrain_config
    from mimlab.runtime.train import run_pretrain

    check_range("--workers", workers, at_least=0)
    check_range("--epochs", epochs, at_least=1)
    check_range("--gpus-per-worker", gpus_per_worker, at_least=0)
    check_tracking_uri(tracking_uri)
    check_ray_address(None)  # $RAY_ADDRESS: pretraining always runs on Ray (local mode too)
    overrides = list(set_ or [])
    if epochs is not None:
        overrides.append(f"optim.epochs={epochs}")
    if init is not None:
        overrides.append(f"model.init={json.dumps(init)}")  # quoted: a path is YAML-parsed like any override
    cfg = load_pretrain_config(experiment, overrides)
    if cfg.train.use_gpu and gpus_per_worker == 0:
        raise UserError("--gpus-per-worker 0 with train.use_gpu=true: GPU training needs a GPU count > 0 "
                        "(or set train.use_gpu=false)")
    result = run_pretrain(cfg, data=data, name=name or experiment.stem, storage_path=storage_path, workers=workers,
                          gpus_per_worker=gpus_per_worker, tracking_uri=tracking_uri)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.metrics.items()
             if k in ("epoch", "loss", "loss_cls", "loss_patch", "knn_top1", "knn_top1_init", "images_per_s",
                      "batch_classes")}
    typer.echo(f"checkpoint: {result.checkpoint_uri or result.checkpoint_dir}")
    typer.echo(f"metrics: {shown}")
    echo_err("browse the run: mlflow ui --backend-store-uri <tracking uri> (see `platform runs`)")


def register(app: typer.Typer) -> None:
    """Add the top-level ``pretrain`` command to the ``platform`` app."""
    app.command("pretrain")(pretrain)
