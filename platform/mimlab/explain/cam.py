"""CAM family (methods-spec §2.1) on the ``grad-cam`` package: GradCAM, GradCAM++, XGradCAM, Score-CAM.

The invariant work lives in :class:`CamExplainer` (target-layer resolution, the ViT token → grid reshape, targets);
each method names its engine class. Target layer: ``target-layer=<module path>``; default for CNNs = the last
convolutional stage (timm ``feature_info[-1]``, e.g. ``layer4``), for ViTs = ``blocks.<last>.norm1`` with tokens
reshaped to the patch grid of the input (prefix tokens dropped, nothing hard-coded).
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
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, list) else None
        if isinstance(last, dict) and last.get("module"):
            return str(last["module"])
        try:
            return str(info.module_name()[-1])
        except Exception:  # noqa: BLE001 - fall through to the generic search
            pass
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

    def configure(self) -> None:
        path = self.spec.params.get("target-layer") or default_target_layer(self.model, self.loaded.kind)
        names = dict(self.model.named_modules())
        if path not in names or path == "":
            raise UserError(
                f"method '{self.text}': target-layer '{path}' is not a module of the model"
                f"{did_you_mean(path, [n for n in names if n])}"
            )
        self.layer_path = path
        self.layer = names[path]
        self.reshape = _TokenGrid(int(getattr(self.model, "num_prefix_tokens", 1))) if self.loaded.kind == "vit" \
            else None

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
        with engine_cls(model=self.model, target_layers=[self.layer], reshape_transform=self.reshape) as cam:
            cam.batch_size = self.batch_size
            with torch.enable_grad(), contextlib.redirect_stderr(io.StringIO()):  # Score-CAM's tqdm bars
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
