"""Multi-crop throughput: the Ray Data pipeline vs two torch DataLoaders on the same shards and cores.

* **plain DataLoader** (the baseline of the closing ratio): what a torch user of this field runs, and what this
  bench measured when issue 19 was filed: a map-style Dataset whose ``__getitem__`` decodes ONE image (full
  size, PIL) and draws its crops with per-image ``torchvision.transforms.v2`` ops on PIL images (the iBOT recipe
  of methods-spec §4.2: RandomResizedCrop bicubic, flip, ColorJitter p .8, grayscale p .2, PIL Gaussian blur,
  solarize), collated by the default ``collate_fn`` into batches.
* **batched DataLoader** (the reference for Ray Data's own overhead): the DataLoader given exactly the crop
  stage's batched call (:func:`mimlab.data.transforms.decode_for_crops` with JPEG draft decoding and one
  :meth:`MultiCrop.batch` per batch of rows, indexed by a ``BatchSampler``, the images already in memory).
* **Ray Data**: :func:`mimlab.data.pipeline.multicrop_dataset` (read windows, then the batched crop stage).

All use the same number of CPU workers (Ray: ``num_cpus=W``; DataLoaders: ``num_workers=W``). Each epoch is timed
from the first request to the last batch (worker/task start-up included, ``ray.init`` excluded), after ``--warmup``
untimed epochs of each (Ray Data's first epoch also starts the runtime's worker processes, once per run); epochs
alternate between the three; we print the median images/s of the timed epochs and the ratios.

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
        from mimlab.data.transforms import MultiCrop

        self.images, self.labels = _rows(files)
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


class _PILBlur:
    """PIL Gaussian blur with a radius drawn from ``radius`` with probability ``p`` (the iBOT recipe's blur)."""

    def __init__(self, p: float, radius: tuple[float, float]) -> None:
        self.p, self.radius = p, radius

    def __call__(self, img):
        import random

        from PIL import ImageFilter

        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.radius)))


class PlainImages:
    """torch Dataset over the shard rows, one image per ``__getitem__``: full PIL decode, then each crop's own
    per-image ``torchvision.transforms.v2`` pipeline (methods-spec §4.2 parameters), uint8 ``[3,S,S]`` tensors."""

    def __init__(self, files: list[str], cfg) -> None:
        from torchvision.transforms import InterpolationMode, v2

        self.images, self.labels = _rows(files)

        def crop(size: int, scale, blur_p: float, solarize_p: float):
            return v2.Compose([
                v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC),
                v2.RandomHorizontalFlip(),
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                v2.RandomGrayscale(p=0.2),
                _PILBlur(blur_p, cfg.blur_radius),
                v2.RandomSolarize(128, p=solarize_p),
                v2.PILToTensor()])

        self.crops = {f"global_{i}": crop(cfg.global_size, cfg.global_scale, 1.0 if i == 0 else 0.1,
                                          0.0 if i == 0 else 0.2) for i in range(cfg.global_crops)}
        self.crops.update({f"local_{i}": crop(cfg.local_size, cfg.local_scale, 0.5, 0.0)
                           for i in range(cfg.local_crops)})

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        import io

        from PIL import Image

        img = Image.open(io.BytesIO(self.images[i])).convert("RGB")
        out = {name: t(img) for name, t in self.crops.items()}
        out["label"] = int(self.labels[i])
        return out


def _rows(files: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(f, columns=["image", "label"]) for f in files])
    return table.column("image").to_pylist(), table.column("label").to_numpy()


def bench_dataloader(files, cfg, workers: int, batch: int, plain: bool = False):
    """Yield the images/s of one DataLoader epoch per ``next()``: ``plain`` (one image per ``__getitem__``,
    default collate) or given the crop stage's batched call."""
    import torch

    torch.set_num_threads(1)
    ds = PlainImages(files, cfg) if plain else ShardImages(files, cfg)
    while True:
        if plain:
            loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)
        else:
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
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed epochs of each before the timed ones (Ray starts its worker processes once "
                             "per runtime, a DataLoader forks its workers every epoch: both are in every timed epoch)")
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
          f"epochs {args.epochs} (+{args.warmup} untimed)", flush=True)
    from mimlab.runtime.ray_env import ensure_ray

    ensure_ray(num_cpus=args.workers)  # before any timing (and before the DataLoader forks its workers)
    # epochs alternate (plain, batched, Ray, plain, ...) so that a drifting machine load hits all alike
    loaders = {"plain": bench_dataloader(files, cfg, args.workers, args.batch, plain=True),
               "batched": bench_dataloader(files, cfg, args.workers, args.batch),
               "ray": bench_ray(files, cfg, args.workers, args.batch)}
    rates: dict[str, list[float]] = {key: [] for key in loaders}
    n = 0
    for e in range(args.warmup + args.epochs):
        for key, gen in loaders.items():
            rate, n = next(gen)
            if e >= args.warmup:
                rates[key].append(rate)
    med = {key: statistics.median(v) for key, v in rates.items()}
    for key, label in (("plain", "plain DataLoader  "), ("batched", "batched DataLoader"), ("ray", "Ray Data pipeline ")):
        print(f"{label}: epochs {', '.join(f'{r:.0f}' for r in rates[key])} img/s; median {med[key]:.0f} img/s"
              + (f" ({n} images/epoch)" if key == "ray" else ""), flush=True)
    print(f"ratio Ray Data / batched DataLoader (medians): {med['ray'] / med['batched']:.2f}×  (Ray Data's own "
          "overhead: the same crop call in both)")
    print(f"ratio Ray Data / DataLoader (medians): {med['ray'] / med['plain']:.2f}×  (target ≥ 1.0×; the plain "
          "per-image DataLoader)")

if __name__ == "__main__":
    from mimlab.errors import UserError

    try:
        main()
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
