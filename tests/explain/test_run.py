"""Preprocessing for ``platform explain``: direct resize, the model's statistics, the legacy BGR flag (bug B1)."""

from __future__ import annotations

import numpy as np
import torch

from mimlab.explain.render import overlay, slug
from mimlab.explain.run import preprocess


def test_preprocess_normalises_with_given_stats():
    img = np.zeros((10, 20, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 51, 0
    display, x = preprocess([img], 8, (0.5, 0.2, 0.1), (0.5, 0.1, 0.2))
    assert display.shape == (1, 8, 8, 3) and x.shape == (1, 3, 8, 8)
    # independent: (v/255 - mean) / std per channel of a constant image
    expected = [(1.0 - 0.5) / 0.5, (0.2 - 0.2) / 0.1, (0.0 - 0.1) / 0.2]
    for c in range(3):
        torch.testing.assert_close(x[0, c], torch.full((8, 8), expected[c]), atol=1e-5, rtol=0)


def test_bgr_legacy_swaps_channels_fed_not_shown():
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    img[..., 0] = 200
    shown, rgb = preprocess([img], 4, (0, 0, 0), (1, 1, 1))
    shown_bgr, bgr = preprocess([img], 4, (0, 0, 0), (1, 1, 1), channel_order="bgr_legacy")
    assert np.array_equal(shown, shown_bgr)
    torch.testing.assert_close(bgr, rgb.flip(1))


def test_overlay_and_slug():
    img = np.full((3, 3, 3), 100, dtype=np.uint8)
    out = overlay(img, np.ones((3, 3)))
    assert out.shape == (3, 3, 3) and out.dtype == np.uint8 and not np.array_equal(out, img)
    assert slug("rollout:layers=9-12,order=ascending") == "rollout_layers-9-12_order-ascending"
    assert slug("gradcam++") == "gradcam++"
