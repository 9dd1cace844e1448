"""Multi-crop throughput: the Ray Data pipeline vs a torch DataLoader doing the same decode + crops.

Both read the same shards and crop with the same :class:`mimlab.data.transforms.MultiCrop`, with the same number of
CPU workers (Ray: ``num_cpus=W`` and the read + crop tasks fused; DataLoader: ``num_workers=W``), and the same
batched work per call: decode every image of a batch (:func:`mimlab.data.transforms.decode_for_crops`) and crop
the batch at once (the DataLoader indexed by a ``BatchSampler``, the images already in memory). Each epoch is timed
from the first request to the last batch (worker/task start-up included, ``ray.init`` excluded); epochs alternate
between the two; we print the median images/s of the epochs and the ratio.

    .venv/bin/python bench/data_pipeline.py --workers 2 --epochs 3                  # embedded dataset (train split)
    .venv/bin/python bench/data_pipeline.py --data s3://bucket/cifar10/train --workers 2 --epochs 3

``--data`` takes any shard folder URL (``platform data shard`` writes one, e.g. from a CIFAR-10 ImageFolder).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def _files(url: str, limit_files: int | None) -> list[str]:
    from mimlab.data.pipeline import shard_files

    _, files = shard_files(url)
    return files[:limit_files] if limit_files else files


class ShardImages:
    """torch Dataset over the shard rows, indexed by a list of rows (a ``BatchSampler`` as sampler): decode each
    image and crop the whole batch in one :meth:`MultiCrop.batch` call, the same work as the Ray stage's."""

    def __init__(self, files: list[str], cfg) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from mimlab.data.transforms import MultiCrop

        table = pa.concat_tables([pq.read_table(f, columns=["image", "label"]) for f in files])
        self.images = table.column("image").to_pylist()
        self.labels = table.column("label").to_numpy()
        self.cfg = cfg
        self.crop = MultiCrop(cfg)
        self.rng = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: list[int]) -> dict:
        from mimlab.data.transforms import decode_for_crops

        if self.rng is None:
            self.rng = np.random.default_rng()
        out = self.crop.batch([decode_for_crops(self.images[i], self.cfg) for i in rows], self.rng)
        out["label"] = self.labels[rows]
        return out


def bench_dataloader(files, cfg, workers: int, batch: int):
    """Yield the images/s of one DataLoader epoch per ``next()``."""
    import torch

    torch.set_num_threads(1)
    ds = ShardImages(files, cfg)
    while True:
        sampler = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(ds), batch, drop_last=False)
        loader = torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=None, num_workers=workers)
        start, seen = time.perf_counter(), 0
        for b in loader:
            seen += len(b["label"])
        yield seen / (time.perf_counter() - start), seen


def bench_ray(files, cfg, workers: int, batch: int):
    """Yield ``(images/s, images)`` of one Ray Data epoch per ``next()``."""
    from mimlab.data.pipeline import multicrop_dataset
    from mimlab.runtime.ray_env import ensure_ray

    ensure_ray(num_cpus=workers)
    ds = multicrop_dataset(files[0] if len(files) == 1 else os.path.dirname(files[0]), cfg, batch_size=batch)
    while True:
        start, seen = time.perf_counter(), 0
        for b in ds.iter_batches(batch_size=batch, batch_format="numpy", prefetch_batches=2):
            seen += len(b["label"])
        yield seen / (time.perf_counter() - start), seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None,
                        help="shard folder URL (default: the embedded dataset's train split)")
    parser.add_argument("--files", type=int, default=1, help="how many shard files to read (0 = all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--global-size", type=int, default=32)
    parser.add_argument("--local-size", type=int, default=16)
    parser.add_argument("--local-crops", type=int, default=4)
    parser.add_argument("--colour-device", choices=["cpu", "gpu"], default="cpu",
                        help="crops.device: gpu leaves the colour step to the training device (not timed here)")
    args = parser.parse_args()

    from mimlab.data.transforms import MultiCropConfig
    from mimlab.runtime.ray_env import apply_default_env

    apply_default_env()
    if args.data is None:
        from mimlab.data.synth import default_dataset

        args.data = os.path.join(default_dataset(), "train")
    cfg = MultiCropConfig(global_crops=2, global_size=args.global_size, local_crops=args.local_crops,
                          local_size=args.local_size, device=args.colour_device)
    files = _files(args.data, args.files or None)
    if args.files and len(files) > 1:
        raise SystemExit("--files > 1 needs them in their own folder; use 1 or 0 (all)")
    print(f"data: {args.data} ({len(files)} shard file(s)); crops: 2×{cfg.global_size}px + "
          f"{cfg.local_crops}×{cfg.local_size}px; workers: {args.workers}; batch {args.batch}; "
          f"epochs {args.epochs}", flush=True)
    from mimlab.runtime.ray_env import ensure_ray

    ensure_ray(num_cpus=args.workers)  # before any timing (and before the DataLoader forks its workers)
    # epochs alternate (DataLoader, Ray, DataLoader, ...) so that a drifting machine load hits both alike
    loaders = {"dl": bench_dataloader(files, cfg, args.workers, args.batch),
               "ray": bench_ray(files, cfg, args.workers, args.batch)}
    rates: dict[str, list[float]] = {"dl": [], "ray": []}
    n = 0
    for _ in range(args.epochs):
        for key, gen in loaders.items():
            rate, n = next(gen)
            rates[key].append(rate)
    dl, ray_rates = rates["dl"], rates["ray"]
    print(f"torch DataLoader : epochs {', '.join(f'{r:.0f}' for r in dl)} img/s; "
          f"median {statistics.median(dl):.0f} img/s", flush=True)
    print(f"Ray Data pipeline: epochs {', '.join(f'{r:.0f}' for r in ray_rates)} img/s; "
          f"median {statistics.median(ray_rates):.0f} img/s ({n} images/epoch)", flush=True)
    print(f"ratio Ray Data / DataLoader (medians): {statistics.median(ray_rates) / statistics.median(dl):.2f}×"
          "  (target ≥ 1.0×)")


if __name__ == "__main__":
    from mimlab.errors import UserError

    try:
        main()
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
