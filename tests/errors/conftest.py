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

TINY_RECIPE = """\
model:
  timm_name: vit_tiny_patch16_224
  kwargs: {img_size: 16, patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2}
  drop_path: 0.0
head: {out_dim: 64, hidden_dim: 48, bottleneck_dim: 16}
crops: {global_crops: 2, global_size: 16, local_crops: 1, local_size: 8}
masking: {strategy: block}
loss: {warmup_teacher_temp_epochs: 0}
optim: {epochs: 1, batch_size_per_worker: 4, warmup_epochs: 0, lr: 0.005, precision: fp32}
train: {steps_per_epoch: 1, log_every: 1}
eval: {knn_every: 0, probe_images: 0}
"""


def png_bytes(seed: int = 0, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int = 0, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bomb_png(side: int = 200_000) -> bytes:
    """A small PNG whose header declares ``side``×``side`` pixels (far over PIL's decompression-bomb limit)."""
    data = bytearray(png_bytes(0, 8))
    ihdr = struct.pack(">II", side, side) + bytes(data[24:29])  # width, height, depth/colour/compress/filter/interlace
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


BAD_IMAGES = {
    "truncated": lambda: png_bytes(1)[:60],
    "bit-flipped": lambda: bytes(b ^ 0xFF if 40 <= i < 200 else b for i, b in enumerate(jpeg_bytes(2))),
    "bomb": bomb_png,
    "not-an-image": lambda: b"hello, this is text\n",
}


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


def write_table(path: Path, columns: dict) -> Path:
    """Write a Parquet file with exactly these columns (pyarrow arrays or lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path
