"""ROAD through grad-cam: combined = (LeRF − MoRF)/2, deterministic and independent of batching."""

from __future__ import annotations

import pytest
import torch
from metric_models import tiny_cnn

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
    with pytest.raises(Exception, match="percentiles"):
        build_metric("road:percentiles=a/b")
