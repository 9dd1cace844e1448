"""ROAD through grad-cam: combined = (LeRF − MoRF)/2, deterministic and independent of batching."""

from __future__ import annotations

import pytest
import torch
from metric_models import tiny_cnn

from mimlab.errors import UserError
from mimlab.metrics import build_metric


def test_road_is_deterministic_per_image_and_combines_lerf_and_morf():
    torch.manual_seed(0)
    model = tiny_cnn()
    images = torch.randn(2, 3, 16, 16)
    maps = torch.rand(2, 16, 16)
    mean, std = torch.zeros(3), torch.ones(3)
    morf = build_metric("road-morf:percentiles=20/80")
    lerf = build_metric("road-lerf:percentiles=20/80")
    comb = build_metric("road:percentiles=20/80")
    m = morf(model, images, maps, None, mean, std)
    one = morf(model, images[1:], maps[1:], None, mean, std)
    assert m.shape == (2,) and m[1].item() == one[0].item()  # same value alone or in a batch
    assert m.equal(morf(model, images, maps, None, mean, std))  # fixed seed
    expected = (lerf(model, images, maps, None, mean, std) - m) / 2
    torch.testing.assert_close(comb(model, images, maps, None, mean, std), expected)
    assert not morf.higher_is_better and lerf.higher_is_better and comb.higher_is_better
    with pytest.raises(UserError, match="percentiles"):
        build_metric("road:percentiles=a/b")


def test_road_equals_a_direct_recomputation_from_the_imputer():
    """Golden: threshold at each percentile, impute with grad-cam's NoisyLinearImputer under the metric's seed,
    score softmax(f(x))[predicted] after − before, average over percentiles — written out here step by step."""
    import numpy as np
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    torch.manual_seed(0)
    model = tiny_cnn()
    images = torch.randn(2, 3, 16, 16)
    maps = torch.rand(2, 16, 16)
    mean, std = torch.zeros(3), torch.ones(3)
    percentiles = (20, 50, 80)

    def change(i: int, most_relevant_first: bool) -> float:
        x = images[i]
        cam = maps[i].numpy() if most_relevant_first else 1 - maps[i].numpy()
        with torch.no_grad():
            c = int(model(x[None]).argmax())
            before = model(x[None]).softmax(1)[0, c].item()
        total = 0.0
        for p in percentiles:
            keep = torch.from_numpy(np.float32(cam < np.percentile(cam, p)))  # 0 = removed, then imputed
            torch.manual_seed(0)  # the metric's default seed, drawn once per imputation
            filled = NoisyLinearImputer()(x, keep)
            with torch.no_grad():
                total += model(filled[None]).softmax(1)[0, c].item() - before
        return total / len(percentiles)

    spec = "percentiles=20/50/80"
    morf = build_metric(f"road-morf:{spec}")(model, images, maps, None, mean, std)
    lerf = build_metric(f"road-lerf:{spec}")(model, images, maps, None, mean, std)
    comb = build_metric(f"road:{spec}")(model, images, maps, None, mean, std)
    for i in range(2):
        assert morf[i].item() == pytest.approx(change(i, True), abs=1e-6)
        assert lerf[i].item() == pytest.approx(change(i, False), abs=1e-6)
        assert comb[i].item() == pytest.approx((change(i, False) - change(i, True)) / 2, abs=1e-6)
    assert morf.abs().max() > 1e-4  # the removal changes the score: not a vacuous comparison
