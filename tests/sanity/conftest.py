"""Fixtures for the sanity-check tests: a tiny ViT as a ``platform pretrain`` checkpoint on disk."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def vit_checkpoint(tmp_path_factory):
    """A 3-block, dim-32, patch-8 ViT at 32 px with a 10-class head, saved as a ``platform pretrain`` checkpoint."""
    import torch
    from safetensors.torch import save_file

    from mimlab.models.vit import create_backbone

    folder = tmp_path_factory.mktemp("sanity-vit") / "ckpt"
    folder.mkdir()
    kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}
    torch.manual_seed(0)
    model = create_backbone("vit_tiny_patch16_224", **kwargs, num_classes=10)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for name in ("teacher_backbone.safetensors", "student_backbone.safetensors"):
        save_file(state, str(folder / name))
    (folder / "backbone.json").write_text(json.dumps({"timm_name": "vit_tiny_patch16_224", "kwargs": kwargs,
                                                      "img_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
                                                      "epoch": 0}))
    return folder
