"""Small datasets shared by the data-layer tests (generated in temp folders; nothing reads the development datasets outside the repo)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory):
    """A 60-image synthetic dataset (48 train + 12 val, 4 classes, 32 px) written as shards."""
    from mimlab.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, num_images=60, size=32, classes=4, seed=7, split_val=0.2, shard_size=20)
    return root


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def make_imagefolder(root, counts: dict[str, int], size: int = 12, seed: int = 0) -> None:
    """An ImageFolder tree with ``counts[class]`` JPEGs per class, named in shuffled creation order."""
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in rng.permutation(n):
            img = rng.integers(0, 256, size=(size, size + 4, 3), dtype=np.uint8)
            (root / name / f"img_{i:03d}.jpg").write_bytes(png_bytes(img, "JPEG"))


@pytest.fixture(name="make_imagefolder")
def _make_imagefolder_fixture():
    return make_imagefolder


@pytest.fixture(name="png_bytes")
def _png_bytes_fixture():
    return png_bytes


@pytest.fixture(scope="session")
def class_sorted_shards(tmp_path_factory):
    """10 classes x 300 tiny JPEGs sharded in sorted order (``--no-shuffle``): 10 shards of 300 rows, one class each."""
    from mimlab.data.imagefolder import shard_imagefolder

    root = tmp_path_factory.mktemp("sorted")
    make_imagefolder(root / "src", {f"c{k}": 300 for k in range(10)}, size=4)
    shard_imagefolder(root / "src", root / "shards", shard_size=300, seed=None)
    return root / "shards"
