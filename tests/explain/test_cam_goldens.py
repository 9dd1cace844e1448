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


def test_default_cam_layer_is_the_last_listed_stage_else_the_last_conv(resnet):
    from torch import nn

    from mimlab.errors import UserError
    from mimlab.explain.cam import default_target_layer

    assert default_target_layer(resnet.module, "cnn") == "layer4"  # timm's feature_info[-1]["module"]
    convs = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    assert default_target_layer(convs, "cnn") == "4"  # no feature_info: the third (last) of three convs
    for info in ([], [{"num_chs": 4, "reduction": 1}]):  # empty, or no module named: the last conv again
        convs.feature_info = info
        assert default_target_layer(convs, "cnn") == "4"
    with pytest.raises(UserError) as err:
        default_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), "cnn")
    assert str(err.value) == ("model has no Conv2d layer: pass the CAM layer explicitly with "
                              "target-layer=<module path>")


def test_vit_target_layer_without_patch_tokens_is_one_error_line():
    from explain_models import tiny_vit

    from mimlab.errors import UserError

    # patch_embed.proj outputs [B, 32, 4, 4]; dropping the cls "token" leaves 31 rows, not the 4x4 = 16 patches
    loaded = tiny_vit()
    with pytest.raises(UserError) as err:
        build_explainer("gradcam:target-layer=patch_embed.proj", loaded)(torch.randn(1, 3, 32, 32), torch.tensor([1]))
    assert str(err.value) == "target layer output has 31 patch tokens, expected a 4x4 grid"


def test_vit_cam_on_a_non_square_input_equals_grad_cams_engine_with_a_hand_reshape():
    import pytorch_grad_cam
    from explain_models import MEAN, STD
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from tiny_assets import tiny_vit

    model = tiny_vit(num_classes=4, img_size=(16, 32), depth=2)  # a 2 x 4 patch grid
    loaded = LoadedModel(model, "vit", MEAN, STD, 32, "tiny-vit-2x4")
    images = torch.randn(2, 3, 16, 32, generator=torch.Generator().manual_seed(2))
    ours = build_explainer("gradcam", loaded)(images, torch.tensor([1, 3])).numpy()

    def reshape(tokens):  # independent: [B, 1 + 8, C] -> [B, C, 2, 4] written out for this grid
        return tokens[:, 1:, :].reshape(tokens.shape[0], 2, 4, tokens.shape[2]).permute(0, 3, 1, 2)

    with pytorch_grad_cam.GradCAM(model=model, target_layers=[model.blocks[1].norm1],
                                  reshape_transform=reshape) as cam:
        theirs = cam(input_tensor=images.clone(), targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    assert ours.shape == theirs.shape == (2, 16, 32)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_cam_leaves_no_gradient_on_the_model(resnet):
    images = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    build_explainer("gradcam", resnet)(images, torch.tensor([2]))
    assert all(p.grad is None for p in resnet.module.parameters())
