"""Features: one forward gives the k-NN [cls] and the last-4-blocks concatenation, matching timm's own API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mimlab.errors import UserError
from mimlab.evaluation.features import batch_features, extract, to_input
from mimlab.models.vit import create_backbone

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def vit():
    from tiny_assets import tiny_vit

    return tiny_vit(depth=5, num_classes=0)


def test_vit_features_match_timm_intermediates(vit):
    x = torch.randn(3, 3, 32, 32)
    got = batch_features(vit, x, n_last_blocks=4)
    assert got["knn"].shape == (3, 32) and got["linear"].shape == (3, 128)
    # independent computation: timm's forward_intermediates with the final norm applied to each block output
    _, prefixes = zip(*vit.forward_intermediates(x, indices=4, norm=True, return_prefix_tokens=True,
                                                 intermediates_only=True), strict=True)
    want = torch.cat([p[:, 0] for p in prefixes], dim=1)  # 4×[B,D] -> [B,4D]
    torch.testing.assert_close(got["linear"], want)
    final_cls = vit.forward_features(x)[:, 0]
    torch.testing.assert_close(got["knn"], F.normalize(final_cls, dim=1))
    torch.testing.assert_close(got["linear"][:, -32:], final_cls)
    assert torch.allclose(got["knn"].norm(dim=1), torch.ones(3))


def test_extract_uint8_batches_with_labels(vit):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    batches = [(imgs[:2], [0, 1]), (imgs[2:], [2, 3, 4])]
    vit.train()
    feats, labels = extract(vit, batches, mean=MEAN, std=STD, kind="linear", n_last_blocks=2)
    assert vit.training  # mode restored
    assert feats.shape == (5, 64) and labels.tolist() == [0, 1, 2, 3, 4]
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(STD).view(1, 3, 1, 1)
    vit.eval()
    torch.testing.assert_close(feats, batch_features(vit, x, 2)["linear"])
    knn = extract(vit, [torch.from_numpy(imgs).permute(0, 3, 1, 2)], mean=MEAN, std=STD)
    torch.testing.assert_close(knn, batch_features(vit, x, 1)["knn"])


def test_cnn_pooled_features():
    cnn = create_backbone("resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    got = batch_features(cnn, x)
    pooled = cnn.forward_features(x).mean((2, 3))  # independent: global average pool of the last stage
    torch.testing.assert_close(got["linear"], pooled)
    torch.testing.assert_close(got["knn"], F.normalize(pooled, dim=1))


def test_bad_inputs(vit):
    with pytest.raises(UserError, match="4-D"):
        to_input(torch.zeros(3, 32, 32, dtype=torch.uint8), MEAN, STD)
    with pytest.raises(UserError, match="n_last_blocks"):
        batch_features(vit, torch.randn(1, 3, 32, 32), n_last_blocks=9)
    with pytest.raises(UserError, match="feature kind"):
        extract(vit, [], kind="avg")
