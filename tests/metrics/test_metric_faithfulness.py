"""AD / AI / insertion / deletion metric classes against independent per-image computations."""

from __future__ import annotations

import pytest
import torch
from metric_models import RegionModel, tiny_cnn

from mimlab.errors import UserError
from mimlab.metrics import METRICS, build_metric, check_inputs, split_metric_list
from mimlab.metrics.faithfulness import explanation_images

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def _batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 3, size, size, generator=g)
    images = (pixels - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)
    maps = torch.rand(n, size, size, generator=g)
    return pixels, images, maps


def test_all_ones_map_gives_zero_drop_and_no_increase():
    _, images, _ = _batch()
    model = tiny_cnn()
    ones = torch.ones(4, 32, 32)
    labels = torch.tensor([0, 1, 2, 3])
    assert explanation_images(images, ones, MEAN, STD).equal(images)  # E = x exactly
    assert build_metric("ad")(model, images, ones, labels, MEAN, STD).tolist() == [0.0] * 4
    assert build_metric("ai")(model, images, ones, labels, MEAN, STD).tolist() == [0.0] * 4


def test_all_zeros_map_gives_a_black_image():
    pixels, images, _ = _batch()
    e = explanation_images(images, torch.zeros(4, 32, 32), MEAN, STD)
    black = (-MEAN / STD).view(1, 3, 1, 1).expand_as(e)
    torch.testing.assert_close(e, black, atol=1e-6, rtol=0)


def test_ad_ai_equal_the_definition_computed_image_by_image():
    pixels, images, maps = _batch(6)
    model = tiny_cnn(num_classes=3, seed=4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    ad, ai = [], []
    with (
        torch.no_grad()
    ):  # independent: pixel-space product then normalise, one image at a time (methods-spec §3.1)
        for i in range(6):
            e = (pixels[i] * maps[i] - MEAN.view(3, 1, 1)) / STD.view(3, 1, 1)
            y = model(images[i : i + 1]).softmax(1)[0, labels[i]].item()
            o = model(e[None]).softmax(1)[0, labels[i]].item()
            ad.append(max(0.0, y - o) / y)
            ai.append(float(o > y))
    got_ad = build_metric("ad")(model, images, maps, labels, MEAN, STD)
    got_ai = build_metric("ai")(model, images, maps, labels, MEAN, STD)
    assert got_ad.tolist() == pytest.approx(ad, abs=1e-5)
    assert got_ai.tolist() == ai


def test_ad_options_normalized_space_and_logit():
    _, images, maps = _batch(3)
    model = tiny_cnn(seed=2)
    labels = torch.tensor([1, 2, 3])
    with torch.no_grad():
        y = model(images).gather(1, labels[:, None])[:, 0]
        o = model(images * maps[:, None]).gather(1, labels[:, None])[:, 0]
    got = build_metric("ad:space=normalized,score=logit")(model, images, maps, labels, MEAN, STD)
    torch.testing.assert_close(got, (y - o).clamp(min=0), atol=1e-6, rtol=0)


def test_ad_needs_labels_unless_class_is_predicted():
    _, images, maps = _batch(2)
    model = tiny_cnn()
    with pytest.raises(UserError, match="no labels"):
        build_metric("ad")(model, images, maps, None, MEAN, STD)
    assert build_metric("ad").requires_label() and not build_metric("ad:class=predicted").requires_label()
    assert build_metric("ad:class=predicted")(model, images, maps, None, MEAN, STD).shape == (2,)


def test_perfect_map_beats_inverted_map_on_insertion_and_deletion():
    model = RegionModel()
    x = model.image(2)
    perfect = model.inside.float().expand(2, -1, -1).clone()
    inverted = 1 - perfect
    ins, dele = build_metric("insertion"), build_metric("deletion")
    args = (None, MEAN, STD)
    assert (ins(model, x, perfect, *args) > ins(model, x, inverted, *args) + 0.3).all()
    assert (dele(model, x, perfect, *args) + 0.3 < dele(model, x, inverted, *args)).all()


def test_insertion_default_starts_from_blur_and_deletion_ends_at_zero():
    model = RegionModel()
    x = model.image(1)
    maps = torch.rand(1, 32, 32)
    ins = build_metric("insertion").curves(model, x, maps, None, MEAN, STD)
    dele = build_metric("deletion").curves(model, x, maps, None, MEAN, STD)
    assert ins.shape == dele.shape == (1, 33)  # step = width = 32 -> 1024/32 + 1
    with torch.no_grad():
        p_x = model(x).softmax(1)[0, 0].item()
    assert ins[0, -1].item() == pytest.approx(p_x, abs=1e-6) and dele[0, 0].item() == pytest.approx(
        p_x, abs=1e-6
    )
    assert dele[0, -1].item() == pytest.approx(0.5, abs=1e-6)  # zero image -> equal logits
    assert ins[0, 0].item() < 0.6  # blurred checkerboard carries almost no class-0 evidence
    assert build_metric("insertion:step=64").curves(model, x, maps, None, MEAN, STD).shape == (1, 17)


def test_metric_metadata_and_registry_contract():
    for name in METRICS.names():
        metric = build_metric(name)
        assert isinstance(metric.higher_is_better, bool)
        assert isinstance(metric.needs_mask, bool) and isinstance(metric.needs_label, bool)
    assert not build_metric("ad").higher_is_better and build_metric("ai").higher_is_better
    assert build_metric("insertion").higher_is_better and not build_metric("deletion").higher_is_better


def test_bad_metric_input_is_a_user_error():
    with pytest.raises(UserError, match="unknown metric 'insertoin'.*did you mean 'insertion'"):
        build_metric("insertoin")
    with pytest.raises(UserError, match="no key 'stepp'"):
        build_metric("insertion:stepp=3")
    with pytest.raises(UserError, match="substrate"):
        build_metric("deletion:substrate=grey")
    images = torch.zeros(2, 3, 8, 8)
    with pytest.raises(UserError, match="shape"):
        check_inputs(images, torch.zeros(2, 8, 7), None)
    bad = torch.zeros(2, 8, 8)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        check_inputs(images, bad, None)


def test_split_metric_list_keeps_options_with_their_metric():
    assert split_metric_list("ad, ai,insertion:step=16,substrate=zero,deletion") == [
        "ad",
        "ai",
        "insertion:step=16,substrate=zero",
        "deletion",
    ]
