"""CAM family (methods-spec §2.1) on the ``grad-cam`` package (1.5.7): GradCAM, GradCAM++, XGradCAM, Score-CAM
(the thesis' four) and HiResCAM, GradCAM element-wise, LayerCAM, EigenCAM, EigenGradCAM, AblationCAM, FullGrad.

The invariant work lives in :class:`CamExplainer` (target-layer resolution, the ViT token → grid reshape, targets);
each method names its engine class. Target layer: ``target-layer=<module path>``; default for CNNs = the last
convolutional stage (timm ``feature_info[-1]``, e.g. ``layer4``), for ViTs = ``blocks.<last>.norm1`` with tokens
reshaped to the patch grid of the input (prefix tokens dropped, nothing hard-coded).

FullGrad ignores the target layer (it sums input-gradient × input and bias-gradient maps of every
``Conv2d``/``BatchNorm2d`` with a bias); on a ViT only the patch embedding qualifies, so it is offered for CNNs only.
grad-cam matches those layer types exactly, so timm's fused ``BatchNormAct2d`` layers (EfficientNet, RegNet, …)
are skipped; timm's ResNets use plain ``BatchNorm2d`` and are fully covered.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from mimlab.errors import UserError, did_you_mean
from mimlab.explain.base import EXPLAINERS, Explainer


def default_target_layer(model: nn.Module, kind: str) -> str:
    """Module path of the default CAM layer: ViT ``blocks.<last>.norm1``; CNN the last conv stage."""
    if kind == "vit":
        return f"blocks.{len(model.blocks) - 1}.norm1"
    info = getattr(model, "feature_info", None)  # timm classifiers: a list of dicts, the last stage last
    if isinstance(info, list) and info and isinstance(info[-1], dict) and info[-1].get("module"):
        return str(info[-1]["module"])
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError("model has no Conv2d layer: pass the CAM layer explicitly with target-layer=<module path>")
    return convs[-1]


class _TokenGrid:
    """grad-cam ``reshape_transform`` for ViTs: ``[B,N,C]`` tokens -> ``[B,C,h,w]`` for the current input grid."""

    def __init__(self, num_prefix: int) -> None:
        self.num_prefix = num_prefix
        self.grid: tuple[int, int] = (0, 0)

    def __call__(self, tokens: Tensor) -> Tensor:
        h, w = self.grid
        patches = tokens[:, self.num_prefix:, :]  # [B,N,C] -> [B,Np,C]
        if patches.shape[1] != h * w:
            raise UserError(f"target layer output has {patches.shape[1]} patch tokens, expected a {h}x{w} grid")
        return patches.reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2)  # [B,Np,C] -> [B,C,h,w]


class CamExplainer(Explainer):
    """Template for the grad-cam engines; subclasses set :attr:`engine` (a grad-cam class name)."""

    engine: ClassVar[str] = ""
    keys = frozenset({"target-layer"})
    batch_size: ClassVar[int] = 16

    def engine_kwargs(self) -> dict[str, Any]:
        """Extra constructor arguments of the grad-cam engine (a fresh instance per call where stateful)."""
        return {}

    def configure(self) -> None:
        path = self.spec.params.get("target-layer") or default_target_layer(self.model, self.loaded.kind)
        names = dict(self.model.named_modules())
        if path not in names:
            raise UserError(
                f"method '{self.text}': target-layer '{path}' is not a module of the model"
                f"{did_you_mean(path, [n for n in names if n])}"
            )
        self.layer_path = path
        self.layer = names[path]
        self.reshape = _TokenGrid(int(self.model.num_prefix_tokens)) if self.loaded.kind == "vit" else None

    def explain(self, images: Tensor, targets: Tensor | None) -> Tensor:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        if self.reshape is not None:
            ph, pw = self.model.patch_embed.patch_size
            self.reshape.grid = (images.shape[-2] // ph, images.shape[-1] // pw)
        engine_cls = getattr(pytorch_grad_cam, self.engine)
        cam_targets: Any = None
        if targets is not None:
            cam_targets = [ClassifierOutputTarget(int(t)) for t in torch.as_tensor(targets).reshape(-1)]
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):  # FullGrad prints that it ignores target_layers
            engine = engine_cls(model=self.model, target_layers=[self.layer], reshape_transform=self.reshape,
                                **self.engine_kwargs())
        with engine as cam:
            cam.batch_size = self.batch_size
            with torch.enable_grad(), contextlib.redirect_stderr(quiet):  # Score-/Ablation-CAM's tqdm bars
                maps = cam(input_tensor=images, targets=cam_targets)
        self.model.zero_grad(set_to_none=True)
        return torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).to(images.device)


@EXPLAINERS.register("gradcam")
class GradCam(CamExplainer):
    """GradCAM: channel weights = spatial mean of the target logit's gradient."""

    engine = "GradCAM"


@EXPLAINERS.register("gradcam++")
class GradCamPlusPlus(CamExplainer):
    """GradCAM++: α-weighted positive gradients (eq. 19 under the exp-score assumption)."""

    engine = "GradCAMPlusPlus"


@EXPLAINERS.register("xgradcam")
class XGradCam(CamExplainer):
    """XGradCAM: weights = Σ g·A / Σ A."""

    engine = "XGradCAM"


@EXPLAINERS.register("scorecam")
class ScoreCam(CamExplainer):
    """Score-CAM: softmax over the target logits of inputs masked by each upsampled channel (no gradients)."""

    engine = "ScoreCAM"
    gradient_free = True


@EXPLAINERS.register("hirescam")
class HiResCam(CamExplainer):
    """HiResCAM: element-wise gradient × activation summed over channels (no spatial averaging of the weights)."""

    engine = "HiResCAM"


@EXPLAINERS.register("gradcam-elementwise")
class GradCamElementWise(CamExplainer):
    """GradCAM element-wise: ReLU(gradient × activation) summed over channels."""

    engine = "GradCAMElementWise"


@EXPLAINERS.register("layercam")
class LayerCam(CamExplainer):
    """LayerCAM: ReLU(gradient) × activation, element-wise, summed over channels."""

    engine = "LayerCAM"


@EXPLAINERS.register("eigencam")
class EigenCam(CamExplainer):
    """EigenCAM: first principal component of the activations (no gradients and no class)."""

    engine = "EigenCAM"
    gradient_free = True
    takes_target = False


@EXPLAINERS.register("eigengradcam")
class EigenGradCam(CamExplainer):
    """EigenGradCAM: first principal component of gradient × activation."""

    engine = "EigenGradCAM"


@EXPLAINERS.register("ablationcam")
class AblationCam(CamExplainer):
    """AblationCAM: weight of a channel = relative drop of the target logit when the channel is zeroed."""

    engine = "AblationCAM"
    gradient_free = True

    def engine_kwargs(self) -> dict[str, Any]:
        from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit

        return {"ablation_layer": AblationLayerVit() if self.loaded.kind == "vit" else AblationLayer(),
                "batch_size": self.batch_size}


@EXPLAINERS.register("fullgrad")
class FullGradCam(CamExplainer):
    """FullGrad: |input-gradient × input| plus |bias-gradient × bias| of every conv/BN bias (CNNs only)."""

    engine = "FullGrad"
    cnn_only = True
