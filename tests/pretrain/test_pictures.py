"""Training pictures: [cls] attention, PCA of patch features as RGB, masks — checked against independent maths."""

from __future__ import annotations

import numpy as np
import torch

from mimlab.pretrain.pictures import attention_grid, mask_grid, pca_grid, pca_rgb, probe_pictures


def _probes(p=2, s=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (p, s, s, 3), dtype=np.uint8)


def test_pca_channels_are_the_top_three_components_min_maxed_with_a_fixed_sign():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 16, 6, generator=g) * torch.tensor([5.0, 3.0, 2.0, 0.1, 0.1, 0.1])
    rgb = pca_rgb(tokens).reshape(-1, 3).double().numpy()
    # independent: eigenvectors of the covariance (numpy eigh), projections, same sign rule, min-max
    x = tokens.reshape(-1, 6).double().numpy()
    x = x - x.mean(0)
    vals, vecs = np.linalg.eigh(x.T @ x)
    top = vecs[:, np.argsort(vals)[::-1][:3]].T  # [3, D]
    top *= np.sign(top[np.arange(3), np.abs(top).argmax(1)])[:, None]
    proj = x @ top.T
    expected = (proj - proj.min(0)) / (proj.max(0) - proj.min(0))
    np.testing.assert_allclose(rgb, expected, atol=1e-5)


def test_pca_of_features_with_fewer_than_three_dimensions_leaves_the_rest_black():
    rgb = pca_rgb(torch.arange(8.0).reshape(1, 4, 2))
    assert rgb.shape == (1, 4, 3) and float(rgb[..., 2].abs().max()) == 0.0


def test_attention_grid_puts_probes_on_top_and_the_colour_map_ends_on_the_max_and_min_patch():
    import matplotlib

    probes = _probes()
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.2], [0.5, 0.5, 0.0, 1.0]])
    img = attention_grid(probes, scores, (2, 2))
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[:8], np.concatenate(list(probes), axis=1))
    hot = np.round(np.array(matplotlib.colormaps["inferno"](1.0)[:3]) * 255)
    cold = np.round(np.array(matplotlib.colormaps["inferno"](0.0)[:3]) * 255)
    np.testing.assert_array_equal(img[8, 4], hot)        # image 0, patch 1 (row 0, col 1): its maximum
    np.testing.assert_array_equal(img[8, 0], cold)       # image 0, patch 0: its minimum
    np.testing.assert_array_equal(img[12, 12], hot)      # image 1, patch 3 (row 1, col 1)


def test_mask_grid_paints_exactly_the_masked_patches_grey():
    probes = _probes()
    masks = torch.tensor([[True, False, False, True], [False, False, False, False]])
    bottom = mask_grid(probes, masks, (2, 2))[8:]
    np.testing.assert_array_equal(bottom[:4, :4], 128)                 # image 0, patch 0
    np.testing.assert_array_equal(bottom[:4, 4:8], probes[0, :4, 4:])  # image 0, patch 1 untouched
    np.testing.assert_array_equal(bottom[:, 8:], probes[1])            # image 1: nothing masked


def test_probe_pictures_draws_all_three_from_one_teacher_forward_and_masks_the_strategy_count():
    import timm

    from mimlab.masking import build_masking

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=32,
                            depth=2, num_heads=2, num_classes=0)
    masking = build_masking({"strategy": "attmask-high", "prob": 1.0, "ratio_mode": "fixed", "fixed_ratio": 0.25},
                            num_global_crops=2, depth=2)
    probes = _probes(p=3, s=16)
    out = probe_pictures(vit, probes, masking, torch.Generator().manual_seed(1))
    assert set(out) == {"cls_attention", "patch_pca", "masks"}
    for img in out.values():
        assert img.shape == (32, 48, 3) and img.dtype == np.uint8
    grey = (out["masks"][16:] == 128).all(-1).reshape(16, 3, 16).transpose(1, 0, 2)  # [P, S, S]
    assert [int(g.sum()) // 16 for g in grey] == [4, 4, 4]  # ⌊0.25·16⌋ = 4 patches of 4×4 px per image
    assert vit.training  # the forward restores the mode
