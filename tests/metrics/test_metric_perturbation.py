"""Insertion/deletion machinery: blur kernel, ordering, AUC, batched == sequential, 225 scores at 224²."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metric_models import RegionModel, tiny_cnn, tiny_vit

from mimlab.metrics.perturbation import (
    auc,
    blur,
    num_steps,
    perturbation_curves,
    perturbation_curves_sequential,
    pixel_order,
    rise_blur_kernel,
)


def test_blur_kernel_matches_scipy_gaussian_filter_of_a_delta():
    import scipy.ndimage as scipy_ndimage

    delta = np.zeros((11, 11))
    delta[5, 5] = 1.0
    expected = scipy_ndimage.gaussian_filter(
        delta, sigma=5
    )  # independent: SciPy's own filter (RISE construction)
    kernel = rise_blur_kernel()
    assert kernel.shape == (11, 11)
    np.testing.assert_allclose(kernel.numpy(), expected, atol=1e-15)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(kernel.max() / kernel.min()) == pytest.approx(
        1.14, abs=0.01
    )  # methods-spec §3.2: "almost flat"


def test_blur_is_per_channel_with_zero_padding():
    x = torch.zeros(1, 3, 21, 21)
    x[0, 1, 10, 10] = 1.0
    out = blur(x)
    assert out[0, 0].abs().max() == 0 and out[0, 2].abs().max() == 0  # no channel mixing
    k = rise_blur_kernel().float()
    torch.testing.assert_close(out[0, 1, 5:16, 5:16], k.flip(0, 1), atol=1e-7, rtol=0)
    # zero padding: a constant image loses mass at the border
    ones = blur(torch.ones(1, 3, 21, 21))
    assert ones[0, 0, 10, 10] == pytest.approx(1.0, abs=1e-6) and ones[0, 0, 0, 0] < 0.5


def test_pixel_order_is_stable_descending_with_ties_by_index():
    maps = torch.tensor([[[0.0, 0.5], [0.5, 1.0]]])
    assert pixel_order(maps).tolist() == [[3, 1, 2, 0]]
    zeros = torch.zeros(1, 4, 4)
    assert pixel_order(zeros).tolist() == [list(range(16))]


@pytest.mark.parametrize("c", [0.0, 0.37, 1.0])
def test_auc_of_constant_curve_is_the_constant(c):
    assert auc(torch.full((3, 225), c)).tolist() == pytest.approx([c] * 3, abs=1e-7)


def test_auc_is_the_normalised_trapezoid():
    s = torch.tensor([[1.0, 0.5, 0.0]])  # trapezoid on x = 0, .5, 1 -> (0.75*0.5 + 0.25*0.5) = 0.5
    assert float(auc(s)[0]) == pytest.approx(0.5)
    s = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]])  # numpy.trapz(s, dx=1/4)
    assert float(auc(s)[0]) == pytest.approx(float(np.trapezoid(s[0].numpy(), dx=0.25)))


class _MeanModel(torch.nn.Module):
    """Cheap 224-px model: logits from the channel means."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))  # [B,3,H,W] -> [B,3] -> [B,4]


def test_225_scores_at_224_pixels_with_width_step():
    torch.manual_seed(0)
    model = _MeanModel().eval()
    x = torch.randn(1, 3, 224, 224)
    maps = torch.rand(1, 224, 224)
    assert num_steps(224 * 224, 224) == 224
    curve = perturbation_curves(
        model, x, torch.zeros_like(x), maps, torch.tensor([1]), step=224, batch_size=128
    )
    assert curve.shape == (1, 225)
    # s_0 is the clean image, s_n the substrate (every pixel replaced)
    with torch.no_grad():
        p0 = model(x).softmax(1)[0, 1]
        pn = model(torch.zeros_like(x)).softmax(1)[0, 1]
    assert float(curve[0, 0]) == pytest.approx(float(p0), abs=1e-6)
    assert float(curve[0, -1]) == pytest.approx(float(pn), abs=1e-6)


@pytest.mark.parametrize(
    "make_model, score", [(tiny_cnn, "softmax"), (tiny_cnn, "logit"), (tiny_vit, "softmax")]
)
def test_batched_equals_sequential_loop(make_model, score):
    torch.manual_seed(3)
    model = make_model()
    x = torch.randn(3, 3, 32, 32)
    maps = torch.rand(3, 32, 32)
    maps[0, :16] = 0.0  # many exact ties, as CAMs after ReLU have
    classes = torch.tensor([0, 3, 1])
    for start, end in ((x, torch.zeros_like(x)), (blur(x), x)):
        seq = perturbation_curves_sequential(model, start, end, maps, classes, step=32, score=score)
        for bs in (
            7,
            99,
        ):  # chunks that split images, and all states of one image plus the next in one forward
            bat = perturbation_curves(model, start, end, maps, classes, step=32, batch_size=bs, score=score)
            assert bat.shape == (3, 33)
            assert (bat - seq).abs().max() <= 1e-6


def test_step_that_does_not_divide_the_image_ends_with_every_pixel_replaced():
    model = RegionModel()
    x = model.image(1)
    maps = torch.rand(1, 32, 32)
    curve = perturbation_curves(model, x, torch.zeros_like(x), maps, torch.tensor([0]), step=100)
    assert curve.shape == (1, num_steps(1024, 100) + 1) == (1, 12)
    assert float(curve[0, -1]) == pytest.approx(0.5, abs=1e-6)  # all-zero image -> logits equal
    seq = perturbation_curves_sequential(model, x, torch.zeros_like(x), maps, torch.tensor([0]), step=100)
    assert (curve - seq).abs().max() <= 1e-6


@pytest.mark.parametrize(("size", "sigma"), [(1, 5.0), (2, 5.0), (5, 1.0), (11, 2.0)])
def test_blur_kernel_matches_scipy_for_other_sizes_and_sigmas(size, sigma):
    # independent: SciPy's gaussian_filter of a centred delta; sizes 1 and 2 fold every tap back by reflection
    import scipy.ndimage as scipy_ndimage

    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    expected = scipy_ndimage.gaussian_filter(delta, sigma=sigma)
    np.testing.assert_allclose(rise_blur_kernel(size, sigma).numpy(), expected, atol=1e-15)


def test_blur_with_a_given_kernel_equals_a_loop_convolution():
    # independent: explicit zero-padded correlation loop with a hand-made asymmetric 3x3 kernel, per channel
    kernel = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    x = torch.randn(1, 2, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = np.zeros((1, 2, 5, 6))
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)))
    for c in range(2):
        for i in range(5):
            for j in range(6):
                want[0, c, i, j] = (xp[0, c, i:i + 3, j:j + 3] * kernel.numpy()).sum()
    np.testing.assert_allclose(blur(x, kernel).numpy(), want, atol=1e-12)


def test_pixel_order_ties_stay_in_index_order_beyond_16_pixels():
    # hand-made: 64 equal pixels then one salient pixel; the stable rule keeps the other 63 in index order
    maps = torch.zeros(2, 8, 8)
    maps[1, 5, 2] = 1.0
    assert pixel_order(maps).tolist() == [list(range(64)), [42] + [j for j in range(64) if j != 42]]


def test_logit_score_curve_starts_at_the_clean_logit_and_ends_at_the_substrate_logit():
    # independent: the model's raw logit of the class on x and on the all-zero substrate
    model = tiny_cnn()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    classes = torch.tensor([1, 4])
    curve = perturbation_curves(model, x, torch.zeros_like(x), torch.rand(2, 32, 32), classes, step=128,
                                score="logit")
    with torch.no_grad():
        clean = model(x).gather(1, classes[:, None])[:, 0]
        zero = model(torch.zeros_like(x)).gather(1, classes[:, None])[:, 0]
    torch.testing.assert_close(curve[:, 0], clean, atol=1e-6, rtol=0)
    torch.testing.assert_close(curve[:, -1], zero, atol=1e-6, rtol=0)
