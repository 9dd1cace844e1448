"""Every CAM of the registry against grad-cam's own engine called directly on a timm ResNet.

Golden: ``pytorch_grad_cam.<Engine>(model, target_layers=[model.layer4[-1]])(input, [ClassifierOutputTarget(t)])``
— the engine called by hand on an explicit module, versus our registry path (default layer resolved from timm's
``feature_info``, our targets). A blank map cannot pass: each map must vary over the image.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from mimlab.explain import build_explainer
from mimlab.models.loading import LoadedModel

ENGINES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "scorecam": "ScoreCAM",
    "hirescam": "HiResCAM",
    "gradcam-elementwise": "GradCAMElementWise",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "ablationcam": "AblationCAM",
    "fullgrad": "FullGrad",
}


SIZE = 128


@pytest.fixture(scope="module")
def resnet() -> LoadedModel:
    """timm's ResNet class (BasicBlocks, plain BatchNorm2d) at 1/8 width so Score-/Ablation-CAM stay cheap."""
    from timm.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1, 1], channels=(8, 16, 32, 64), stem_width=8, num_classes=10,
                   zero_init_last=False).eval()
    return LoadedModel(model, "cnn", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), SIZE, "resnet-tiny")


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_cam_equals_grad_cams_own_engine_on_a_resnet(name, resnet):
    import contextlib
    import io

    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    images = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    target = 7
    ours = build_explainer(name, resnet)(images, torch.tensor([target]))[0].numpy()
    model = resnet.module
    kwargs = {"ablation_layer": pytorch_grad_cam.AblationLayer()} if name == "ablationcam" else {}
    layers = [] if name == "fullgrad" else [model.layer4[-1]]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        engine = getattr(pytorch_grad_cam, ENGINES[name])(model=model, target_layers=layers, **kwargs)
        with engine as cam:
            theirs = cam(input_tensor=images.clone(), targets=[ClassifierOutputTarget(target)])[0]
    assert ours.shape == theirs.shape == (SIZE, SIZE)
    assert ours.std() > 0.01 and theirs.std() > 0.01  # not a blank map
    rho = scipy.stats.spearmanr(ours.ravel(), theirs.ravel()).statistic
    assert rho >= 0.99, rho
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
