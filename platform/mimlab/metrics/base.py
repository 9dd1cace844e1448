"""The metric interface: one verb, the same signature for every metric, behaviour declared as metadata."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mimlab.errors import UserError
from mimlab.spec import MethodSpec


class Metric:
    """A per-image saliency metric.

    Subclasses implement :meth:`__call__` and declare what they need:

    * ``higher_is_better`` — direction used to mark the best method in tables.
    * ``needs_label`` — ground-truth labels must be given (AD/AI with ``class=gt``).
    * ``needs_mask`` — a foreground mask per image must be given (localisation metrics).
    * ``needs_model`` — the metric runs the model (faithfulness) or not (localisation).
    * ``keys`` — the spec keys the metric accepts (``insertion:step=16,substrate=blur``).
    """

    higher_is_better: ClassVar[bool] = True
    needs_label: ClassVar[bool] = False
    needs_mask: ClassVar[bool] = False
    needs_model: ClassVar[bool] = True
    keys: ClassVar[frozenset[str]] = frozenset()
    registry_name: ClassVar[str] = ""

    def __init__(self, spec: MethodSpec) -> None:
        spec.check_keys(self.keys)
        self.spec = spec

    @property
    def name(self) -> str:
        """Column name used in tables: the spec text (``insertion`` or ``insertion:step=16``)."""
        return self.spec.text or self.registry_name

    def requires_label(self) -> bool:
        """Whether this configured instance needs labels (may depend on options such as ``class=``)."""
        return self.needs_label

    def __call__(
        self,
        model: torch.nn.Module,
        images: Tensor,
        maps: Tensor,
        targets: Tensor | None,
        mean: Tensor,
        std: Tensor,
        *,
        masks: Tensor | None = None,
        cache: dict[Any, Any] | None = None,
    ) -> Tensor:
        """Score each image.

        Args:
            model: classifier returning logits ``[B, C]``, in eval mode.
            images: normalised images ``[B, 3, H, W]``.
            maps: saliency maps ``[B, H, W]`` in [0, 1].
            targets: ground-truth labels ``LongTensor[B]`` or None.
            mean: per-channel normalisation mean ``[3]``.
            std: per-channel normalisation std ``[3]``.
            masks: foreground masks ``bool [B, H, W]`` or None.
            cache: per-batch memo shared by the metrics of one batch (e.g. the clean-image predictions).

        Returns:
            ``float [B]`` — one value per image.
        """
        raise NotImplementedError


def choice(spec: MethodSpec, key: str, default: str, allowed: tuple[str, ...]) -> str:
    """Read a string option that must be one of ``allowed``."""
    value = spec.params.get(key, default)
    if value not in allowed:
        raise UserError(
            f"metric '{spec.text}': key '{key}' must be one of {', '.join(allowed)}, got '{value}'"
        )
    return value


def check_inputs(images: Tensor, maps: Tensor, targets: Tensor | None, masks: Tensor | None = None) -> None:
    """Fail with one clear line when maps/targets/masks do not fit the images."""
    if images.ndim != 4:
        raise UserError(f"images must be [B,3,H,W], got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    if tuple(maps.shape) != (b, h, w):
        raise UserError(
            f"saliency maps must have shape {(b, h, w)} to match the images, got {tuple(maps.shape)}"
        )
    if not torch.isfinite(maps).all():
        raise UserError("saliency maps contain NaN or infinite values")
    if targets is not None and tuple(targets.shape) != (b,):
        raise UserError(f"targets must have shape {(b,)}, got {tuple(targets.shape)}")
    if masks is not None and tuple(masks.shape) != (b, h, w):
        raise UserError(f"masks must have shape {(b, h, w)} to match the images, got {tuple(masks.shape)}")
