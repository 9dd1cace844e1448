"""timm backbones built offline.

Attention mode: by default every block runs the explicit (softmax-materialising) path, so hook-based explainers
(TIBAV, grad-cam wrappers) see the probabilities. ``fused_attention=True`` keeps timm's fused kernel
(``F.scaled_dot_product_attention``) in every block; :class:`~mimlab.models.capture.AttentionCapture` then switches
only the blocks it records to the explicit path, for the forwards inside its context (pretraining builds its
student and teacher this way, so a block runs explicit only where a masking strategy reads it).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from mimlab.errors import UserError, did_you_mean


def set_fused_attention(model: nn.Module, fused: bool) -> nn.Module:
    """Set every timm attention module's ``fused_attn`` flag, in place.

    timm's ``Attention`` reads ``fused_attn`` at every forward; when fused it calls
    ``F.scaled_dot_product_attention`` and no attention probabilities ever exist, so hooks see nothing.
    """
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    return model


def disable_fused_attention(model: nn.Module) -> nn.Module:
    """Switch every timm attention module to the explicit (softmax-materialising) path, in place."""
    return set_fused_attention(model, False)


def create_backbone(timm_name: str, *, fused_attention: bool = False, **kwargs: Any) -> nn.Module:
    """Build a timm model by name with random weights, never touching the network.

    Args:
        timm_name: a timm model name, e.g. ``vit_tiny_patch16_224`` or ``resnet50``.
        **kwargs: forwarded to ``timm.create_model`` and overriding the entrypoint defaults (``img_size``,
            ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``num_classes`` ...). ``pretrained`` is
            always ``False``: load local weights with :func:`mimlab.models.loading.load_model`.
        fused_attention: keep the fused kernel in every block (attention is then readable only through
            :class:`~mimlab.models.capture.AttentionCapture`, which makes the blocks it records explicit per
            forward). Default ``False``: every block explicit, what hook-based explainers need.

    Returns:
        The model in eval mode.
    """
    import timm

    kwargs.pop("pretrained", None)
    if not timm.is_model(timm_name):
        raise UserError(f"unknown timm model '{timm_name}'{did_you_mean(timm_name, timm.list_models())}")
    try:
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    except TypeError as err:
        raise UserError(f"timm model '{timm_name}' rejected its arguments {sorted(kwargs)}: {err}") from None
    set_fused_attention(model, fused_attention)
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
