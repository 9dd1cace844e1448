"""In-process multi-crop batches for :func:`mimlab.pretrain.loop.pretrain_local` (no Ray Data, same crops)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from mimlab.errors import UserError


def has_splits(url: str | os.PathLike | None) -> bool:
    """True when ``url`` is a root holding ``train/`` and ``val/`` (the embedded dataset is one)."""
    if url is None:
        return True
    from mimlab.data.fs import resolve

    fs, path = resolve(os.fspath(url))
    return fs.isdir(path) and fs.isdir(path.rstrip("/") + "/train") and fs.isdir(path.rstrip("/") + "/val")


def load_images(url: str | os.PathLike | None, split: str, limit: int | None) -> tuple[list[np.ndarray], np.ndarray]:
    """Decoded uint8 ``[H,W,3]`` images and int64 labels (-1 = none) of one split (or the whole source)."""
    from mimlab.data.sources import decode_rgb, load_records

    records = load_records(url, split=split if has_splits(url) else None, limit=limit)
    images = [decode_rgb(r.image) for r in records]
    labels = np.array([-1 if r.label is None else int(r.label) for r in records], dtype=np.int64)
    return images, labels


def multicrop_config(cfg) -> Any:
    from mimlab.data.transforms import MultiCropConfig

    return MultiCropConfig(**cfg.crops.model_dump())


class LocalMultiCrop:
    """Shuffled multi-crop batches of decoded images: ``{global_i, local_i: uint8 [B,S,S,3], label: [B]}``.

    Args:
        images: decoded images; labels: ``[N]``.
        cfg: the pretraining config (``crops``, ``optim.batch_size_per_worker``, ``train.seed``).
    """

    def __init__(self, images: list[np.ndarray], labels: np.ndarray, cfg) -> None:
        from mimlab.data.transforms import MultiCrop

        self.images, self.labels = images, labels
        self.batch = cfg.optim.batch_size_per_worker
        if len(images) < self.batch:
            raise UserError(f"the training data has {len(images)} images, fewer than optim.batch_size_per_worker="
                            f"{self.batch}")
        self.crop = MultiCrop(multicrop_config(cfg))
        self.seed = cfg.train.seed

    def __len__(self) -> int:
        return len(self.images) // self.batch

    def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.images))
        for start in range(0, len(order) - self.batch + 1, self.batch):
            idx = order[start:start + self.batch]
            batch = self.crop.batch([self.images[i] for i in idx], rng)  # {name: [B,S,S,3]}, colour ops batched
            batch["label"] = self.labels[idx]
            yield batch
