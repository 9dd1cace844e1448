"""AD / AI / insertion / deletion metric classes against independent per-image computations."""

from __future__ import annotations

import pytest
import torch
from metric_models import RegionModel, tiny_cnn

from mimlab.errors import UserError
from mimlab.metrics import METRICS, build_metric, check_inputs, split_metric_list
from mimlab.metrics import faithfulness as mimlab_faithfulness
from mimlab.metrics.faithfulness import explanation_images
from mimlab.metrics.perturbation import blur

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


def _counting(model):
    """Record the batch size of every forward of ``model``."""
    sizes = []
    model.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    return sizes


def test_substrates_in_normalised_space_equal_their_closed_forms():
    # closed forms: black = (0 - mean) / std per channel, zero = 0, blur = the RISE blur of x
    _, images, _ = _batch(2, size=16)
    black = mimlab_faithfulness.substrate_images(images, "black", MEAN, STD)
    assert black.shape == images.shape
    for c in range(3):
        assert torch.allclose(black[:, c], torch.full((2, 16, 16), float(-MEAN[c] / STD[c])), atol=1e-6, rtol=0)
    assert torch.equal(mimlab_faithfulness.substrate_images(images, "zero", MEAN, STD), torch.zeros_like(images))
    assert torch.equal(mimlab_faithfulness.substrate_images(images, "blur", MEAN, STD), blur(images))


def test_explanation_image_in_float64_uses_float64_statistics_and_keeps_the_dtype():
    # closed form: an all-zero map gives the black image -(mean / std), computed here in float64
    _, images, _ = _batch(1, size=8)
    e = explanation_images(images.double(), torch.zeros(1, 8, 8, dtype=torch.float64), MEAN, STD)
    want = (-MEAN.double() / STD.double()).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    assert e.dtype == torch.float64
    torch.testing.assert_close(e, want, atol=1e-12, rtol=0)
    assert explanation_images(images, torch.zeros(1, 8, 8, dtype=torch.float64), MEAN, STD).dtype == torch.float32


@pytest.mark.parametrize("name", ["insertion", "deletion"])
def test_curve_options_class_score_substrate_change_the_curve_ends(name):
    # independent: the model's own scores of the curve's two end images, for the class and score asked for
    model = tiny_cnn(seed=3)
    _, images, maps = _batch(2, size=16)
    targets = torch.tensor([3, 1])
    spec = f"{name}:class=gt,score=logit,substrate=black,step=64"
    curve = build_metric(spec).curves(model, images, maps, targets, MEAN, STD)
    black = (-MEAN / STD).view(1, 3, 1, 1).expand_as(images)
    first, last = (black, images) if name == "insertion" else (images, black)
    with torch.no_grad():
        want0 = model(first).gather(1, targets[:, None])[:, 0]
        want1 = model(last).gather(1, targets[:, None])[:, 0]
    assert curve.shape == (2, 16 * 16 // 64 + 1)
    torch.testing.assert_close(curve[:, 0], want0, atol=1e-5, rtol=0)
    torch.testing.assert_close(curve[:, -1], want1, atol=1e-5, rtol=0)
    auc = build_metric(spec)(model, images, maps, targets, MEAN, STD)
    torch.testing.assert_close(auc, (curve.sum(1) - curve[:, 0] / 2 - curve[:, -1] / 2) / (curve.shape[1] - 1))


def test_insertion_default_first_state_is_the_blurred_image_of_the_predicted_class():
    model = tiny_cnn(seed=3)
    _, images, maps = _batch(2, size=16)
    curve = build_metric("insertion").curves(model, images, maps, None, MEAN, STD)
    with torch.no_grad():  # independent: softmax of the predicted class on blur(x)
        pred = model(images).argmax(1)
        want = model(blur(images)).softmax(1).gather(1, pred[:, None])[:, 0]
    torch.testing.assert_close(curve[:, 0], want, atol=1e-6, rtol=0)


def test_default_step_is_the_image_width_on_non_square_images():
    model = tiny_cnn()
    images = torch.randn(1, 3, 8, 24, generator=torch.Generator().manual_seed(0))
    curve = build_metric("deletion").curves(model, images, torch.rand(1, 8, 24), None, MEAN, STD)
    assert curve.shape == (1, 8 * 24 // 24 + 1)


def test_batch_option_bounds_the_states_per_forward():
    model = tiny_cnn()
    sizes = _counting(model)
    _, images, maps = _batch(2, size=16)
    build_metric("deletion:batch=5")(model, images, maps, None, MEAN, STD)
    assert max(sizes[1:]) == 5  # sizes[0]: the prediction forward of the 2 images
    sizes.clear()
    _, images, maps = _batch(2, size=32)
    build_metric("deletion")(model, images, maps, None, MEAN, STD)  # default 64 states per forward
    assert sizes[1:] == [64, 2]  # 2 images x 33 states (step 32 on 32x32) = 66 states


@pytest.mark.parametrize(("spec", "ok"), [("deletion:step=1", True), ("deletion:batch=1", True),
                                          ("deletion:step=0", False), ("deletion:batch=0", False)])
def test_step_and_batch_of_one_are_valid_and_zero_is_one_error_line(spec, ok):
    if ok:
        assert build_metric(spec) is not None
        return
    with pytest.raises(UserError) as err:
        build_metric(spec)
    assert str(err.value) == f"metric '{spec}': step and batch must be positive integers"


@pytest.mark.parametrize("name", ["ad", "deletion:class=gt"])
def test_gt_class_without_labels_names_the_metric(name):
    _, images, maps = _batch(1, size=16)
    with pytest.raises(UserError) as err:
        build_metric(name)(tiny_cnn(), images, maps, None, MEAN, STD)
    assert str(err.value) == (f"metric '{name}' scores the ground-truth class but the images have "
                              "no labels (use class=predicted or data with labels)")


def test_a_shared_cache_reuses_forwards_and_keeps_options_apart():
    # AD and AI share (Y, O): two forwards (x and E) for both; a different space is a different entry
    model = tiny_cnn(seed=2)
    _, images, maps = _batch(3, size=16)
    labels = torch.tensor([0, 1, 2])
    plain = {n: build_metric(n)(model, images, maps, labels, MEAN, STD) for n in ("ad", "ai", "ad:space=normalized")}
    sizes = _counting(model)
    cache: dict = {}
    got = {n: build_metric(n)(model, images, maps, labels, MEAN, STD, cache=cache)
           for n in ("ad", "ai", "ad:space=normalized")}
    assert len(sizes) == 4  # x and E for pixel space (AD, then AI from the cache), E again for normalized: x, E, x, E'
    for n in plain:
        torch.testing.assert_close(got[n], plain[n])
    assert not torch.equal(got["ad"], got["ad:space=normalized"])


def test_a_shared_cache_predicts_the_classes_once_for_every_metric():
    model = tiny_cnn(seed=2)
    _, images, maps = _batch(2, size=16)
    cache: dict = {}
    sizes = _counting(model)
    build_metric("ad:class=predicted")(model, images, maps, None, MEAN, STD, cache=cache)
    assert len(sizes) == 3  # argmax f(x), then Y = f(x) and O = f(E)
    build_metric("deletion")(model, images, maps, None, MEAN, STD, cache=cache)
    build_metric("insertion")(model, images, maps, None, MEAN, STD, cache=cache)
    assert len(sizes) == 3 + 1 + 1  # one forward of the 2 x 17 states each, no new prediction


def test_curves_need_labels_only_for_the_gt_class():
    assert not build_metric("insertion").requires_label() and not build_metric("deletion").requires_label()
    assert build_metric("insertion:class=gt").requires_label() and build_metric("deletion:class=gt").requires_label()
