"""TIBAV: conservation through a block, model-randomisation sanity check, class specificity."""

from __future__ import annotations

import torch

from mimlab.explain import build_explainer
from mimlab.explain.tibav import add_relprop, linear_relprop, tibav_scores

from explain_models import tiny_vit


def test_linear_and_add_rules_conserve():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=g)
    w = torch.randn(6, 8, generator=g)
    r = torch.rand(2, 5, 6, generator=g)
    r_in = linear_relprop(x, w, r)
    # α1β0 conserves the relevance of every output whose activating sum W⁺x⁺ + W⁻x⁻ is non-zero (the rest is
    # dropped by the rule): independent check of that sum
    z = x.clamp(min=0) @ w.clamp(min=0).T + x.clamp(max=0) @ w.clamp(max=0).T
    torch.testing.assert_close(r_in.sum(-1), (r * (z > 0)).sum(-1), rtol=1e-4, atol=1e-5)
    a, b = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    ra, rb = add_relprop(a, b, r[..., 0])
    torch.testing.assert_close((ra + rb).sum(1), r[..., 0].sum(1), rtol=1e-5, atol=1e-6)


def test_relevance_is_conserved_through_blocks(vit, images):
    result = tibav_scores(vit.module, images[:1])
    for b, (r_in, r_out) in result.totals.items():
        assert r_out.abs().item() > 0
        torch.testing.assert_close(r_in, r_out, rtol=1e-3, atol=1e-6, msg=lambda m, b=b: f"block {b}: {m}")


def test_model_randomisation_changes_the_map(images):
    trained = tiny_vit(seed=0)
    target = torch.tensor([1, 1])
    before = build_explainer("tibav", trained)(images, target)
    torch.manual_seed(123)
    for blk in trained.module.blocks[1:]:  # cascading randomisation of the top blocks and the head
        for p in blk.parameters():
            torch.nn.init.normal_(p, std=0.2)
    torch.nn.init.normal_(trained.module.head.weight, std=0.2)
    after = build_explainer("tibav", trained)(images, target)
    assert (before - after).abs().mean() > 0.05


def test_class_specific(vit, images):
    tib = build_explainer("tibav", vit)
    a = tib(images, torch.tensor([0, 0]))
    b = tib(images, torch.tensor([3, 3]))
    assert (a - b).abs().mean() > 0.01


def test_default_target_is_top1_and_start_layer_matters(vit, images):
    logits = vit.module(images)
    result = tibav_scores(vit.module, images)
    assert torch.equal(result.targets, logits.argmax(1))
    all_blocks = build_explainer("tibav", vit)(images)
    later = build_explainer("tibav:start=2", vit)(images)
    assert (all_blocks - later).abs().max() > 1e-3
