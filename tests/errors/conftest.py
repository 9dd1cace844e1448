"""Inputs shared by the bad-input tests: a tiny checkpoint, tiny shards, good/bad image files, a tiny recipe."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)



from error_inputs import TINY_RECIPE, png_bytes, write_table  # noqa: F401 (used by the fixtures)




@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A pretrain-format checkpoint folder of a 2-block dim-32 ViT on 32 px (backbone.json + safetensors)."""
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


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """A synthetic dataset root with train/ (24 images) and val/ (8) shard folders, 32 px, 2 classes."""
    from mimlab.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("shards") / "ds"
    write_synthetic(root, num_images=32, size=32, classes=2, seed=0, split_val=0.25)
    return root


@pytest.fixture(scope="session")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "cat.png"
    path.write_bytes(png_bytes(0))
    return path


@pytest.fixture()
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


