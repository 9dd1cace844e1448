"""AttentionCapture: one forward, hooks only, exact tensors, loud failure when silent."""

from __future__ import annotations

import pytest
import torch

from mimlab.models.capture import AttentionCapture, CaptureError
from mimlab.models.vit import create_backbone


def _tiny_vit(name="vit_tiny_patch16_224", **kw):
    """The shared micro ViT (tests/tiny_assets.py) as timm model ``name``, 3 blocks, 5 classes."""
    from tiny_assets import tiny_vit

    return tiny_vit(name=name, **{"depth": 3, "num_classes": 5, **kw})


def _manual_internals(model, x):
    """Independent computation: walk timm's pieces by hand and recompute q, k, softmax per block."""
    out = []
    h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    for blk in model.blocks:
        a = blk.attn
        y = blk.norm1(h)
        b, n, c = y.shape
        w, bias = a.qkv.weight, a.qkv.bias
        qkv = y @ w.T + (bias if bias is not None else 0)
        q, k, _ = qkv.reshape(b, n, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-2, -1) / (c // a.num_heads) ** 0.5
        out.append((logits.softmax(-1), logits, k))
        h = blk(h)
    return out


@pytest.mark.parametrize(
    "name,kw,prefix",
    [
        ("vit_tiny_patch16_224", {}, 1),
        ("deit_tiny_distilled_patch16_224", {"img_size": 40, "patch_size": 8}, 2),
        ("vit_tiny_patch16_224", {"img_size": 48, "patch_size": 12, "reg_tokens": 2}, 3),
    ],
)
def test_capture_matches_manual_forward(name, kw, prefix):
    model = _tiny_vit(name, **kw)
    size = kw.get("img_size", 32)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad(), AttentionCapture(model) as cap:
        model(x)
    ref = _manual_internals(model, x)
    grid = size // kw.get("patch_size", 8)
    assert cap.grid == (grid, grid)
    assert cap.num_prefix_tokens == prefix
    assert cap.forwards == 1
    for l, (attn, logits, keys) in enumerate(ref):
        assert cap.attn[l].shape == (2, 2, grid * grid + prefix, grid * grid + prefix)
        torch.testing.assert_close(cap.attn[l], attn, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cap.logits[l], logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cap.keys[l], keys, atol=1e-5, rtol=1e-4)


def test_only_requested_layers_and_flags():
    model = _tiny_vit()
    with torch.no_grad(), AttentionCapture(model, layers=[-1], keys=False, logits=False) as cap:
        model(torch.randn(1, 3, 32, 32))
    assert list(cap.attn) == [2]
    assert len(cap.keys) == 0 and len(cap.logits) == 0
    with pytest.raises(CaptureError, match="block 0"):
        cap.attn[0]


def test_fused_attention_is_switched_off_and_restored():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                              depth=2, num_heads=2)
    for blk in model.blocks:
        blk.attn.fused_attn = True
    with torch.no_grad(), AttentionCapture(model, layers=[1]) as cap:
        model(torch.randn(1, 3, 32, 32))
    assert cap.attn[1].shape[-1] == 17
    assert model.blocks[1].attn.fused_attn is True  # restored
    assert model.blocks[0].attn.fused_attn is True  # never touched


def test_silent_block_fails_loudly():
    model = _tiny_vit()
    with pytest.raises(CaptureError, match="recorded no attention"):
        with torch.no_grad(), AttentionCapture(model, layers=[1]):
            model.blocks[1].attn.fused_attn = True  # someone re-enables fusion behind our back
            model(torch.randn(1, 3, 32, 32))
    with pytest.raises(CaptureError, match="no forward"):
        with AttentionCapture(model):
            pass


def test_attention_keeps_graph_for_gradients():
    model = _tiny_vit()
    x = torch.randn(1, 3, 32, 32)
    with AttentionCapture(model, layers=[2], keys=False, logits=False) as cap:
        out = model(x)
    (grad,) = torch.autograd.grad(out[0, 1], cap.attn[2])
    assert grad.shape == cap.attn[2].shape and grad.abs().sum() > 0


def test_capture_rejects_cnn():
    model = create_backbone("resnet18", num_classes=3)
    with pytest.raises(CaptureError, match="needs a ViT"):
        AttentionCapture(model)
