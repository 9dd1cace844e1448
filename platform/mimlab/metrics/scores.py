"""Class scores shared by the faithfulness metrics: which class, and softmax probability or logit."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mimlab.errors import UserError


@torch.no_grad()
def forward_scores(model: torch.nn.Module, images: Tensor, classes: Tensor, score: str = "softmax") -> Tensor:
    """``softmax(f(x))[c]`` or ``f(x)[c]`` per image.

    Args:
        model: classifier returning logits ``[B, K]``.
        images: normalised images ``[B, 3, H, W]``.
        classes: ``LongTensor[B]`` class per image.
        score: ``softmax`` (probability) or ``logit``.

    Returns:
        ``float [B]``.
    """
    logits = model(images).float()  # [B,K]
    out = logits.softmax(dim=1) if score == "softmax" else logits
    return out.gather(1, classes.view(-1, 1).to(out.device)).squeeze(1)  # [B,K] -> [B]


@torch.no_grad()
def predicted_classes(model: torch.nn.Module, images: Tensor, cache: dict[Any, Any] | None = None) -> Tensor:
    """``argmax f(x)`` per image (``LongTensor[B]``), memoised in ``cache`` for the batch."""
    if cache is not None and "predicted" in cache:
        return cache["predicted"]
    pred = model(images).argmax(dim=1)  # [B,K] -> [B]
    if cache is not None:
        cache["predicted"] = pred
    return pred


def resolve_classes(
    source: str,
    model: torch.nn.Module,
    images: Tensor,
    targets: Tensor | None,
    what: str,
    cache: dict[Any, Any] | None = None,
) -> Tensor:
    """The class each image is scored for: the ground truth (``gt``) or the prediction (``predicted``)."""
    if source == "gt":
        if targets is None:
            raise UserError(
                f"metric '{what}' scores the ground-truth class but the images have no labels "
                "(use class=predicted or data with labels)"
            )
        return targets.to(images.device)
    return predicted_classes(model, images, cache)
