"""Uncertainty of per-image averages: a seeded percentile bootstrap and a paired test. numpy only, no model code.

* :func:`bootstrap_ci` — 95 % percentile-bootstrap interval of the mean over images (the resampling draws and
  the percentile rule are those of ``scipy.stats.bootstrap(method="percentile")``, so a seed gives the same
  interval there).
* :func:`paired_test` — two-sided Wilcoxon signed-rank test of two methods scored on the same images (zero
  differences dropped; exact null distribution for n ≤ 50 without ties, else the normal approximation with the
  tie correction and no continuity correction — ``scipy.stats.wilcoxon``'s defaults).

NaN values (e.g. a metric undefined on an image) are left out; a paired test drops the images where either
value is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 1000
BOOTSTRAP = "percentile bootstrap of the mean over images"
PAIRED_TEST = "two-sided Wilcoxon signed-rank test over the same images"


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr[np.isfinite(arr)]


def bootstrap_ci(
    values: Sequence[float], seed: int = 0, *, resamples: int = RESAMPLES, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values``.

    Args:
        values: one number per image (NaN ignored).
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same interval.
        resamples: bootstrap resamples.
        level: confidence level.
    Returns:
        ``(low, high)``; ``(nan, nan)`` without finite values, ``(v, v)`` for a single one.
    """
    x = _finite(values)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, (resamples, x.size))  # [R,n]
    means = x[idx].mean(axis=1)  # [R,n] -> [R]
    alpha = (1 - level) / 2
    lo, hi = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def _ranks(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """Average ranks (1-based) of ``x`` and whether ties occur."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    ties = False
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        ties |= j > i
        i = j + 1
    return ranks, ties


def _exact_cdf(n: int, r: float) -> float:
    """P(R⁺ ≤ r) under H0 for n untied ranks (subset-sum counts of {1..n} over 2ⁿ)."""
    counts = np.zeros(n * (n + 1) // 2 + 1, dtype=np.float64)
    counts[0] = 1.0
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    return float(counts[: int(math.floor(r)) + 1].sum() / 2.0**n)


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | str | int]:
    """Are ``a`` and ``b`` (two methods on the same images, in the same order) different?

    Returns:
        ``{"test", "n", "statistic" (min(R⁺, R⁻)), "p", "mean_diff" (mean of a − b)}``; ``p`` is NaN with fewer
        than 2 non-zero differences (no evidence either way) and 1.0 when every difference is 0.
    Raises:
        ValueError: ``a`` and ``b`` differ in length.
    """
    x, y = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired_test needs two equally long samples, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    out: dict[str, float | str | int] = {"test": PAIRED_TEST, "n": int(d.size),
                                         "mean_diff": float(d.mean()) if d.size else math.nan}
    d = d[d != 0]
    if d.size == 0:
        return {**out, "statistic": 0.0, "p": 1.0 if keep.any() else math.nan}
    if d.size < 2:
        return {**out, "statistic": math.nan, "p": math.nan}
    n = d.size
    ranks, ties = _ranks(np.abs(d))
    r_plus = float(ranks[d > 0].sum())
    r_minus = float(ranks[d < 0].sum())
    stat = min(r_plus, r_minus)
    if n <= 50 and not ties:
        p = min(1.0, 2.0 * _exact_cdf(n, stat))
    else:
        _, counts = np.unique(np.abs(d), return_counts=True)
        var = n * (n + 1) * (2 * n + 1) / 24 - float((counts**3 - counts).sum()) / 48
        z = (r_plus - n * (n + 1) / 4) / math.sqrt(var) if var > 0 else 0.0
        p = min(1.0, math.erfc(abs(z) / math.sqrt(2)))  # 2 * normal survival of |z|
    return {**out, "statistic": stat, "p": p}
