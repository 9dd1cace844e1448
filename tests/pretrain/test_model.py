import torch

from mimlab.models.ibot import IBOTHead, IBOTStudent, MaskedViT, teacher_forward


def _vit(**kw):
    """The shared micro ViT (tests/tiny_assets.py) at 16 px, 4 px patches, 2 blocks, any input size."""
    from tiny_assets import tiny_vit

    return tiny_vit(img_size=16, patch_size=4, depth=2, num_classes=0, dynamic_img_size=True, **kw)


def test_unmasked_forward_equals_timm_forward_features():
    vit = _vit()
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(MaskedViT(vit)(x), vit.forward_features(x))
    small = torch.randn(2, 3, 8, 8)  # local crop: pos-embed interpolated by timm
    torch.testing.assert_close(MaskedViT(vit)(small), vit.forward_features(small))


def test_mask_token_replaces_patch_embedding_before_position_embedding():
    vit = _vit()
    vit.blocks = torch.nn.Sequential()  # identity body: output = norm(embed + pos)
    vit.norm = torch.nn.Identity()
    model = MaskedViT(vit)
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 5] = True
    out = model(x, mask)
    pos = vit.pos_embed[0, 1:]  # [Np, D] patch positions (cls is prefix 0)
    # masked token = mask vector + its own position embedding
    torch.testing.assert_close(out[0, 1 + 5], model.mask_token[0, 0] + pos[5])
    # unmasked tokens and the other image untouched
    ref = vit.forward_features(x)
    torch.testing.assert_close(out[1], ref[1])
    torch.testing.assert_close(out[0, 1 + 6], ref[0, 1 + 6])


def test_head_shapes_gain_and_shared_layer():
    head = IBOTHead(32, out_dim=64, hidden_dim=48, bottleneck_dim=16, norm_last_layer=False, shared=True)
    cls, patch = head(torch.randn(5, 32), torch.randn(7, 32))
    assert cls.shape == (5, 64) and patch.shape == (7, 64)
    assert head.last_layer.weight_g.requires_grad and head.last_layer2 is None
    # weight-normed rows: with g = 1, |W_k| = 1, so |logit| <= |z| = 1 (z is L2-normalised)
    assert cls.abs().max() <= 1.0 + 1e-5
    frozen = IBOTHead(32, 64, 48, 16, norm_last_layer=True, shared=False)
    assert not frozen.last_layer.weight_g.requires_grad and frozen.last_layer2 is not None


def test_student_returns_only_what_losses_read():
    vit = _vit()
    student = IBOTStudent(vit, IBOTHead(32, 64, 48, 16))
    g = torch.randn(2 * 3, 3, 16, 16)
    loc = torch.randn(4 * 3, 3, 8, 8)
    masks = torch.zeros(6, 16, dtype=torch.bool)
    masks[0, :4] = True
    masks[5, 3] = True
    out = student(g, loc, masks)
    assert out["cls"].shape == (18, 64) and out["patch"].shape == (5, 64)
    full = student(g, loc, masks, all_patches=True)
    torch.testing.assert_close(full["patch"].view(6, 16, 64)[masks], out["patch"])
    t = teacher_forward(vit, student.head, g)
    assert t["cls"].shape == (6, 64) and t["patch"].shape == (6, 16, 64)
