"""A tiny pretrain-format checkpoint (teacher and student differ) for the evaluation API and CLI tests."""

from __future__ import annotations

import json

import pytest
import torch

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``backbone.json`` + ``teacher_backbone.safetensors`` + ``student_backbone.safetensors`` (the contract)."""
    from safetensors.torch import save_file

    from mimlab.models.vit import create_backbone

    out = tmp_path_factory.mktemp("ckpt")
    for name, seed in (("teacher", 0), ("student", 1)):
        torch.manual_seed(seed)
        model = create_backbone("vit_tiny_patch16_224", **TINY)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"{name}_backbone.safetensors"))
    (out / "backbone.json").write_text(json.dumps({
        "timm_name": "vit_tiny_patch16_224", "kwargs": TINY, "img_size": 32,
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "epoch": 0}))
    return out
