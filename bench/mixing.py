"""Mixed batches from class-sorted shards: mean distinct labels per batch of 64 (``batch_classes``) in the training
stream, against the plain file-shuffled read it replaces, measured in the same run.

It writes a class-sorted ImageFolder tree (10 classes x ``--per-class`` images), shards it with
``platform data shard --no-shuffle`` semantics (so every 1,000-row shard holds one class), then streams epochs of
:func:`mimlab.data.pipeline.multicrop_dataset` and reads the labels of each batch of 64.

    .venv/bin/python bench/mixing.py --per-class 1000 --epochs 3
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def class_sorted_tree(root: Path, classes: int, per_class: int, size: int = 12) -> None:
    """``root/c<k>/img_<i>.jpg``: random-noise JPEGs, ``per_class`` per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(per_class):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
            (root / f"c{k}" / f"img_{i:05d}.jpg").write_bytes(buffer.getvalue())


def stream_labels(ds, batch: int = 64) -> list[np.ndarray]:
    return [b["label"] for b in ds.iter_batches(batch_size=batch, batch_format="numpy", drop_last=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20, help="batches of 64 per sampled epoch")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    from mimlab.data.imagefolder import shard_imagefolder
    from mimlab.data.pipeline import SHUFFLE_BUFFER, multicrop_dataset, read_shards
    from mimlab.data.sample import batch_classes
    from mimlab.data.transforms import MultiCropConfig
    from mimlab.runtime.ray_env import ensure_ray

    cfg = MultiCropConfig(global_crops=2, global_size=16, local_crops=2, local_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        class_sorted_tree(tmp / "src", args.classes, args.per_class)
        shard_imagefolder(tmp / "src", tmp / "shards", shard_size=args.shard_size, seed=None)
        total = args.classes * args.per_class
        print(f"{total} images, {args.classes} classes, class-sorted shards of {args.shard_size} rows "
              f"({time.perf_counter() - t0:.1f} s to write)")
        ensure_ray()
        rows = args.steps * 64
        cases = {
            "reference: read_parquet(shuffle='files'), no buffer": lambda e: read_shards(
                tmp / "shards", columns=["label"], shuffle_files=True),
            "stream, shuffle_buffer=0": lambda e: multicrop_dataset(
                tmp / "shards", cfg, limit=rows, epoch=e, shuffle_buffer=0),
            f"stream, shuffle_buffer={SHUFFLE_BUFFER}, {rows}-row epochs": lambda e: multicrop_dataset(
                tmp / "shards", cfg, limit=rows, epoch=e),
            f"stream, shuffle_buffer={SHUFFLE_BUFFER}, whole-split epochs": lambda e: multicrop_dataset(
                tmp / "shards", cfg, epoch=e),
        }
        results: dict[str, list[float]] = {name: [] for name in cases}
        for epoch in range(args.epochs):  # interleaved: every case once per round
            for name, build in cases.items():
                results[name].append(batch_classes(stream_labels(build(epoch))))
        for name, values in results.items():
            print(f"{name}: batch_classes median {statistics.median(values):.2f} "
                  f"(min {min(values):.2f}, max {max(values):.2f}, {len(values)} epochs)")
        ref = statistics.median(results[next(iter(cases))])
        best = statistics.median(results[list(cases)[2]])
        print(f"mixing: {best:.2f} vs {ref:.2f} distinct labels per batch of 64 = {best / ref:.1f}x "
              f"(uniform draws from {args.classes} classes: {args.classes * (1 - (1 - 1 / args.classes) ** 64):.2f})")


if __name__ == "__main__":
    main()
