from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from mimlab.data.transforms import (MultiCrop, MultiCropConfig, adjust_brightness, adjust_contrast, adjust_hue,
                                    adjust_saturation, eval_transform, normalise, random_resized_crop_box)


@pytest.mark.parametrize("bad", [{"global_crops": 4}, {"global_crops": 0}, {"local_scale": (0.3, 0.1)},
                                 {"global_scale": (0.2, 1.5)}, {"glob_crops": 2}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        MultiCropConfig(**bad)


@pytest.mark.parametrize("g", [1, 2, 3])
def test_multicrop_shapes_dtype_and_seeding(g):
    cfg = MultiCropConfig(global_crops=g, global_size=20, local_crops=3, local_size=9)
    img = np.random.default_rng(0).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    crops = MultiCrop(cfg)(img, np.random.default_rng(1))
    assert list(crops) == [f"global_{i}" for i in range(g)] + ["local_0", "local_1", "local_2"]
    for name, crop in crops.items():
        side = 20 if name.startswith("global") else 9
        assert crop.shape == (side, side, 3) and crop.dtype == np.uint8 and crop.flags.c_contiguous
    again = MultiCrop(cfg)(img, np.random.default_rng(1))
    other = MultiCrop(cfg)(img, np.random.default_rng(2))
    assert all(np.array_equal(crops[k], again[k]) for k in crops)
    assert not all(np.array_equal(crops[k], other[k]) for k in crops)


def test_random_resized_crop_box_in_bounds_and_scale():
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, h, w = random_resized_crop_box(rng, 32, 48, (0.1, 0.5))
        assert 0 <= top and top + h <= 32 and 0 <= left and left + w <= 48
        # rounding of each side to an integer moves the area by at most (h + w + 1) / 2 pixels
        assert 0.1 * 32 * 48 - (h + w + 1) / 2 <= h * w <= 0.5 * 32 * 48 + (h + w + 1) / 2
        assert 3 / 4 - 0.2 <= w / h <= 4 / 3 + 0.2


@pytest.mark.parametrize("op,factor", [("brightness", 1.3), ("contrast", 0.7), ("saturation", 1.15),
                                       ("hue", 0.08), ("hue", -0.05)])
def test_jitter_ops_match_torchvision(op, factor):
    """Independent reference: torchvision.transforms.v2.functional on the same float batch (one factor each)."""
    import torchvision.transforms.v2.functional as F

    x = torch.rand(4, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    ours = {"brightness": adjust_brightness, "contrast": adjust_contrast, "saturation": adjust_saturation,
            "hue": adjust_hue}[op]
    ref = getattr(F, f"adjust_{op}")(x, factor)
    torch.testing.assert_close(ours(x.clone(), torch.full((4,), factor)), ref, atol=2e-6, rtol=0)


def test_jitter_ops_take_one_factor_per_image():
    x = torch.rand(3, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    factors = torch.tensor([0.7, 1.0, 1.3])
    out = adjust_brightness(x.clone(), factors)
    for i in range(3):
        torch.testing.assert_close(out[i], (x[i] * factors[i]).clamp(0, 1))


def test_eval_transform_matches_torchvision():
    """Independent reference: torchvision Resize(int(size/0.875), bicubic) + CenterCrop on the PIL image."""
    from torchvision import transforms as T

    img = np.random.default_rng(0).integers(0, 256, size=(37, 50, 3), dtype=np.uint8)
    ref = T.Compose([T.Resize(int(24 / 0.875), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(24)])
    expected = np.asarray(ref(Image.fromarray(img)))
    out = eval_transform(img, 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    assert np.array_equal(out, expected)
    assert np.array_equal(eval_transform(img.transpose(1, 0, 2).copy(), 24),
                          np.asarray(ref(Image.fromarray(img.transpose(1, 0, 2).copy()))))


def test_normalise_matches_torchvision():
    from torchvision import transforms as T

    batch = np.random.default_rng(0).integers(0, 256, size=(2, 5, 6, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = normalise(batch, mean, std)
    ref = torch.stack([T.Normalize(mean, std)(T.ToTensor()(b)) for b in batch])
    assert out.shape == (2, 3, 5, 6) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(normalise(torch.from_numpy(batch), mean, std), ref)
