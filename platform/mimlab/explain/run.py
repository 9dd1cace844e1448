"""``platform explain`` as an importable function: load, preprocess, explain, print top-5, write files."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mimlab.errors import UserError
from mimlab.explain.base import (
    EXPLAINERS,
    build_explainer,
    check_target_index,
    fits,
    parse_target,
    resolve_targets,
)
from mimlab.explain.many import explain_many
from mimlab.explain.render import overlay, save_grid, save_png, slug
from mimlab.models.loading import LoadedModel, load_model

CHANNEL_ORDERS = ("rgb", "bgr_legacy")


@dataclass
class ExplainResult:
    """What a run produced: per-spec maps ``[num_images,H,W]``, top-5 per image, and the written files."""

    maps: dict[str, np.ndarray]
    top5: list[list[tuple[int, float]]]
    files: list[Path]


def read_image(path: Path) -> np.ndarray:
    """uint8 [H,W,3] RGB; a missing or undecodable file is a :class:`UserError`."""
    if not path.is_file():
        raise UserError(f"image '{path}' does not exist" if not path.exists() else f"image '{path}' is not a file")
    try:
        from mimlab.data.sources import decode_rgb
    except ImportError:  # the data package is optional for explanation
        decode_rgb = None
    data = path.read_bytes()
    try:
        if decode_rgb is not None:
            return decode_rgb(data)
        from PIL import Image

        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as err:  # noqa: BLE001 - any decode failure is a bad input file
        raise UserError(f"image '{path}' is unreadable: {err}") from None


def preprocess(
    images: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float], channel_order: str = "rgb"
) -> tuple[np.ndarray, torch.Tensor]:
    """Resize directly to ``size``×``size`` (bilinear, no crop, as the thesis) and normalise.

    Returns:
        (uint8 [B,S,S,3] resized RGB for display, float tensor [B,3,S,S] normalised model input).
        ``bgr_legacy`` feeds channel-swapped images (thesis bug B1) while displaying RGB.
    """
    from PIL import Image

    resized = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])
    fed = resized[..., ::-1] if channel_order == "bgr_legacy" else resized
    x = torch.from_numpy(np.ascontiguousarray(fed)).float().div_(255).permute(0, 3, 1, 2)  # [B,S,S,3] -> [B,3,S,S]
    m = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return resized, (x - m) / s


def image_label(path: Path, class_root: Path | None = None) -> int | None:
    """The ground-truth label of an image file where its name or folder says it, else ``None``.

    * ``nXXXXXXXX_*.JPEG`` (flat ImageNet folder): index of its wnid among the sorted wnids present in the folder;
    * under ``class_root/<class>/`` (an ImageFolder tree, named explicitly because any folder of folders looks
      like one): index of ``<class>`` among the sorted class folders of ``class_root``.

    These are the rules of ``platform evaluate saliency --data`` (``mimlab.data.sources``).
    """
    from mimlab.data.sources import _WNID_FILE

    path = Path(path).resolve()
    if class_root is not None:
        root = Path(class_root).resolve()
        if root not in path.parents:
            return None
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        return classes.index(path.relative_to(root).parts[0]) if len(path.relative_to(root).parts) > 1 else None
    match = _WNID_FILE.match(path.name)
    if match:
        wnids = sorted({m.group(1) for m in map(_WNID_FILE.match, (p.name for p in path.parent.iterdir())) if m})
        return wnids.index(match.group(1))
    return None


def default_methods(loaded: LoadedModel, all_methods: bool) -> list[str]:
    """Every registered method that fits the model (``--all``), else Grad-CAM (CNN) / Raw (ViT)."""
    if all_methods:
        return [n for n in EXPLAINERS.names() if fits(EXPLAINERS.get(n), loaded.kind)]
    return ["raw"] if loaded.kind == "vit" else ["gradcam"]


def class_name(index: int, num_classes: int) -> str:
    if num_classes == 1000:
        try:
            from timm.data import ImageNetInfo

            return ImageNetInfo().index_to_description(index)
        except Exception:  # noqa: BLE001 - names are decoration only
            pass
    return f"class {index}"


def explain_images(
    *,
    images: Sequence[Path],
    model: str,
    weights: Path | None = None,
    methods: Sequence[str] = (),
    all_methods: bool = False,
    img_size: int | None = None,
    target: str | int = "predicted",
    class_root: Path | None = None,
    out: Path = Path("explanations"),
    save_maps: Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channel_order: str = "rgb",
    student: bool = False,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> ExplainResult:
    """Explain each image with each method; print the top-5 and write overlays, the grid and optionally an .npz.

    ``target``: ``"predicted"`` (top-1, default), ``"gt"`` (the label from the image's name or from its class
    folder under ``class_root``, see :func:`image_label`) or a class index; gradient-free attention methods
    explain no class and ignore it.
    The npz holds, for each method spec exactly as given, float32 ``[num_images, H, W]`` in [0,1], images in order.
    """
    if not images:
        raise UserError("give at least one IMAGE")
    target = parse_target(target)
    if channel_order not in CHANNEL_ORDERS:
        raise UserError(f"--channel-order must be one of {', '.join(CHANNEL_ORDERS)}, got '{channel_order}'")
    for name, stat in (("--mean", mean), ("--std", std)):
        if stat is not None and len(stat) != 3:
            raise UserError(f"{name} needs 3 values (R G B), got {len(stat)}")
    if std is not None and any(v <= 0 for v in std):
        raise UserError("--std values must be > 0")
    raw_images = [read_image(Path(p)) for p in images]  # fail on a bad file before loading the model
    labels = None
    if target == "gt":
        if class_root is not None and not Path(class_root).is_dir():
            raise UserError(f"--class-root '{class_root}' is not a folder")
        found = [image_label(Path(p), class_root) for p in images]
        missing = [str(p) for p, lab in zip(images, found) if lab is None]
        if missing:
            raise UserError(f"--target gt: no label is known for image '{missing[0]}' (labels come from an "
                            "nXXXXXXXX_*.JPEG name or from its class folder under --class-root); "
                            "use --target predicted or a class index")
        labels = torch.tensor(found, dtype=torch.long)
    loaded = load_model(model, weights, img_size=img_size, student=student)
    size = int(img_size or loaded.img_size)
    specs = list(dict.fromkeys(methods)) or default_methods(loaded, all_methods)
    if methods and all_methods:
        specs += [m for m in default_methods(loaded, True) if m not in specs]
    explainers = {s: build_explainer(s, loaded) for s in specs}  # validate every spec before any work
    display, batch = preprocess(raw_images, size, mean or loaded.mean, std or loaded.std, channel_order)

    with torch.no_grad():
        probs = loaded.module(batch).softmax(-1)
    num_classes = probs.shape[-1]
    check_target_index(target, num_classes)
    if labels is not None and int(labels.max()) >= num_classes:
        raise UserError(f"--target gt: label {int(labels.max())} is outside 0..{num_classes - 1} "
                        f"(the model has {num_classes} outputs)")
    targets = resolve_targets(target, probs.argmax(-1), labels)
    if getattr(loaded.module, "num_classes", None) == 0:
        echo("note: the model has no classifier head; 'classes' below are feature dimensions (use --target to pick)")
    top = probs.topk(min(5, num_classes), dim=-1)
    top5 = [list(zip(i.tolist(), p.tolist())) for i, p in zip(top.indices, top.values)]
    for path, preds in zip(images, top5):
        echo(f"{Path(path).name}: " + "; ".join(f"{class_name(i, num_classes)} ({p:.3f})" for i, p in preds))
    if any(e.takes_target for e in explainers.values()):
        echo(f"target ({target}): explaining class " + ", ".join(str(int(t)) for t in targets))

    maps: dict[str, list[np.ndarray]] = {s: [] for s in specs}
    order = range(len(images))
    if progress and len(images) > 1:
        from rich.progress import track

        order = track(order, description="explaining", transient=True, console=None)
    for i in order:
        per = explain_many(loaded, batch[i : i + 1], list(explainers.values()), targets[i : i + 1])
        for s in specs:
            maps[s].append(per[s][0].numpy().astype(np.float32))
    stacked = {s: np.stack(v).astype(np.float32) for s, v in maps.items()}

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    from mimlab.outputs import unique_stems

    for i, (path, stem) in enumerate(zip(images, unique_stems(images))):
        for s in specs:
            f = out / f"{stem}__{slug(s)}.png"
            save_png(overlay(display[i], stacked[s][i]), f)
            files.append(f)
    grid = out / "grid.png"
    save_grid(list(display), [Path(p).name for p in images], stacked, grid)
    files.append(grid)
    if save_maps is not None:
        save_maps = Path(save_maps)
        save_maps.parent.mkdir(parents=True, exist_ok=True)
        with open(save_maps, "wb") as fh:  # a file handle keeps numpy from appending '.npz'
            np.savez(fh, **stacked)
        files.append(save_maps)
    pictures = len(files) - (save_maps is not None)
    print(f"wrote {pictures} images to {out}" + (f" and maps to {save_maps}" if save_maps else ""), file=sys.stderr)
    return ExplainResult(stacked, top5, files)
