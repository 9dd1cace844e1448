"""Whole-split image loading, kept only for :mod:`mimlab.pretrain.monitor` until its bank is streamed.

Training never uses it: every run streams its batches from Ray Data (:mod:`mimlab.runtime.train`).
"""

from __future__ import annotations

import os

import numpy as np


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
