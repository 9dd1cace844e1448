"""Map-level invariants (methods-spec §12) and goldens against independent small computations."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mimlab.explain import build_explainer, explain_many
from mimlab.explain.scores import minmax

from explain_models import tiny_cnn, tiny_vit


def test_raw_log_equals_raw_star_maps(vit, images):
    a = build_explainer("raw-log:layer=2", vit)(images)
    b = build_explainer("raw-star:layer=2", vit)(images)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # float32; exact in float64 (see test_scores)


def test_pow_one_equals_raw(vit, images):
    torch.testing.assert_close(build_explainer("raw-pow:p=1", vit)(images), build_explainer("raw", vit)(images))


def test_single_layer_rollout_equals_raw(vit, images):
    for layer in (1, 3):
        torch.testing.assert_close(
            build_explainer(f"rollout:layers={layer}-{layer}", vit)(images),
            build_explainer(f"raw:layer={layer}", vit)(images),
            atol=1e-5, rtol=0,
        )


def test_rollout_order_flag_changes_map(vit, images):
    asc = build_explainer("rollout:order=ascending", vit)(images)
    desc = build_explainer("rollout", vit)(images)
    assert (asc - desc).abs().max() > 1e-3


def test_raw_golden_pixel_level():
    """Patch size 1 at 6 px: the map is the min-maxed cls attention itself (upsampling is the identity).

    Independent computation: LayerNorm → qkv → softmax(q kᵀ/√d) by hand from the module weights, block by block.
    """
    loaded = tiny_vit(img_size=6, patch_size=1, depth=2)
    model = loaded.module
    x = torch.randn(1, 3, 6, 6)
    maps = build_explainer("raw:layer=2", loaded)(x)
    with torch.no_grad():
        h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        h = model.blocks[0](h)
        blk = model.blocks[1]
        y = F.layer_norm(h, (32,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps).numpy()[0]
        w, b = blk.attn.qkv.weight.numpy(), blk.attn.qkv.bias.numpy()
        qkv = y @ w.T + b  # [N, 96]
        ref = np.zeros(36)
        for hd in range(2):
            q = qkv[0, hd * 16:(hd + 1) * 16]
            k = qkv[:, 32 + hd * 16:32 + (hd + 1) * 16]
            s = k @ q / 4.0
            p = np.exp(s - s.max())
            ref += (p / p.sum())[1:] / 2
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    np.testing.assert_allclose(maps[0].numpy().reshape(-1), ref, atol=1e-5)


def test_gradcam_golden_on_tiny_cnn():
    """Independent Grad-CAM by autograd: w_c = mean_ij ∂y/∂A_cij; relu(Σ_c w_c A_c); min-max (ε 1e-7).

    The target layer keeps the input resolution, so the package's resize is the identity.
    """
    loaded = tiny_cnn(seed=1)
    model = loaded.module
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([0, 3])
    maps = build_explainer("gradcam:target-layer=stage", loaded)(x, targets)
    acts = torch.relu(model.stem(x))
    a = model.stage(acts)
    logits = model.fc(torch.relu(a).mean((2, 3)))
    (g,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), a)
    cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).detach()
    lo = cam.flatten(1).min(1).values[:, None, None]
    cam = cam - lo
    cam = cam / (1e-7 + cam.flatten(1).max(1).values[:, None, None])
    # OpenCV's same-size bilinear resize inside grad-cam is not bit-exact (≈5e-4 on isolated pixels)
    torch.testing.assert_close(maps, cam, atol=1e-3, rtol=0)


def test_cnn_default_target_layer_is_last_conv(cnn, images):
    default = build_explainer("gradcam", cnn)
    assert default.layer_path == "stage"
    torch.testing.assert_close(default(images), build_explainer("gradcam:target-layer=stage", cnn)(images))


def test_vit_default_target_layer_is_last_norm1(vit):
    assert build_explainer("gradcam", vit).layer_path == "blocks.2.norm1"


def test_explain_many_one_forward_and_equal_to_single_calls(vit, images):
    specs = ["raw", "raw:layer=1", "rollout:layers=1-3", "keys-norm", "raw-star-x-keys-norm:layer=2", "gradcam"]
    calls = []
    handle = vit.module.register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        many = explain_many(vit, images, specs)
    finally:
        handle.remove()
    assert list(many) == specs
    assert len(calls) == 2  # one shared forward for five attention methods + one for Grad-CAM
    for spec in specs:
        torch.testing.assert_close(many[spec], build_explainer(spec, vit)(images), atol=1e-6, rtol=0)


def test_keys_norm_map_golden():
    """keys-norm at patch size 1: ‖mean_h k‖ from the qkv weights by hand, min-maxed."""
    loaded = tiny_vit(img_size=5, patch_size=1, depth=1)
    model = loaded.module
    x = torch.randn(1, 3, 5, 5)
    maps = build_explainer("keys-norm", loaded)(x)
    with torch.no_grad():
        h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        blk = model.blocks[0]
        y = blk.norm1(h)[0]
        k = (y @ blk.attn.qkv.weight.T + blk.attn.qkv.bias)[:, 32:64]  # [N,32] = 2 heads x 16
        ref = ((k[:, :16] + k[:, 16:]) / 2).norm(dim=1)[1:]
    torch.testing.assert_close(maps[0].reshape(-1), minmax(ref[None])[0], atol=1e-5, rtol=0)
