"""Localisation metrics on synthetic masks with answers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mimlab.errors import UserError
from mimlab.metrics import build_metric
from mimlab.metrics.localisation import energy_pointing_game, pointing_game, topk_iou


def _square_mask():
    m = torch.zeros(1, 8, 8, dtype=torch.bool)
    m[0, :4, :4] = True  # 16 of 64 pixels, top-left
    return m


def test_pointing_game_hit_and_miss():
    mask = _square_mask().expand(2, -1, -1)
    maps = torch.zeros(2, 8, 8)
    maps[0, 1, 1] = 1.0  # inside
    maps[1, 7, 7] = 1.0  # outside
    assert pointing_game(maps, mask).tolist() == [1.0, 0.0]
    flat = torch.ones(1, 8, 8)  # tie everywhere: the first maximum (pixel 0) is inside
    assert pointing_game(flat, _square_mask()).tolist() == [1.0]


def test_energy_pointing_game_shares():
    mask = _square_mask()
    assert energy_pointing_game(torch.ones(1, 8, 8), mask).tolist() == pytest.approx([16 / 64])
    m = mask.float() * 3 + (~mask).float() * 1  # 16*3 inside, 48*1 outside -> 48/96
    assert energy_pointing_game(m, mask).tolist() == pytest.approx([0.5])
    assert energy_pointing_game(torch.zeros(1, 8, 8), mask).tolist() == [0.0]


def test_topk_iou_known_answers():
    mask = _square_mask()
    assert topk_iou(mask.float(), mask, 25).tolist() == pytest.approx([1.0])
    assert topk_iou(1 - mask.float(), mask, 25).tolist() == pytest.approx([0.0])
    # all-ones map, ties by index: top 16 = rows 0-1 (8 px each); 8 of them in the mask -> 8 / (16 + 16 - 8)
    assert topk_iou(torch.ones(1, 8, 8), mask, 25).tolist() == pytest.approx([1 / 3])
    # top 50 % of the exact mask map = the 16 mask pixels + the first 16 outside -> 16 / 32
    assert topk_iou(mask.float(), mask, 50).tolist() == pytest.approx([0.5])


def test_empty_mask_gives_nan_and_missing_masks_are_a_user_error():
    empty = torch.zeros(1, 8, 8, dtype=torch.bool)
    assert math.isnan(pointing_game(torch.rand(1, 8, 8), empty)[0])
    metric = build_metric("pointing")
    assert metric.needs_mask and not metric.needs_model
    with pytest.raises(UserError, match="needs foreground masks"):
        metric(None, torch.zeros(1, 3, 8, 8), torch.rand(1, 8, 8), None, None, None, masks=None)
    with pytest.raises(UserError, match="percentage"):
        build_metric("iou:k=0")
    got = build_metric("iou:k=25")(None, None, _square_mask().float(), None, None, None, masks=_square_mask())
    assert got.tolist() == pytest.approx([1.0])
