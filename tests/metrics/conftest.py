"""Fixtures for the saliency-evaluation tests: a micro ViT saved as a ``platform pretrain`` checkpoint."""

from __future__ import annotations

import json

import pytest


def write_tiny_checkpoint(folder, num_classes: int = 10, seed: int = 0):
    """A 2-block, dim-32, patch-8 ViT at 32 px with a ``num_classes`` head, as a pretrain checkpoint."""
    import torch
    from safetensors.torch import save_file

    from mimlab.models.vit import create_backbone

    kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    torch.manual_seed(seed)
    model = create_backbone("vit_tiny_patch16_224", **kwargs, num_classes=num_classes)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "teacher_backbone.safetensors"))
    save_file(state, str(folder / "student_backbone.safetensors"))
    (folder / "backbone.json").write_text(
        json.dumps(
            {
                "timm_name": "vit_tiny_patch16_224",
                "kwargs": kwargs,
                "img_size": 32,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.25, 0.25, 0.25],
                "epoch": 0,
            }
        )
    )
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-vit") / "ckpt")
