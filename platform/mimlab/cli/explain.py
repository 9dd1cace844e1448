"""``platform explain`` — saliency maps for one-off explanations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mimlab.cli.common import user_errors
from mimlab.errors import check_range
from mimlab.outputs import EXPLAIN_OUTPUTS, check_out_file, check_out_folder


@user_errors
def explain(
    images: Annotated[list[Path], typer.Argument(help="image files (JPEG/PNG)", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="timm name, pretrain checkpoint dir, or pkg.mod:fn")],
    weights: Annotated[Path | None, typer.Option(help="local weights (.pth/.pt/.th/.safetensors)")] = None,
    method: Annotated[list[str] | None, typer.Option(
        "--method", help="method spec name[:key=value,...], 1-based layers, e.g. rollout:layers=9-12 (repeat)")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every method that fits the model")] = False,
    img_size: Annotated[int | None, typer.Option(help="input side in px (default: the model's)")] = None,
    target: Annotated[str, typer.Option(
        help="class to explain: predicted (top-1), gt (label from an nXXXXXXXX_ name or the class folder under "
             "--class-root) or a class index")] = "predicted",
    class_root: Annotated[Path | None, typer.Option(
        help="ImageFolder root: an image's label = its class folder's index among the sorted folders")] = None,
    out: Annotated[Path, typer.Option(help="folder for the overlays and grid.png")] = Path("explanations"),
    save_maps: Annotated[Path | None, typer.Option(help="write maps to this .npz: one [N,H,W] array per spec")] = None,
    mean: Annotated[tuple[float, float, float] | None, typer.Option(
        help="override the model's normalisation mean: R G B")] = None,
    std: Annotated[tuple[float, float, float] | None, typer.Option(
        help="override the model's normalisation std: R G B")] = None,
    channel_order: Annotated[str, typer.Option(help="rgb, or bgr_legacy to replicate thesis bug B1")] = "rgb",
    student: Annotated[bool, typer.Option(help="pretrain checkpoints: explain the student, not the teacher")] = False,
) -> None:
    """Explain images: print the top-5, write one overlay per (image, method), a grid and optionally an .npz.

    Methods (name[:key=value,...], layers 1-based): gradcam, gradcam++, xgradcam, scorecam, hirescam,
    gradcam-elementwise, layercam, eigencam, eigengradcam, ablationcam [target-layer=PATH]; fullgrad (CNNs);
    raw [layer]; head [layer,head]; raw-star, raw-log [layer]; raw-pow [layer,p]; rollout [layers=A-B,
    order=descending|ascending]; keys-norm [layer,variant]; raw-star-x-keys-norm [layer,variant,mode];
    tibav [start]. Attention methods and tibav need a ViT.
    """
    from mimlab.explain.run import explain_images

    check_range("--img-size", img_size, at_least=1)
    check_out_folder(out, EXPLAIN_OUTPUTS, patterns=["*__*.png"])
    check_out_file(save_maps, "--save-maps")

    explain_images(images=images, model=model, weights=weights, methods=method or [], all_methods=all_,
                   img_size=img_size, target=target, class_root=class_root, out=out, save_maps=save_maps,
                   mean=mean, std=std,
                   channel_order=channel_order, student=student, echo=typer.echo)


def register(app: typer.Typer) -> None:
    """Add the top-level ``explain`` command to the ``platform`` app."""
    app.command("explain")(explain)
