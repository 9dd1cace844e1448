"""``platform evaluate`` — faithfulness and localisation metrics of saliency maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mimlab.cli.common import echo_err, user_errors
from mimlab.errors import check_range
from mimlab.outputs import SALIENCY_OUTPUTS, STUDY_OUTPUTS, check_out_folder
from mimlab.urls import check_tracking_uri

evaluate_app = typer.Typer(
    help="Score saliency maps: AD, AI, insertion, deletion, ROAD, localisation; studies; sanity checks.",
    no_args_is_help=True,
)


def _skipped(summary: dict) -> None:
    """One stderr line when the dataset held images PIL refused (skipped, counted in the results file)."""
    from mimlab.data.sources import skipped_note

    if summary.get("skipped_images"):
        echo_err(skipped_note(summary["skipped_images"], "not scored", summary["skipped_paths"]))


@evaluate_app.command()
@user_errors
def saliency(
    model: Annotated[
        str, typer.Option("--model", help="timm name, pretrain checkpoint dir, or package.module:fn")
    ],
    weights: Annotated[
        str | None, typer.Option("--weights", help="local weights file for a timm/custom model")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="shards, ImageFolder tree or flat ImageNet-val folder (default: the embedded dataset)",
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="subfolder of a root with train/ and val/")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="first N images")] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method", help="saliency method spec, repeatable (e.g. raw:layer=12); default gradcam"
        ),
    ] = None,
    metrics: Annotated[
        str,
        typer.Option(
            "--metrics",
            help="comma list: ad, ai, insertion, deletion, road, "
            "road-morf, road-lerf, pointing, energy, iou "
            "(options as insertion:step=16)",
        ),
    ] = "ad,ai,insertion,deletion",
    img_size: Annotated[
        int | None, typer.Option("--img-size", help="input side in pixels (default: model's)")
    ] = None,
    target: Annotated[
        str, typer.Option("--target", help="class the CAMs/TIBAV explain: gt (thesis), predicted, or an index")
    ] = "gt",
    channel_order: Annotated[
        str, typer.Option("--channel-order", help="rgb, or bgr_legacy to replicate thesis bug B1")
    ] = "rgb",
    workers: Annotated[int, typer.Option("--workers", help="Ray actors (one GPU each when GPUs exist)")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per batch (the unit of work)")] = 16,
    save_maps: Annotated[bool, typer.Option("--save-maps", help="also write maps.npz")] = False,
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("saliency-eval"),
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow store")] = None,
    experiment: Annotated[str, typer.Option("--experiment", help="MLflow experiment")] = "mimlab",
) -> None:
    """Explain images with one or more methods and score the maps (results.json, per_image.csv, figure)."""
    from mimlab.metrics import split_metric_list
    from mimlab.runtime.saliency import evaluate_saliency, format_table

    check_range("--limit", limit, at_least=1)
    check_range("--workers", workers, at_least=0)
    check_range("--batch-size", batch_size, at_least=1)
    check_range("--img-size", img_size, at_least=1)
    check_tracking_uri(tracking_uri)
    check_out_folder(out, SALIENCY_OUTPUTS)

    result = evaluate_saliency(
        model=model,
        weights=weights,
        data=data,
        split=split,
        limit=limit,
        methods=method or ["gradcam"],
        metrics=split_metric_list(metrics),
        img_size=img_size,
        workers=workers,
        batch_size=batch_size,
        save_maps=save_maps,
        out=out,
        target=target,
        channel_order=channel_order,
        tracking_uri=tracking_uri,
        experiment=experiment,
    )
    typer.echo(format_table(result.table, result.higher_is_better, result.intervals, result.targets))
    _skipped(result.summary)
    typer.echo(
        f"wrote {', '.join(p.name for p in result.files)} to {result.out_dir} (MLflow run {result.run_id})"
    )


@evaluate_app.command()
@user_errors
def sanity(
    model: Annotated[
        str, typer.Option("--model", help="timm name, pretrain checkpoint dir, or package.module:fn")
    ],
    weights: Annotated[
        str | None, typer.Option("--weights", help="local weights file (only read, never written)")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="shards, ImageFolder tree or flat ImageNet-val folder (default: embedded)"),
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="subfolder of a root with train/ and val/")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="first N images")] = None,
    method: Annotated[
        list[str] | None, typer.Option("--method", help="saliency method spec, repeatable; default gradcam")
    ] = None,
    img_size: Annotated[
        int | None, typer.Option("--img-size", help="input side in pixels (default: model's)")
    ] = None,
    mode: Annotated[
        list[str] | None,
        typer.Option("--mode", help="cascading and/or independent (repeat; default both)"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="block k is re-initialised from seed + k")] = 0,
    target: Annotated[
        str, typer.Option("--target", help="class the CAMs/TIBAV explain: gt, predicted, or an index")
    ] = "gt",
    channel_order: Annotated[
        str, typer.Option("--channel-order", help="rgb, or bgr_legacy to replicate thesis bug B1")
    ] = "rgb",
    workers: Annotated[int, typer.Option("--workers", help="Ray actors (one GPU each when GPUs exist)")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per batch (the unit of work)")] = 16,
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("sanity-check"),
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow store")] = None,
    experiment: Annotated[str, typer.Option("--experiment", help="MLflow experiment")] = "mimlab",
) -> None:
    """Model-parameter randomisation test (Adebayo et al. 2018): do the maps change when the weights do?

    Re-initialises the model's blocks from the output down (cascading) and one at a time (independent), and
    reports per step the Spearman correlation and SSIM with the original maps (95 % intervals over images);
    writes sanity.json, sanity_per_image.csv, sanity.png and one MLflow run. Methods whose maps survive full
    randomisation are flagged.
    """
    from mimlab.explain.sanity import MODES
    from mimlab.runtime.sanity import evaluate_sanity, format_sanity

    result = evaluate_sanity(
        model=model, weights=weights, data=data, split=split, limit=limit, methods=method or ["gradcam"],
        img_size=img_size, workers=workers, batch_size=batch_size, out=out, target=target,
        channel_order=channel_order, seed=seed, modes=list(dict.fromkeys(mode)) if mode else list(MODES),
        tracking_uri=tracking_uri, experiment=experiment,
    )
    typer.echo(format_sanity(result.summary))
    _skipped(result.summary)
    typer.echo(
        f"wrote {', '.join(p.name for p in result.files)} to {result.out_dir} (MLflow run {result.run_id})"
    )


@evaluate_app.command()
@user_errors
def study(
    file: Annotated[Path, typer.Argument(help="study YAML (experiments/studies/*.yaml)")],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE for the study's params")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="override the study's image limit")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Ray actors per model")] = 1,
    out: Annotated[Path | None, typer.Option("--out", help="output folder (default: study-<name>)")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow store")] = None,
    experiment: Annotated[str, typer.Option("--experiment", help="MLflow experiment")] = "mimlab",
) -> None:
    """Run a (model × method) grid: one MLflow parent run, a child run per pair; print the combined table."""
    from mimlab.metrics.study import load_study
    from mimlab.runtime.saliency import run_study

    check_range("--limit", limit, at_least=1)
    check_range("--workers", workers, at_least=0)
    check_tracking_uri(tracking_uri)
    check_out_folder(out, STUDY_OUTPUTS)

    cfg = load_study(file, param or [], limit=limit)
    result = run_study(cfg, workers=workers, out=out, tracking_uri=tracking_uri, experiment=experiment)
    typer.echo(result.text)
    typer.echo(f"wrote {result.out_dir} (MLflow parent run {result.run_id})")
