"""Tiny models for the explainer tests (dim 32, 32 px) so Score-CAM and TIBAV stay cheap on 2 cores."""

from __future__ import annotations

import torch
import torch.nn as nn

from tiny_assets import ARCH
from tiny_assets import tiny_vit as build_vit

from mimlab.models.loading import LoadedModel

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TinyCNN(nn.Module):
    """conv(3→8) → ReLU → conv(8→8, stride 1) → ReLU → GAP → linear; the last conv keeps the input resolution."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stage = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        a = torch.relu(self.stage(torch.relu(self.stem(x))))
        return self.fc(a.mean((2, 3)))


def tiny_vit(seed: int = 0, **kw) -> LoadedModel:
    """The shared micro ViT (tests/tiny_assets.py) with 3 blocks and 4 classes unless ``kw`` says otherwise."""
    args = {"depth": 3, "num_classes": 4, **kw}
    model = build_vit(seed=seed, **args)
    return LoadedModel(model, "vit", MEAN, STD, args.get("img_size", ARCH["img_size"]), "tiny-vit")


def tiny_cnn(seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    return LoadedModel(TinyCNN().eval(), "cnn", MEAN, STD, 32, "tiny-cnn")


