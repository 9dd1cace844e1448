"""Insertion / deletion perturbation curves (RISE causal metrics, as adapted by the thesis, methods-spec
§3.2).

Pixels are visited in order of decreasing saliency, ties broken by ascending flat pixel index (a stable sort;
bug B7 in methods-spec §8). State k of an image has its first ``k * step`` pixels (all channels) copied from
the *end* image into the *start* image; k = 0..n with n = ceil(H*W / step), so 225 states at 224² with step
224.

:func:`perturbation_curves` evaluates many (image, step) states per forward;
:func:`perturbation_curves_sequential` is the one-state-per-forward loop of the published code and is kept as
the reference the batched one must equal. Updates index the tensor directly, so they work on any device (bug
B8).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _reflect_index(j: int, n: int) -> int:
    """SciPy ``mode='reflect'`` (half-sample symmetric: d c b a | a b c d | d c b a) for any offset."""
    j %= 2 * n
    return j if j < n else 2 * n - 1 - j


def rise_blur_kernel(size: int = 11, sigma: float = 5.0, truncate: float = 4.0) -> Tensor:
    """The RISE insertion blur kernel: a centred delta in a ``size×size`` image, Gaussian-filtered.

    The filter is SciPy's ``gaussian_filter`` (radius ``int(truncate*sigma+0.5)``, reflect boundary), which
    with σ = 5 on an 11×11 image leaves an almost flat kernel (max/min ≈ 1.14, sum 1). Rebuilt here in closed
    form: the filter is separable and the delta factorises, so the kernel is ``outer(g, g)``.

    Returns:
        ``float64 [size, size]``.
    """
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = weights / weights.sum()  # [2r+1]
    centre = size // 2
    g = torch.zeros(size, dtype=torch.float64)
    for i in range(size):
        for k in range(-radius, radius + 1):
            if _reflect_index(i + k, size) == centre:
                g[i] += weights[k + radius]
    return torch.outer(g, g)  # [size] x [size] -> [size,size]


def blur(images: Tensor, kernel: Tensor | None = None) -> Tensor:
    """Per-channel 2-D convolution, zero padding, no channel mixing, in the images' own (normalised) space.

    Args:
        images: ``[B, C, H, W]``.
        kernel: ``[k, k]`` (odd k); default :func:`rise_blur_kernel`.

    Returns:
        ``[B, C, H, W]``.
    """
    kernel = rise_blur_kernel() if kernel is None else kernel
    c = images.shape[1]
    k = kernel.shape[-1]
    weight = kernel.to(images.dtype).to(images.device).expand(c, 1, k, k)  # [k,k] -> [C,1,k,k]
    return F.conv2d(images, weight, padding=k // 2, groups=c)


def pixel_order(maps: Tensor) -> Tensor:
    """Flat pixel indices by decreasing saliency, ties by ascending index.

    Args:
        maps: ``[B, H, W]``.

    Returns:
        ``LongTensor [B, H*W]``.
    """
    flat = maps.reshape(maps.shape[0], -1)  # [B,H,W] -> [B,HW]
    return torch.sort(-flat, dim=1, stable=True).indices


def num_steps(num_pixels: int, step: int) -> int:
    """n = ceil(H*W / step): the curve has n + 1 scores."""
    return math.ceil(num_pixels / step)


def auc(scores: Tensor) -> Tensor:
    """Trapezoid area on uniform steps over x ∈ [0, 1]: ``(Σ s_i − s_0/2 − s_n/2) / n``.

    Args:
        scores: ``[B, n+1]``.

    Returns:
        ``[B]``.
    """
    n = scores.shape[1] - 1
    return (scores.sum(dim=1) - scores[:, 0] / 2 - scores[:, -1] / 2) / n


def _class_score(logits: Tensor, classes: Tensor, score: str) -> Tensor:
    out = logits.float().softmax(dim=1) if score == "softmax" else logits.float()
    return out.gather(1, classes.view(-1, 1)).squeeze(1)  # [B,K] -> [B]


@torch.no_grad()
def perturbation_curves(
    model: torch.nn.Module,
    start: Tensor,
    end: Tensor,
    maps: Tensor,
    classes: Tensor,
    *,
    step: int,
    batch_size: int = 64,
    score: str = "softmax",
) -> Tensor:
    """Scores of every perturbation state, many states per forward.

    The state of (image i, step k) is ``where(rank_i < k*step, end_i, start_i)`` with ``rank_i`` the position
    of each pixel in :func:`pixel_order` — the same tensor the sequential loop reaches after k copies.

    Args:
        model: classifier returning logits ``[B, K]``.
        start: first state ``[B, C, H, W]`` (deletion: x; insertion: blur(x)).
        end: last state ``[B, C, H, W]`` (deletion: substrate; insertion: x).
        maps: saliency ``[B, H, W]``.
        classes: ``LongTensor [B]`` class scored per image.
        step: pixels changed per step.
        batch_size: states per forward (across images and steps).
        score: ``softmax`` or ``logit``.

    Returns:
        ``float [B, n+1]`` scores, s_0 before any change.
    """
    b, c, h, w = start.shape
    hw = h * w
    n = num_steps(hw, step)
    order = pixel_order(maps).to(start.device)  # [B,HW]
    rank = torch.empty_like(order)
    rank.scatter_(
        1, order, torch.arange(hw, device=start.device).expand(b, hw)
    )  # [B,HW]: position of each pixel
    classes = classes.to(start.device)
    total = b * (n + 1)
    scores = torch.empty(total, dtype=torch.float32, device=start.device)
    for lo in range(0, total, batch_size):
        flat = torch.arange(lo, min(lo + batch_size, total), device=start.device)
        img, k = flat // (n + 1), flat % (n + 1)  # [S], [S]
        changed = rank[img] < (k * step).unsqueeze(1)  # [S,HW]
        changed = changed.view(-1, 1, h, w)  # [S,HW] -> [S,1,H,W]
        states = torch.where(changed, end[img], start[img])  # [S,C,H,W]
        scores[lo : lo + len(flat)] = _class_score(model(states), classes[img], score)
    return scores.view(b, n + 1)  # [B*(n+1)] -> [B,n+1]


@torch.no_grad()
def perturbation_curves_sequential(
    model: torch.nn.Module,
    start: Tensor,
    end: Tensor,
    maps: Tensor,
    classes: Tensor,
    *,
    step: int,
    score: str = "softmax",
) -> Tensor:
    """The published one-state-per-forward loop (reference for :func:`perturbation_curves`).

    Same arguments and result as :func:`perturbation_curves`.
    """
    b, c, h, w = start.shape
    hw = h * w
    n = num_steps(hw, step)
    order = pixel_order(maps).to(start.device)
    out = torch.empty(b, n + 1, dtype=torch.float32)
    for i in range(b):
        current = start[i].clone().reshape(c, hw)  # [C,H,W] -> [C,HW]
        finish = end[i].reshape(c, hw)
        for k in range(n + 1):
            logits = model(current.view(1, c, h, w))
            out[i, k] = _class_score(logits, classes[i : i + 1].to(logits.device), score)[0].cpu()
            idx = order[i, k * step : (k + 1) * step]
            current[:, idx] = finish[:, idx]
    return out
