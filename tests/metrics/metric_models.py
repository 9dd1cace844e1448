"""Tiny models for the metric tests (no downloads, CPU, 32 px)."""

from __future__ import annotations

import torch
from tiny_assets import tiny_vit as build_vit
from torch import nn


def tiny_cnn(num_classes: int = 5, seed: int = 0) -> nn.Module:
    """conv → ReLU → pool → linear; random but fixed weights."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )
    return model.eval()


def tiny_vit(num_classes: int = 5, seed: int = 0) -> nn.Module:
    """The shared micro ViT (tests/tiny_assets.py) with 2 blocks."""
    return build_vit(num_classes=num_classes, seed=seed, depth=2)


class RegionModel(nn.Module):
    """Two classes; the class-0 logit is a matched filter of a checkerboard inside one square region.

    Only pixels of ``region`` (rows r0:r1, cols c0:c1) influence the output, and a blurred checkerboard scores
    ~0, so insertion from blur(x) and deletion to 0 both move the score only while region pixels change.
    """

    def __init__(
        self, size: int = 32, region: tuple[int, int, int, int] = (8, 20, 10, 22), gain: float = 8.0
    ):
        super().__init__()
        r0, r1, c0, c1 = region
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        pattern = ((yy + xx) % 2 * 2 - 1).float()  # ±1 checkerboard [H,W]
        inside = torch.zeros(size, size)
        inside[r0:r1, c0:c1] = 1
        self.register_buffer("filt", pattern * inside / inside.sum())
        self.register_buffer("inside", inside.bool())
        self.gain = gain

    def image(self, batch: int = 1) -> torch.Tensor:
        """A normalised image whose region holds the checkerboard (score high) and noise elsewhere."""
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, 3, *self.filt.shape, generator=g) * 0.3
        x[:, :, self.inside] = (self.filt.sign()[self.inside]).expand(batch, 3, -1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.mean(1) * self.filt).sum(dim=(1, 2)) * self.gain  # [B,3,H,W] -> [B]
        return torch.stack([z, torch.zeros_like(z)], dim=1)  # [B,2]
