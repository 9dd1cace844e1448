"""Similarity of two saliency maps of the same image (the sanity check's measures, Adebayo et al. 2018).

* :func:`spearman` — Spearman rank correlation over pixels (average ranks for ties, as ``scipy.stats.spearmanr``);
* :func:`ssim` — structural similarity with a 7×7 uniform window, data range 1, ``K1 = 0.01``, ``K2 = 0.03`` and
  sample covariances, averaged over the window positions that fit inside the image (``skimage.metrics.
  structural_similarity``'s defaults, ``gaussian_weights=False``).

Both take batches ``[B,H,W]`` and return ``float64 [B]``; a constant map has no rank correlation (NaN).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 7


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of each row of ``x`` [B,M], tied values sharing their mean rank -> float64 [B,M]."""
    x = np.asarray(x).reshape(x.shape[0], -1)
    out = np.empty(x.shape, dtype=np.float64)
    for b, row in enumerate(x):
        order = np.argsort(row, kind="stable")
        sorted_row = row[order]
        starts = np.flatnonzero(np.r_[True, sorted_row[1:] != sorted_row[:-1]])
        ends = np.r_[starts[1:], row.size]
        group = np.repeat(np.arange(starts.size), ends - starts)
        out[b, order] = ((starts + ends - 1) / 2 + 1)[group]
    return out


def spearman(a: Tensor, b: Tensor) -> np.ndarray:
    """Per-image Spearman ρ between maps ``a`` and ``b`` [B,H,W] -> float64 [B] (NaN where a map is constant)."""
    ra = average_ranks(a.detach().double().cpu().flatten(1).numpy())  # [B,H,W] -> [B,M]
    rb = average_ranks(b.detach().double().cpu().flatten(1).numpy())
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0, window: int = SSIM_WINDOW) -> np.ndarray:
    """Per-image mean SSIM of maps ``a`` and ``b`` [B,H,W] in [0, ``data_range``] -> float64 [B]."""
    x = a.detach().double().cpu()[:, None]  # [B,H,W] -> [B,1,H,W]
    y = b.detach().double().cpu()[:, None]
    if min(x.shape[-2:]) < window:
        raise ValueError(f"ssim needs maps of at least {window}x{window} pixels, got {tuple(x.shape[-2:])}")
    n = window * window
    pool = lambda t: F.avg_pool2d(t, window, stride=1)  # noqa: E731 - valid positions only: [B,1,H-6,W-6]
    mx, my = pool(x), pool(y)
    cov = n / (n - 1)  # sample covariances
    vx = cov * (pool(x * x) - mx * mx)
    vy = cov * (pool(y * y) - my * my)
    vxy = cov * (pool(x * y) - mx * my)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).numpy()

