"""The batched crop stage keeps methods-spec §4.2: parameter distributions, op semantics, deferred colour step."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mimlab.data.transforms import (CROP_PARAMS, MultiCrop, MultiCropConfig, apply_deferred, decode_for_crops,
                                    draft_scale, draw_boxes, draw_crop_params, photometric, to_uint8)

N = 20000
COL = {name: i for i, name in enumerate(CROP_PARAMS)}


def _sigma(p: float) -> float:
    return math.sqrt(p * (1 - p) / N)


@pytest.mark.parametrize("blur_p,solarize_p", [(1.0, 0.0), (0.1, 0.2), (0.5, 0.0)])  # global 1, global 2.., local
def test_photometric_parameter_distribution_matches_the_spec(blur_p, solarize_p):
    p = draw_crop_params(np.random.default_rng(0), N, blur_p, solarize_p)
    for col, prob in (("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("solarize", solarize_p)):
        assert abs(p[:, COL[col]].mean() - prob) <= 5 * _sigma(prob) + 1e-12, col
    blurred = p[:, COL["blur_radius"]] > 0
    assert abs(blurred.mean() - blur_p) <= 5 * _sigma(blur_p) + 1e-12
    radius = p[blurred, COL["blur_radius"]]
    assert radius.min() >= 0.1 and radius.max() <= 2.0 and abs(radius.mean() - 1.05) < 0.02  # U(0.1, 2)
    for col, lo, hi in (("brightness", 0.6, 1.4), ("contrast", 0.6, 1.4), ("saturation", 0.8, 1.2),
                        ("hue", -0.1, 0.1)):
        v = p[:, COL[col]]
        assert v.min() >= lo and v.max() <= hi and abs(v.mean() - (lo + hi) / 2) < 0.01 * (hi - lo), col
    order = p[:, COL["order_0"]:COL["order_3"] + 1].astype(int)
    assert (np.sort(order, 1) == np.arange(4)).all()  # a permutation per crop
    perms, counts = np.unique(order, axis=0, return_counts=True)
    assert len(perms) == 24 and abs(counts.max() / N - 1 / 24) < 5 * math.sqrt(1 / 24 / N)  # uniform order


@pytest.mark.parametrize("scale", [(0.25, 1.0), (0.05, 0.25)])
def test_box_scale_and_ratio_distribution_matches_torchvision(scale):
    """Independent reference: torchvision's RandomResizedCrop.get_params drawn the same number of times."""
    from torchvision.transforms import RandomResizedCrop

    boxes = draw_boxes(np.random.default_rng(0), 224, 224, N, scale)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 224).all() and (left + w <= 224).all()
    torch.manual_seed(0)
    ref = np.array([RandomResizedCrop.get_params(torch.empty(1, 224, 224), list(scale), [3 / 4, 4 / 3])
                    for _ in range(4000)])
    ours_area, ref_area = h * w / 224 ** 2, ref[:, 2] * ref[:, 3] / 224 ** 2
    ours_ratio, ref_ratio = np.log(w / h), np.log(ref[:, 3] / ref[:, 2])
    for a, b in ((ours_area, ref_area), (ours_ratio, ref_ratio)):
        assert abs(a.mean() - b.mean()) < 0.02 * (abs(b).mean() + 0.1)
        assert abs(np.quantile(a, 0.1) - np.quantile(b, 0.1)) < 0.03 and abs(np.quantile(a, 0.9) - np.quantile(b, 0.9)) < 0.03
    assert ours_area.min() >= scale[0] - 0.01 and ours_area.max() <= scale[1] + 0.01


def test_grayscale_solarize_and_identity_rows():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    p = np.zeros((3, len(CROP_PARAMS)), np.float32)
    p[:, COL["order_0"]:COL["order_3"] + 1] = np.arange(4)
    p[1, COL["gray"]] = 1
    p[2, COL["solarize"]] = 1
    out = to_uint8(photometric(crops, p))
    assert np.array_equal(out[0], crops[0])  # no op drawn: unchanged
    luma = 0.2989 * crops[1, ..., 0] + 0.587 * crops[1, ..., 1] + 0.114 * crops[1, ..., 2]  # torchvision weights
    assert np.abs(out[1].astype(int) - np.rint(luma)[..., None].astype(int)).max() <= 1
    assert np.array_equal(out[2], np.where(crops[2] >= 128, 255 - crops[2], crops[2]))  # PIL solarize(128)


def test_blur_keeps_the_mean_and_smooths():
    img = np.zeros((1, 15, 15, 3), np.uint8)
    img[0, 7, 7] = 255
    p = np.zeros((1, len(CROP_PARAMS)), np.float32)
    p[0, COL["order_0"]:COL["order_3"] + 1] = np.arange(4)
    p[0, COL["blur_radius"]] = 1.0
    out = photometric(img, p)[0, 0]  # [15,15]
    assert abs(float(out.sum()) - 255.0) < 1e-3  # a normalised kernel far from the edges
    g = np.exp(-0.5 * np.arange(-3, 4) ** 2)
    g /= g.sum()  # independent 1-D Gaussian, sigma 1
    torch.testing.assert_close(out[7, 4:11].double(), torch.from_numpy(255 * g[3] * g), atol=1e-3, rtol=1e-4)


def test_deferred_colour_step_equals_the_stage_colour_step():
    """crops.device gpu, tested on CPU: the same photometric call after the 'transfer' gives the stage's crops."""
    cfg = MultiCropConfig(global_crops=2, global_size=16, local_crops=2, local_size=8)
    images = [np.random.default_rng(i).integers(0, 256, size=(20, 24, 3), dtype=np.uint8) for i in range(6)]
    here = MultiCrop(cfg).batch(images, np.random.default_rng(5))
    deferred = MultiCrop(cfg.model_copy(update={"device": "gpu"})).batch(images, np.random.default_rng(5))
    assert set(deferred) == set(cfg.names()) | {f"{n}_params" for n in cfg.names()}
    for name in cfg.names():
        after = apply_deferred(deferred, name, torch.device("cpu"))  # [B,3,S,S] float
        assert after.dtype == torch.float32 and after.shape[1] == 3
        np.testing.assert_array_equal(to_uint8(after), here[name])
        assert deferred[f"{name}_params"].shape == (6, len(CROP_PARAMS))


def test_crops_from_columns_applies_the_deferred_step_before_normalising():
    from mimlab.pretrain.engine import crops_from_columns

    cfg = MultiCropConfig(global_crops=2, global_size=16, local_crops=2, local_size=8, device="gpu")
    images = [np.random.default_rng(i).integers(0, 256, size=(20, 20, 3), dtype=np.uint8) for i in range(4)]
    cols = MultiCrop(cfg).batch(images, np.random.default_rng(0))
    crops = crops_from_columns(cols, 2, 2, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    expected = (photometric(cols["global_1"], cols["global_1_params"]) / 255 - 0.5) / 0.25
    torch.testing.assert_close(crops.global_crops[4:], expected)
    assert crops.local_crops.shape == (8, 3, 8, 8) and crops.batch_size == 4


def _jpeg(side: int) -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def test_draft_decoding_keeps_every_crop_at_least_its_output_size():
    cfg = MultiCropConfig(global_size=32, local_size=16, global_scale=(0.25, 1.0), local_scale=(0.05, 0.25))
    assert draft_scale(cfg, 32, 32) == 1  # CIFAR-sized: decoded at full size
    big = decode_for_crops(_jpeg(512), cfg)
    d = 512 // big.width
    assert d == draft_scale(cfg, 512, 512) and d > 1 and big.mode == "RGB"
    smallest = math.sqrt(0.05 * big.width * big.height * 0.75)  # local crop: minimum scale, extreme ratio
    assert smallest >= 16


def test_crops_device_is_validated_and_reaches_the_crop_settings():
    from mimlab.config.pretrain import load_pretrain_config
    from mimlab.errors import UserError
    from mimlab.runtime.train import multicrop_config

    cfg = load_pretrain_config({}, ["crops.device=gpu"])
    assert multicrop_config(cfg).device == "gpu" and MultiCrop(multicrop_config(cfg)).defer
    assert load_pretrain_config({}, []).crops.device == "cpu"
    with pytest.raises(UserError, match="crops.device"):
        load_pretrain_config({}, ["crops.device=tpu"])
