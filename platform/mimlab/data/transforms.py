"""Image transforms on uint8 numpy arrays, shared by the Ray Data pipeline and torch DataLoaders.

:class:`MultiCrop` reproduces the DINO/iBOT multi-crop augmentation (methods-spec §4.2):

* global crop 1: RandomResizedCrop(global_size, global_scale, bicubic) → h-flip p .5 → ColorJitter(.4,.4,.2,.1)
  p .8 → grayscale p .2 → GaussianBlur p 1.0 (radius U(0.1, 2));
* global crops 2..G: the same, but blur p 0.1 and solarize p 0.2;
* local crops: RandomResizedCrop(local_size, local_scale, bicubic) → flip/jitter/grayscale → blur p 0.5.

Crops are emitted as ``uint8 [S,S,3]``; normalisation happens later on the training device (:func:`normalise`).
Parameters are drawn per crop with numpy (:func:`draw_boxes`, :func:`draw_crop_params`); boxes are cut per image
with PIL (bicubic), and the colour operations run batched on tensors (:func:`photometric`), in the crop stage or,
with ``device: gpu``, on the training device after the transfer (:func:`apply_deferred`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image
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
    device: Literal["cpu", "gpu"] = Field("cpu", description="where the colour augmentations run: in the crop "
                                          "stage (cpu) or batched on the training device after transfer (gpu)")

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


CROP_PARAMS = ("flip", "jitter", "brightness", "contrast", "saturation", "hue", "order_0", "order_1", "order_2",
               "order_3", "gray", "blur_radius", "solarize")
"""Columns of a crop's parameter row (``float32 [n, 13]``): flags are 0/1, ``order_j`` is the jitter op applied
j-th (0 brightness, 1 contrast, 2 saturation, 3 hue), ``blur_radius`` 0 means no blur."""


def draw_crop_params(rng: np.random.Generator, n: int, blur_p: float, solarize_p: float,
                     jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
                     blur_radius: tuple[float, float] = (0.1, 2.0)) -> np.ndarray:
    """Draw the photometric parameters of ``n`` crops of one kind (methods-spec §4.2), vectorised.

    h-flip p .5; ColorJitter(.4, .4, .2, .1) p .8 with factors ``U(1-x, 1+x)`` (hue ``U(-x, x)``) and a uniformly
    random op order; grayscale p .2; Gaussian blur p ``blur_p`` with radius ``U(blur_radius)``; solarize p
    ``solarize_p``.

    Returns:
        ``float32 [n, 13]`` in :data:`CROP_PARAMS` order.
    """
    b, c, sat, hue = jitter
    out = np.zeros((n, len(CROP_PARAMS)), dtype=np.float32)
    out[:, 0] = rng.random(n) < 0.5
    out[:, 1] = rng.random(n) < 0.8
    out[:, 2] = rng.uniform(1 - b, 1 + b, n)
    out[:, 3] = rng.uniform(1 - c, 1 + c, n)
    out[:, 4] = rng.uniform(1 - sat, 1 + sat, n)
    out[:, 5] = rng.uniform(-hue, hue, n)
    out[:, 6:10] = np.argsort(rng.random((n, 4)), axis=1)  # a uniform random permutation per crop
    out[:, 10] = rng.random(n) < 0.2
    out[:, 11] = np.where(rng.random(n) < blur_p, rng.uniform(*blur_radius, n), 0.0)
    out[:, 12] = rng.random(n) < solarize_p
    return out


def draw_boxes(rng: np.random.Generator, height: int, width: int, n: int, scale: tuple[float, float],
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """torchvision's RandomResizedCrop box sampler for ``n`` boxes at once: ``int64 [n, 4]`` (top, left, h, w).

    Per box: ten tries at an area fraction ``U(scale)`` and a log-uniform aspect ratio; the first try that fits
    wins; if none fits, a centre crop with the ratio clamped to ``ratio``.
    """
    area = height * width
    target = area * rng.uniform(scale[0], scale[1], (n, 10))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, 10)))
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)  # round half to even, like Python's round()
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # [n, 10]
    first = fits.argmax(1)
    rows = np.arange(n)
    bh, bw = h[rows, first], w[rows, first]
    top = np.floor(rng.random(n) * (height - bh + 1)).astype(np.int64)
    left = np.floor(rng.random(n) * (width - bw + 1)).astype(np.int64)
    none = ~fits.any(1)
    if none.any():
        in_ratio = width / height
        if in_ratio < min(ratio):
            fw, fh = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            fh, fw = height, int(round(height * max(ratio)))
        else:
            fw, fh = width, height
        bh[none], bw[none], top[none], left[none] = fh, fw, (height - fh) // 2, (width - fw) // 2
    return np.stack([top, left, bh, bw], 1)


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """One box of :func:`draw_boxes`: ``(top, left, h, w)``."""
    top, left, h, w = draw_boxes(rng, height, width, 1, scale, ratio)[0]
    return int(top), int(left), int(h), int(w)


# ---------------------------------------------------------------------------------------------------------------
# Photometric ops on float batches [n, 3, S, S] in [0, 1] (torchvision's tensor semantics, per-sample factors)
# ---------------------------------------------------------------------------------------------------------------


def _gray(x):
    """ITU-R 601-2 luma ``[n,3,S,S] -> [n,1,S,S]`` (torchvision ``rgb_to_grayscale`` weights)."""
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(x, other, factor):
    return (factor.view(-1, 1, 1, 1) * x + (1 - factor.view(-1, 1, 1, 1)) * other).clamp_(0.0, 1.0)


def adjust_brightness(x, factor):
    """``x * f``, clamped."""
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def adjust_contrast(x, factor):
    """Blend with the per-image mean of the grayscale image."""
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x, factor):
    """Blend with the grayscale image."""
    return _blend(x, _gray(x), factor)


def adjust_hue(x, shift):
    """Rotate the hue by ``shift`` turns (RGB -> HSV -> RGB, as torchvision's tensor ``adjust_hue``)."""
    import torch

    r, g, b = x.unbind(1)  # [n,S,S] each
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h6 = torch.remainder(h + shift.view(-1, 1, 1), 1.0) * 6.0  # [n,S,S] hue in sextants
    vs = maxc * s
    out = []
    for k in (5.0, 3.0, 1.0):  # R, G, B = v - v·s·clamp(min(k', 4 - k'), 0, 1), k' = (k + 6h) mod 6
        kk = torch.remainder(h6 + k, 6.0)
        out.append(maxc - vs * torch.minimum(kk, 4.0 - kk).clamp_(0.0, 1.0))
    return torch.stack(out, 1)


_JITTER = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def gaussian_blur(x, sigma):
    """Separable Gaussian blur with a per-image standard deviation ``sigma [n]`` (pixels; PIL's ``radius``),
    kernel radius ⌈3σ⌉, edge pixels replicated."""
    import torch
    import torch.nn.functional as F

    n, ch, hgt, wid = x.shape
    radius = int(math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)  # [k]
    kernel = torch.exp(-0.5 * (offsets / sigma.view(-1, 1)) ** 2)  # [n, k]
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(ch, 0)  # [n*3, k]
    y = x.reshape(1, n * ch, hgt, wid)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), kernel.view(n * ch, 1, 1, -1), groups=n * ch)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), kernel.view(n * ch, 1, -1, 1), groups=n * ch)
    return y.view(n, ch, hgt, wid)


def photometric(crops, params):
    """ColorJitter → grayscale → blur → solarize of a batch, each crop with its own parameter row.

    The flip (a geometric op) is applied where the crop is cut, not here. This is the one implementation of the
    colour augmentations; it runs inside the crop stage (``crops.device: cpu``) or on the training device after
    the transfer (``crops.device: gpu``).

    Args:
        crops: ``uint8 [n, S, S, 3]`` (numpy or torch, any device).
        params: ``float32 [n, 13]`` rows of :func:`draw_crop_params`.

    Returns:
        float tensor ``[n, 3, S, S]`` with values in [0, 255] (not rounded) on the crops' device.
    """
    import torch

    x = torch.as_tensor(crops).permute(0, 3, 1, 2).float().div_(255.0)  # [n,S,S,3] -> [n,3,S,S]
    p = torch.as_tensor(params, device=x.device, dtype=torch.float32)
    jitter = p[:, 1] > 0
    order = p[:, 6:10].long()
    for slot in range(4):
        for k, op in enumerate(_JITTER):
            idx = torch.nonzero(jitter & (order[:, slot] == k)).flatten()
            if idx.numel():
                x[idx] = op(x[idx], p[idx, 2 + k])
    idx = torch.nonzero(p[:, 10] > 0).flatten()
    if idx.numel():
        x[idx] = _gray(x[idx]).expand(-1, 3, -1, -1)
    idx = torch.nonzero(p[:, 11] > 0).flatten()
    if idx.numel():
        x[idx] = gaussian_blur(x[idx], p[idx, 11])
    x = x.mul_(255.0)
    idx = torch.nonzero(p[:, 12] > 0).flatten()
    if idx.numel():  # values >= 128 inverted (on the uint8 value the crop would have)
        v = x[idx].round()
        x[idx] = torch.where(v >= 128, 255.0 - v, x[idx])
    return x


def to_uint8(x):
    """``float [n,3,S,S]`` in [0,255] → ``uint8 [n,S,S,3]`` numpy (rounded)."""
    import torch

    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def draft_scale(cfg: MultiCropConfig, height: int, width: int) -> int:
    """Largest JPEG draft reduction (1, 2, 4 or 8) after which every crop the sampler can draw still has at least
    its output side in source pixels: the smallest box side is ``sqrt(min_scale · H · W · 3/4)``."""
    need = []
    for scale, size in ((cfg.global_scale, cfg.global_size), (cfg.local_scale, cfg.local_size)):
        if size and (scale is cfg.global_scale or cfg.local_crops):
            need.append(math.sqrt(scale[0] * height * width * 0.75) / size)
    room = min(need) if need else 1.0
    for d in (8, 4, 2):
        if room >= d:
            return d
    return 1


def decode_for_crops(data: bytes, cfg: MultiCropConfig) -> Image.Image:
    """Decode JPEG/PNG bytes to an RGB PIL image, JPEGs at the smallest DCT scale the crops allow
    (:func:`draft_scale`; ``Image.draft`` decodes at 1/2, 1/4 or 1/8 without a full-size decode).

    Raises:
        CorruptImage: an image over the pixel limit (checked before decoding: a bomb costs no memory).
        Any of :data:`mimlab.data.decode.REFUSED`: other undecodable bytes (the caller skips and counts them).
    """
    from mimlab.data.decode import open_checked

    img = open_checked(data)
    if img.format == "JPEG":
        d = draft_scale(cfg, img.height, img.width)
        if d > 1:
            img.draft("RGB", (img.width // d, img.height // d))
    return img.convert("RGB")


class MultiCrop:
    """Draw the G global and L local crops of a batch of images.

    Geometry (RandomResizedCrop, bicubic, and the flip) is cut per image with PIL; the colour augmentations run
    batched over all crops of one size (:func:`photometric`). With ``cfg.device == "gpu"`` (or ``defer=True``) the
    colour step is left to the training device: the crops come out geometric only, each with a ``<name>_params``
    column that :func:`apply_deferred` consumes after the transfer.

    Args:
        cfg: the multi-crop settings.
    """

    def __init__(self, cfg: MultiCropConfig, defer: bool | None = None) -> None:
        self.cfg = cfg
        self.defer = cfg.device == "gpu" if defer is None else defer

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One image ``uint8 [H,W,3]`` → ``{name: uint8 [S,S,3]}`` (a batch of one)."""
        return {k: v[0] for k, v in self.batch([Image.fromarray(img)], [rng]).items()}

    def batch(self, images: list, rngs: list[np.random.Generator] | np.random.Generator) -> dict[str, np.ndarray]:
        """Images (PIL RGB or ``uint8 [H,W,3]``) → ``{name: uint8 [B,S,S,3]}`` (+ ``{name}_params [B,13]`` when
        deferred). ``rngs``: one generator for the whole batch, or one per image (per-image reproducibility)."""
        cfg = self.cfg
        images = [im if isinstance(im, Image.Image) else Image.fromarray(im) for im in images]
        n = len(images)
        per_image = isinstance(rngs, (list, tuple))
        kinds = [(f"global_{i}", cfg.global_size, cfg.global_scale, (1.0, 0.0) if i == 0 else (0.1, 0.2))
                 for i in range(cfg.global_crops)]
        kinds += [(f"local_{i}", cfg.local_size, cfg.local_scale, (0.5, 0.0)) for i in range(cfg.local_crops)]
        boxes = {name: np.zeros((n, 4), np.int64) for name, *_ in kinds}
        by_shape: dict[tuple[int, int], list[int]] = {}
        for j, im in enumerate(images):
            by_shape.setdefault((im.height, im.width), []).append(j)
        params = {}
        for name, size, scale, (blur_p, sol_p) in kinds:
            if per_image:
                rows = []
                for j, (im, rng) in enumerate(zip(images, rngs)):
                    boxes[name][j] = draw_boxes(rng, im.height, im.width, 1, scale)[0]
                    rows.append(draw_crop_params(rng, 1, blur_p, sol_p, blur_radius=cfg.blur_radius))
                params[name] = np.concatenate(rows) if rows else np.zeros((0, len(CROP_PARAMS)), np.float32)
            else:  # one vectorised draw per image size
                for (hgt, wid), idx in by_shape.items():
                    boxes[name][idx] = draw_boxes(rngs, hgt, wid, len(idx), scale)
                params[name] = draw_crop_params(rngs, n, blur_p, sol_p, blur_radius=cfg.blur_radius)
        out: dict[str, np.ndarray] = {}
        for name, size, *_ in kinds:
            arr = np.empty((n, size, size, 3), dtype=np.uint8)
            for j, im in enumerate(images):
                top, left, h, w = (int(v) for v in boxes[name][j])
                arr[j] = np.asarray(im.resize((size, size), _BICUBIC, box=(left, top, left + w, top + h)))
            flip = params[name][:, 0] > 0
            arr[flip] = arr[flip, :, ::-1]
            out[name] = arr
        if self.defer:
            out.update({f"{name}_params": params[name] for name, *_ in kinds})
            return out
        return self._colour(out, params)

    @staticmethod
    def _colour(crops: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Colour step in the stage: all crops of one size in one batched call."""
        import torch

        by_size: dict[int, list[str]] = {}
        for name, arr in crops.items():
            by_size.setdefault(arr.shape[1], []).append(name)
        out = {}
        with torch.no_grad():
            for names in by_size.values():
                sizes = [len(crops[k]) for k in names]
                x = photometric(np.concatenate([crops[k] for k in names]), np.concatenate([params[k] for k in names]))
                for k, part in zip(names, np.split(to_uint8(x), np.cumsum(sizes)[:-1])):
                    out[k] = part
        return {k: out[k] for k in crops}


def apply_deferred(columns: dict, name: str, device=None):
    """Crop column ``name`` as float ``[B,3,S,S]`` in [0,255] on ``device``: its colour step applied there when the
    stage deferred it (a ``{name}_params`` column is present), else the uint8 crop as is."""
    import torch

    crops = torch.as_tensor(columns[name]).to(device, non_blocking=True)
    key = f"{name}_params"
    if key not in columns:
        return crops.permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return photometric(crops, torch.as_tensor(columns[key]).to(device, non_blocking=True))


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
    return standardise(x.permute(0, 3, 1, 2).float(), mean, std)  # [B,H,W,3] -> [B,3,H,W]


def standardise(x, mean: Sequence[float], std: Sequence[float]):
    """float ``[B,3,H,W]`` with values in [0,255] → ``(x/255 - mean) / std``."""
    import torch

    x = x.div(255.0)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
