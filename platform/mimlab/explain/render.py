"""Heat-map overlays and the (images × methods) grid figure. numpy/PIL/matplotlib only, no model code."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _colormap(maps: np.ndarray) -> np.ndarray:
    """[H,W] in [0,1] -> uint8 [H,W,3] with matplotlib's jet (the thesis overlays)."""
    from matplotlib import colormaps

    rgba = colormaps["jet"](np.clip(maps, 0.0, 1.0))
    return (rgba[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a heat map over an image. image uint8 [H,W,3], heat [H,W] in [0,1] -> uint8 [H,W,3]."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * _colormap(heat).astype(np.float32)
    return np.clip(mixed, 0, 255).astype(np.uint8)


def slug(text: str) -> str:
    """A file-name-safe version of a method spec (``rollout:layers=9-12`` -> ``rollout_layers-9-12``)."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text.replace("=", "-")).strip("_") or "method"


def save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def save_grid(images: Sequence[np.ndarray], names: Sequence[str], maps: dict[str, np.ndarray], path: Path) -> None:
    """Rows = images, columns = the input then one overlay per method (as in the thesis tables).

    Args:
        images: uint8 [H,W,3] per row.
        names: row labels.
        maps: ``{method spec: float [num_images,H,W]}``.
        path: output PNG.
    """
    from matplotlib.figure import Figure  # not pyplot: the caller's backend (a notebook's inline one) stays as is

    methods = list(maps)
    rows, cols = len(images), len(methods) + 1
    fig = Figure(figsize=(2.2 * cols, 2.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, (img, name) in enumerate(zip(images, names)):
        axes[r, 0].imshow(img)
        axes[r, 0].set_ylabel(name, fontsize=7)
        for c, method in enumerate(methods, start=1):
            axes[r, c].imshow(overlay(img, maps[method][r]))
        for c in range(cols):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    axes[0, 0].set_title("input", fontsize=8)
    for c, method in enumerate(methods, start=1):
        axes[0, c].set_title(method, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
