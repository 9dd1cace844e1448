"""mimlab.stats: the bootstrap interval and the paired test, golden against scipy's own implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from mimlab.stats import bootstrap_ci, paired_test


@pytest.mark.parametrize("n,seed", [(5, 0), (37, 5), (200, 11)])
def test_bootstrap_ci_equals_scipy_percentile_bootstrap_with_the_same_seed(n, seed):
    x = np.random.default_rng(n).normal(size=n)
    # golden: scipy.stats.bootstrap draws its resamples from the same Generator stream
    ref = scipy.stats.bootstrap((x,), np.mean, n_resamples=1000, method="percentile",
                                rng=np.random.default_rng(seed), vectorized=True).confidence_interval
    lo, hi = bootstrap_ci(x, seed)
    assert lo == pytest.approx(ref.low, rel=1e-12) and hi == pytest.approx(ref.high, rel=1e-12)
    assert lo < x.mean() < hi


def test_bootstrap_ci_ignores_nan_and_handles_tiny_samples():
    assert bootstrap_ci([1.0, math.nan, 3.0], 0) == bootstrap_ci([1.0, 3.0], 0)
    assert bootstrap_ci([2.5], 0) == (2.5, 2.5)
    assert all(math.isnan(v) for v in bootstrap_ci([math.nan], 0))
    assert bootstrap_ci(np.arange(10.0), 1) != bootstrap_ci(np.arange(10.0), 2)  # the seed matters


def test_paired_test_exact_equals_scipy_wilcoxon_exact():
    a = np.random.default_rng(2).normal(size=30)
    b = a + np.random.default_rng(3).normal(0.3, 1, 30)
    ref = scipy.stats.wilcoxon(a, b, method="exact")  # golden: scipy's exact signed-rank distribution
    res = paired_test(a, b)
    assert res["statistic"] == ref.statistic and res["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert "Wilcoxon" in res["test"] and res["n"] == 30


def test_paired_test_with_ties_and_zeros_equals_scipy_normal_approximation():
    a = np.round(np.random.default_rng(4).normal(size=80), 1)
    b = np.round(np.random.default_rng(5).normal(0.2, 1, 80), 1)
    b[:3] = a[:3]  # zero differences are dropped (zero_method="wilcox")
    ref = scipy.stats.wilcoxon(a, b, method="approx", zero_method="wilcox")
    res = paired_test(a, b)
    assert res["statistic"] == ref.statistic and res["p"] == pytest.approx(ref.pvalue, rel=1e-10)


def test_paired_test_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(size=60)
    assert paired_test(a + 0.5 + rng.normal(0, 0.1, 60), a)["p"] < 1e-6
    assert paired_test(a, a)["p"] == 1.0
    with pytest.raises(ValueError, match="equally long"):
        paired_test([1.0, 2.0], [1.0])
