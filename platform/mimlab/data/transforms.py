"""Image transforms on uint8 numpy arrays, shared by the Ray Data pipeline and torch DataLoaders.

:class:`MultiCrop` reproduces the DINO/iBOT multi-crop augmentation (methods-spec §4.2):

* global crop 1: RandomResizedCrop(global_size, global_scale, bicubic) → h-flip p .5 → ColorJitter(.4,.4,.2,.1)
  p .8 → grayscale p .2 → GaussianBlur p 1.0 (radius U(0.1, 2));
* global crops 2..G: the same, but blur p 0.1 and solarize p 0.2;
* local crops: RandomResizedCrop(local_size, local_scale, bicubic) → flip/jitter/grayscale → blur p 0.5.

Crops are emitted as ``uint8 [S,S,3]``; normalisation happens later on the training device (:func:`normalise`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from pydantic import BaseModel, ConfigDict, Field, model_validator

_BICUBIC = Image.Resampling.BICUBIC


class MultiCropConfig(BaseModel):
    """Multi-crop settings (embedded in the pretraining config; unknown keys are errors).

    Defaults fit the CPU demo (32 px images, patch-4 ViT); the thesis uses 224/96 px, scales (0.25, 1)/(0.05, 0.25)
    and 6 or 10 local crops.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    global_crops: int = Field(2, ge=1, le=3, description="number of global crops G (1..3)")
    global_size: int = Field(32, ge=4, description="side of a global crop, pixels")
    local_crops: int = Field(4, ge=0, description="number of local crops L")
    local_size: int = Field(16, ge=4, description="side of a local crop, pixels")
    global_scale: tuple[float, float] = Field((0.25, 1.0), description="area range of global crops")
    local_scale: tuple[float, float] = Field((0.05, 0.25), description="area range of local crops")
    blur_radius: tuple[float, float] = Field((0.1, 2.0), description="Gaussian blur radius range (pixels)")

    @model_validator(mode="after")
    def _check_ranges(self) -> MultiCropConfig:
        for name in ("global_scale", "local_scale", "blur_radius"):
            lo, hi = getattr(self, name)
            if not (0 < lo <= hi) or (name != "blur_radius" and hi > 1):
                raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi" + (" <= 1" if name != "blur_radius"
                                                                                 else "") + f", got {(lo, hi)}")
        return self

    def names(self) -> list[str]:
        """Output column names: ``global_0..global_{G-1}``, ``local_0..local_{L-1}``."""
        return [f"global_{i}" for i in range(self.global_crops)] + [f"local_{i}" for i in range(self.local_crops)]


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampler: ``(top, left, h, w)``.

    Ten tries at a random area fraction in ``scale`` and log-uniform aspect ratio, then a centre crop with the
    ratio clamped to ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _resized_crop(img: np.ndarray, box: tuple[int, int, int, int], size: int) -> Image.Image:
    top, left, h, w = box
    return Image.fromarray(img).resize((size, size), _BICUBIC, box=(left, top, left + w, top + h))


def jitter_op(img: Image.Image, op: str, factor: float) -> Image.Image:
    """One ColorJitter adjustment on a PIL RGB image, as torchvision does it on PIL images.

    ``op`` is ``"brightness"``/``"contrast"``/``"saturation"`` (blend factor) or ``"hue"`` (shift in turns,
    applied to the uint8 hue channel modulo 256).
    """
    if op == "brightness":
        return ImageEnhance.Brightness(img).enhance(factor)
    if op == "contrast":
        return ImageEnhance.Contrast(img).enhance(factor)
    if op == "saturation":
        return ImageEnhance.Color(img).enhance(factor)
    h, s, v = img.convert("HSV").split()
    shifted = (np.asarray(h, dtype=np.int16) + int(factor * 255)) % 256  # [H,W] uint8 hue, wrapped
    return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8), "L"), s, v)).convert("RGB")


_JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def color_jitter(img: Image.Image, rng: np.random.Generator, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.2, hue: float = 0.1) -> Image.Image:
    """torchvision-style ColorJitter on a PIL RGB image: the four adjustments in a random order.

    Factors are drawn first (brightness, contrast, saturation from ``U(1-x, 1+x)``, hue from ``U(-hue, hue)``),
    then the order.
    """
    factors = (rng.uniform(1 - brightness, 1 + brightness), rng.uniform(1 - contrast, 1 + contrast),
               rng.uniform(1 - saturation, 1 + saturation), rng.uniform(-hue, hue))
    for k in rng.permutation(4):
        if factors[k] != (0.0 if k == 3 else 1.0):
            img = jitter_op(img, _JITTER_OPS[k], factors[k])
    return img


class MultiCrop:
    """Draw the G global and L local crops of one image.

    Args:
        cfg: the multi-crop settings.

    Call with ``(img uint8 [H,W,3], rng)``; returns ``{name: uint8 [S,S,3]}`` in :meth:`MultiCropConfig.names`
    order.
    """

    def __init__(self, cfg: MultiCropConfig) -> None:
        self.cfg = cfg

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        cfg, (height, width) = self.cfg, img.shape[:2]
        out: dict[str, np.ndarray] = {}
        for i in range(cfg.global_crops):
            blur_p, solarize_p = (1.0, 0.0) if i == 0 else (0.1, 0.2)
            box = random_resized_crop_box(rng, height, width, cfg.global_scale)
            out[f"global_{i}"] = self._augment(_resized_crop(img, box, cfg.global_size), rng, blur_p, solarize_p)
        for i in range(cfg.local_crops):
            box = random_resized_crop_box(rng, height, width, cfg.local_scale)
            out[f"local_{i}"] = self._augment(_resized_crop(img, box, cfg.local_size), rng, 0.5, 0.0)
        return out

    def _augment(self, crop: Image.Image, rng: np.random.Generator, blur_p: float, solarize_p: float) -> np.ndarray:
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.8:
            crop = color_jitter(crop, rng)
        if rng.random() < 0.2:
            crop = crop.convert("L").convert("RGB")  # ITU-R 601-2 luma, as torchvision's Grayscale on PIL
        if rng.random() < blur_p:
            crop = crop.filter(ImageFilter.GaussianBlur(rng.uniform(*self.cfg.blur_radius)))
        if rng.random() < solarize_p:
            crop = ImageOps.solarize(crop, threshold=128)  # values >= 128 inverted
        return np.array(crop, dtype=np.uint8)  # [S,S,3], a writable copy


def eval_transform(img: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``int(size / 0.875)`` (bicubic) and centre-crop ``size``: ``uint8 [size,size,3]``."""
    height, width = img.shape[:2]
    short = int(size / 0.875)
    if height <= width:
        new_h, new_w = short, int(short * width / height)
    else:
        new_h, new_w = int(short * height / width), short
    resized = np.asarray(Image.fromarray(img).resize((new_w, new_h), _BICUBIC))
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return np.ascontiguousarray(resized[top:top + size, left:left + size])  # [h,w,3] -> [size,size,3]


def normalise(batch, mean: Sequence[float], std: Sequence[float]):
    """``uint8 [B,H,W,3]`` (numpy or torch) → float tensor ``[B,3,H,W]`` scaled to [0,1] then standardised."""
    import torch

    x = torch.as_tensor(np.asarray(batch) if not isinstance(batch, torch.Tensor) else batch)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # [B,H,W,3] -> [B,3,H,W]
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
