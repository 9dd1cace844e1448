"""The randomisation test's pure core: blocks, seeded re-initialisation, similarity measures, the two verdicts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from mimlab.explain import EXPLAINERS, build_explainer
from mimlab.explain.base import Explainer
from mimlab.explain.sanity import randomisation_blocks, reinitialise, sanity_batch
from mimlab.metrics.similarity import spearman, ssim
from mimlab.models.loading import LoadedModel, load_model


class InputEdges(Explainer):
    """Test double: the Sobel edge magnitude of the input image — a 'saliency method' that ignores the model."""

    gradient_free = True
    takes_target = False

    def explain(self, images, targets):
        gray = images.mean(1, keepdim=True)  # [B,3,H,W] -> [B,1,H,W]
        kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])[None, None]
        gx, gy = F.conv2d(gray, kx, padding=1), F.conv2d(gray, kx.transpose(-1, -2), padding=1)
        mag = (gx**2 + gy**2).sqrt()[:, 0]
        flat = mag.flatten(1)
        return ((flat - flat.min(1, keepdim=True).values) / flat.max(1, keepdim=True).values.clamp_min(1e-12)
                ).reshape(mag.shape)


@pytest.fixture
def edges():
    EXPLAINERS.register("test-input-edges")(InputEdges)
    yield "test-input-edges"
    EXPLAINERS._items.pop("test-input-edges")


@pytest.fixture(scope="module")
def vit(tiny_checkpoint) -> LoadedModel:
    return load_model(str(tiny_checkpoint))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_spearman_equals_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 12, 12, generator=g).mul(5).floor() / 5  # many ties, as CAMs after ReLU
    b = torch.rand(3, 12, 12, generator=g).mul(5).floor() / 5
    ours = spearman(a, b)
    for i in range(3):  # golden: scipy.stats.spearmanr
        assert ours[i] == pytest.approx(scipy.stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic, abs=1e-12)
    assert np.isnan(spearman(torch.zeros(1, 8, 8), b[:1, :8, :8])[0])  # a constant map has no ranking


def test_ssim_equals_skimage_defaults():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 20, 24, generator=g)
    b = (a + 0.3 * torch.rand(2, 20, 24, generator=g)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(2):  # golden: skimage's SSIM, uniform 7x7 window, data range 1
        ref = structural_similarity(a[i].double().numpy(), b[i].double().numpy(), data_range=1.0)
        assert ours[i] == pytest.approx(ref, abs=1e-10)
    assert ssim(a, a) == pytest.approx(np.ones(2))


def test_blocks_run_from_the_output_down_and_reinitialisation_is_seeded(vit):
    blocks = randomisation_blocks(vit.module)
    assert [b.name for b in blocks] == ["head", "norm", "blocks.3", "blocks.2", "blocks.1", "blocks.0", "patch_embed"]
    assert {p.shape for p in blocks[-1].params} == {vit.module.cls_token.shape, vit.module.pos_embed.shape}
    head = vit.module.head
    before = head.weight.detach().clone()
    reinitialise(blocks[0], 5)
    first = head.weight.detach().clone()
    reinitialise(blocks[0], 5)
    assert not torch.equal(before, first) and torch.equal(first, head.weight)
    head.weight.data.copy_(before)


def test_cnn_blocks_cover_every_parameter():
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    blocks = randomisation_blocks(model)
    assert [b.name for b in blocks] == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
    covered = {id(p) for b in blocks for m in b.modules for p in m.parameters()}
    assert covered == {id(p) for p in model.parameters()}


def test_a_model_independent_method_keeps_correlation_one_at_every_step(vit, images, edges):
    explainers = {edges: build_explainer(edges, vit)}
    out = sanity_batch(vit.module, explainers, images, None, seed=0)
    for mode in ("cascading", "independent"):
        rho = out.values[mode][edges]["spearman"]  # [steps, B]
        assert rho.shape == (7, 4)   # 7 randomisation steps of the 4-block ViT, 4 images
        np.testing.assert_allclose(rho, 1.0, atol=1e-12)
        np.testing.assert_allclose(out.values[mode][edges]["ssim"], 1.0, atol=1e-12)


def test_gradcam_correlation_falls_as_blocks_are_randomised_and_weights_come_back(vit, images):
    trained = {k: v.clone() for k, v in vit.module.state_dict().items()}
    explainers = {"gradcam": build_explainer("gradcam", vit)}
    targets = torch.tensor([0, 1, 2, 3])
    out = sanity_batch(vit.module, explainers, images, targets, seed=0)
    rho = np.nanmean(out.values["cascading"]["gradcam"]["spearman"], axis=1)  # [steps]
    assert rho[-1] < 0.5 and rho[-1] < rho[0]  # fully randomised: the maps no longer resemble the trained ones
    assert rho[:3].mean() > rho[3:].mean()  # and it falls on the way down
    assert all(torch.equal(v, vit.module.state_dict()[k]) for k, v in trained.items())  # restored afterwards
    # independent and cascading agree at the first step (only the head re-drawn, the same seed)
    np.testing.assert_allclose(out.values["independent"]["gradcam"]["spearman"][0],
                               out.values["cascading"]["gradcam"]["spearman"][0])
