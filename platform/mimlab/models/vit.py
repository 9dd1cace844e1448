"""timm backbones built offline, with fused attention switched off so attention can be captured by hooks."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from mimlab.errors import UserError, did_you_mean


def disable_fused_attention(model: nn.Module) -> nn.Module:
    """Switch every timm attention module to the explicit (softmax-materialising) path, in place.

    timm's ``Attention`` decides ``fused_attn`` at construction; when fused it calls
    ``F.scaled_dot_product_attention`` and no attention probabilities ever exist, so hooks see nothing.
    """
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


def create_backbone(timm_name: str, **kwargs: Any) -> nn.Module:
    """Build a timm model by name with random weights, never touching the network.

    Args:
        timm_name: a timm model name, e.g. ``vit_tiny_patch16_224`` or ``resnet50``.
        **kwargs: forwarded to ``timm.create_model`` and overriding the entrypoint defaults (``img_size``,
            ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``num_classes`` ...). ``pretrained`` is
            always ``False``: load local weights with :func:`mimlab.models.loading.load_model`.

    Returns:
        The model in eval mode with fused attention switched off.
    """
    import timm

    kwargs.pop("pretrained", None)
    if not timm.is_model(timm_name):
        raise UserError(f"unknown timm model '{timm_name}'{did_you_mean(timm_name, timm.list_models())}")
    try:
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    except TypeError as err:
        raise UserError(f"timm model '{timm_name}' rejected its arguments {sorted(kwargs)}: {err}") from None
    disable_fused_attention(model)
    return model.eval()


def is_vit(model: nn.Module) -> bool:
    """True for ViT-like models: a ``blocks`` sequence whose items have ``attn.qkv`` (timm ViT/DeiT layout)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return False
    try:
        first = next(iter(blocks))
    except (TypeError, StopIteration):
        return False
    attn = getattr(first, "attn", None)
    return attn is not None and hasattr(attn, "qkv") and hasattr(attn, "num_heads")


def vit_depth(model: nn.Module) -> int:
    """Number of transformer blocks of a ViT."""
    return len(model.blocks)
