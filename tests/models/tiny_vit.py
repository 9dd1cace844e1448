"""A micro ViT for the checkpoint-layout tests (dim 32, 2 blocks, patch 8, 32 px): fast enough for explain, k-NN
and pretraining on 2 cores. ``platform`` reaches it as ``--model tiny_vit:backbone`` / ``tiny_vit:classifier``."""

from __future__ import annotations

from mimlab.models.vit import create_backbone

TIMM = "vit_tiny_patch16_224"
ARCH = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
CLASSES = 10


def backbone():
    """The backbone without a classifier (DINO/iBOT/MAE/pretrain layouts)."""
    return create_backbone(TIMM, **ARCH, num_classes=0)


def classifier():
    """The same backbone with a 10-class classifier ``head`` (the DeiT layout)."""
    return create_backbone(TIMM, **ARCH, num_classes=CLASSES)
