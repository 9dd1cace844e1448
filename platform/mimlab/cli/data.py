"""``platform data`` — synthesise, shard and inspect image shards."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from mimlab.cli.common import echo_err, user_errors
from mimlab.errors import check_range

data_app = typer.Typer(help="Image shards: the embedded synthetic dataset, ImageFolder → shards, shard info.",
                       no_args_is_help=True)


@data_app.command()
@user_errors
def synth(
    out: Annotated[str, typer.Argument(help="output folder URL (path, file://, s3://, gs://); gets train/ and val/")],
    num_images: Annotated[int, typer.Option(help="total images (train + val)")] = 5000,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 32,
    classes: Annotated[int, typer.Option(help="number of classes (2..10; class k = shape k with texture k)")] = 10,
    seed: Annotated[int, typer.Option(help="generator seed; same seed ⇒ identical shards")] = 0,
    split_val: Annotated[float, typer.Option(help="fraction of images in val/")] = 0.2,
) -> None:
    """Generate the embedded synthetic dataset (textured shapes on a plain background, with exact masks) as shards."""
    from mimlab.data.synth import write_synthetic

    summary = write_synthetic(out, num_images=num_images, size=size, classes=classes, seed=seed,
                              split_val=split_val)
    typer.echo(f"wrote {summary['train']} train + {summary['val']} val images, {len(summary['classes'])} classes "
               f"({', '.join(summary['classes'])}) to {summary['root']}")


@data_app.command()
@user_errors
def shard(
    src: Annotated[str, typer.Argument(help="ImageFolder root (one folder per class) or flat ImageNet-val folder")],
    out_url: Annotated[str, typer.Argument(help="output folder URL (path, file://, s3://, gs://)")],
    shard_size: Annotated[int, typer.Option(help="images per shard")] = 1000,
    per_class_limit: Annotated[Optional[int], typer.Option(
        help="keep the first K images per class in sorted order (thesis 20 % ImageNet subset: 260)")] = None,
    resize: Annotated[Optional[int], typer.Option(help="resize the shorter side to PX pixels")] = None,
    unlabeled: Annotated[bool, typer.Option(
        "--unlabeled", help="every image of a flat folder or any tree, label null (pretraining only)")] = False,
    seed: Annotated[int, typer.Option(help="seed of the random row order across shards (same seed ⇒ same shards)")
                    ] = 0,  # = mimlab.data.imagefolder.DEFAULT_SEED (not imported: keeps CLI start-up light)
    no_shuffle: Annotated[bool, typer.Option("--no-shuffle", help="keep the sorted class-then-file row order")
                          ] = False,
) -> None:
    """Convert an ImageFolder tree (or, --unlabeled, any folder of images) into shards, rows in a seeded random
    order; resumable (complete shards are skipped)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mimlab.data.imagefolder import shard_imagefolder

    with Progress(TextColumn("sharding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task("shard", total=None)
        summary = shard_imagefolder(src, out_url, shard_size=shard_size, per_class_limit=per_class_limit,
                                    resize=resize, unlabeled=unlabeled, seed=None if no_shuffle else seed,
                                    progress=lambda done, total: bar.update(task, completed=done, total=total))
    labels = "unlabeled" if unlabeled else f"{len(summary['classes'])} classes"
    typer.echo(f"{summary['images']} images, {labels} → {summary['shards']} shards in "
               f"{summary['out']} ({summary['written']} written, {summary['skipped']} already complete)")
    bad = summary["bad_images"]
    if bad:
        echo_err(f"skipped {len(bad)} undecodable image(s): " + ", ".join(bad[:5]) + (" …" if len(bad) > 5 else ""))


@data_app.command()
@user_errors
def info(
    url: Annotated[Optional[str], typer.Argument(help="shard folder/file or dataset root; default: embedded")] = None,
    sample: Annotated[int, typer.Option(help="read image sizes from the first N images per split (0 = all)")] = 5000,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Counts, classes, image sizes and bytes of a shard dataset."""
    from mimlab.data.info import dataset_info, format_info

    check_range("--sample", sample, at_least=0)

    summary = dataset_info(url, sample=sample or None)
    typer.echo(json.dumps(summary, indent=1) if as_json else format_info(summary))


__all__ = ["data_app"]
