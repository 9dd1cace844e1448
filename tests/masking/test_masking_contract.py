"""Contract tests over the masking registry: every strategy, same interface (methods-spec §12 item 5)."""

from __future__ import annotations

import pytest
import torch

from mimlab.masking import MASKING, build_masking

from .conftest import DEPTH, GRID, N, make_capture

# One example spec per registered strategy; a new strategy must add itself here (checked below).
EXAMPLES = {
    "block": "block",
    "random": "random",
    "attmask-high": "attmask-high",
    "attmask-low": "attmask-low",
    "attmask-hint": "attmask-hint",
    "attmask-raw": "attmask-raw:layer=2",
    "attmask-pow": "attmask-pow:p=0.5,layer=3",
    "attmask-log": "attmask-log",
    "attmask-rollout": "attmask-rollout:layers=2-4",
    "attmask-from": "attmask-from:raw-star:layer=3",
}
NAMES = MASKING.names()
B = 1000


def test_every_registered_strategy_has_an_example():
    assert sorted(EXAMPLES) == NAMES


def _masks(name, batch=B, seed=0, **section):
    masking = build_masking({"strategy": EXAMPLES[name], **section}, num_global_crops=2, depth=DEPTH)
    cap = make_capture(batch, seed=7) if masking.needs_attention else None
    gen = torch.Generator().manual_seed(seed)
    return masking, masking(0, batch, GRID, cap, gen)


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_metadata_and_determinism(name):
    masking, masks = _masks(name, batch=16)
    assert masks.shape == (16, N) and masks.dtype == torch.bool
    assert masking.needs_attention == bool(masking.layers)
    assert all(0 <= l < DEPTH for l in masking.layers)
    assert masking.needs_attention == (name not in ("block", "random"))
    _, again = _masks(name, batch=16)
    assert torch.equal(masks, again)  # same generator state -> same masks
    _, other = _masks(name, batch=16, seed=1)
    assert not torch.equal(masks, other)


@pytest.mark.parametrize("name", NAMES)
def test_probability_and_ratio_bounds(name):
    _, masks = _masks(name, prob=0.5, ratio=[0.1, 0.5])
    frac = masks.float().mean(1)  # [B,N] -> [B]
    unmasked = (frac == 0).float().mean().item()
    assert abs(unmasked - 0.5) < 0.06  # B = 1000 draws: 4 sigma of a Bernoulli(0.5) mean is 0.063
    masked = frac[frac > 0]
    assert masked.max().item() <= 0.5
    if name == "block":  # block growth may undershoot the target (methods-spec §4.6 step 4)
        assert masked.min().item() >= 0.05
        assert 0.2 < masked.mean().item() < 0.32
    elif name == "attmask-hint":  # High minus 1..⌊N·0.1·0.5⌋ revealed hints
        assert masked.min().item() >= (6 - 3) / N
    else:
        assert masked.min().item() >= 6 / N  # ⌊64·0.1⌋ = 6
        assert abs(masked.mean().item() - 0.3) < 0.03  # U(0.1, 0.5) mean, minus the floor


@pytest.mark.parametrize("name", NAMES)
def test_fixed_ratio_masks_every_image(name):
    _, masks = _masks(name, batch=64, ratio_mode="fixed", fixed_ratio=0.25, prob=0.5)
    counts = masks.sum(1)
    assert (counts > 0).all()  # prob is forced to 1
    if name == "block":
        assert (counts <= 16).all() and counts.float().mean() > 12
    elif name == "attmask-hint":
        assert ((counts >= 16 - 1) & (counts <= 16)).all()  # ⌊64·0.1·0.25⌋ = 1 hint revealed
    else:
        assert (counts == 16).all()  # exactly ⌊64·0.25⌋


# block undershoots per image and hint reveals a per-image count, so neither shares one exact count.
@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("block", "attmask-hint")])
def test_per_batch_ratio_is_shared(name):
    _, masks = _masks(name, batch=200, ratio_mode="per_batch", prob=0.5)
    counts = masks.sum(1)
    assert counts[counts > 0].unique().numel() == 1
    _, per_image = _masks(name, batch=200, ratio_mode="per_image", prob=0.5)
    pc = per_image.sum(1)
    assert pc[pc > 0].unique().numel() > 5


@pytest.mark.parametrize("name", NAMES)
def test_masks_follow_the_capture_device_and_prefix(name):
    masking = build_masking({"strategy": EXAMPLES[name], "prob": 1.0}, num_global_crops=1, depth=DEPTH)
    cap = make_capture(8, prefix=2) if masking.needs_attention else None  # e.g. cls + distillation token
    masks = masking(0, 8, GRID, cap, torch.Generator().manual_seed(0))
    assert masks.shape == (8, N)
