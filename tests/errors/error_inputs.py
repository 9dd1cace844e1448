"""Inputs of the bad-input tests: real PNG/JPEG bytes and ways of breaking them, shard tables, a tiny recipe.

Imported by name (``from error_inputs import …``): ``from conftest import`` picks whichever conftest loaded first."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from pathlib import Path

from PIL import Image


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


def write_table(path: Path, columns: dict) -> Path:
    """Write a Parquet file with exactly these columns (pyarrow arrays or lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path
