"""Localisation metrics against a foreground mask: pointing game, energy-based pointing game, top-k % IoU.

They do not run the model. An image whose mask is empty gets NaN (excluded from means by the evaluator).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from mimlab.errors import UserError
from mimlab.metrics.base import Metric
from mimlab.metrics.perturbation import pixel_order
from mimlab.metrics.registry import METRICS
from mimlab.spec import MethodSpec


def _empty_to_nan(values: Tensor, masks: Tensor) -> Tensor:
    empty = masks.reshape(masks.shape[0], -1).sum(1) == 0  # [B,H,W] -> [B]
    return torch.where(empty, torch.full_like(values, math.nan), values)


def pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """1 when the map's maximum (first in flat order on ties) lies inside the object, else 0.

    Args:
        maps: ``[B, H, W]``; masks: ``bool [B, H, W]``.

    Returns:
        ``float [B]``.
    """
    flat_max = maps.reshape(maps.shape[0], -1).argmax(dim=1)  # [B,H,W] -> [B]
    hit = masks.reshape(masks.shape[0], -1).gather(1, flat_max.view(-1, 1)).squeeze(1)  # [B]
    return _empty_to_nan(hit.float(), masks)


def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """Share of the saliency mass inside the object: ``Σ S·M / Σ S`` (0 for an all-zero map).

    Args:
        maps: ``[B, H, W]`` non-negative; masks: ``bool [B, H, W]``.

    Returns:
        ``float [B]``.
    """
    s = maps.reshape(maps.shape[0], -1).double()  # [B,H,W] -> [B,HW]
    m = masks.reshape(masks.shape[0], -1).double()
    total = s.sum(1)
    inside = (s * m).sum(1)
    share = torch.where(total > 0, inside / total.clamp(min=1e-300), torch.zeros_like(total))
    return _empty_to_nan(share.float(), masks)


def topk_iou(maps: Tensor, masks: Tensor, percent: float) -> Tensor:
    """IoU between the top ``percent`` % pixels of the map (stable order, ties by index) and the object mask.

    Args:
        maps: ``[B, H, W]``; masks: ``bool [B, H, W]``; percent: in (0, 100].

    Returns:
        ``float [B]``.
    """
    b = maps.shape[0]
    hw = maps[0].numel()
    k = max(1, round(percent / 100 * hw))
    order = pixel_order(maps)[:, :k]  # [B,k]
    top = torch.zeros(b, hw, dtype=torch.bool, device=maps.device)
    top.scatter_(1, order, True)  # [B,HW]
    m = masks.reshape(b, -1).bool()
    inter = (top & m).sum(1).float()
    union = (top | m).sum(1).float()
    return _empty_to_nan(inter / union, masks)


class _MaskMetric(Metric):
    needs_mask: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = True

    def _masks(self, maps: Tensor, masks: Tensor | None) -> Tensor:
        if masks is None:
            raise UserError(f"metric '{self.name}' needs foreground masks but the data has none")
        return masks.to(maps.device).bool()


@METRICS.register("pointing")
class PointingGame(_MaskMetric):
    """Pointing game: is the maximum of the map inside the object."""

    def __call__(self, model, images, maps, targets, mean, std, *, masks=None, cache=None) -> Tensor:
        return pointing_game(maps, self._masks(maps, masks))


@METRICS.register("energy")
class EnergyPointingGame(_MaskMetric):
    """Energy-based pointing game: share of the saliency mass inside the object."""

    def __call__(self, model, images, maps, targets, mean, std, *, masks=None, cache=None) -> Tensor:
        return energy_pointing_game(maps, self._masks(maps, masks))


@METRICS.register("iou")
class TopKIoU(_MaskMetric):
    """IoU of the top-k % most salient pixels with the mask (``iou:k=20``)."""

    keys: ClassVar[frozenset[str]] = frozenset({"k"})

    def __init__(self, spec: MethodSpec) -> None:
        super().__init__(spec)
        self.percent = spec.get_float("k", 20.0)
        if not 0 < self.percent <= 100:
            raise UserError(f"metric '{spec.text}': key 'k' is a percentage in (0, 100], got {self.percent}")

    def __call__(self, model, images, maps, targets, mean, std, *, masks=None, cache=None) -> Tensor:
        return topk_iou(maps, self._masks(maps, masks), self.percent)
