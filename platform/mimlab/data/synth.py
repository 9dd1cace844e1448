"""The embedded dataset: textured shapes on a plain background, with exact masks (version 2).

Class ``k`` is shape ``SHAPE_ORDER[k]`` filled with texture ``TEXTURE_ORDER[k]`` (two-tone, drawn in the same two
colours for every class) on a plain, noisy background of one fixed colour. Position, size, rotation, texture
period and phase vary per image; colour never does. So two crops of an image share its class (form and texture)
and little else — the setting in which self-supervised pretraining can beat random features within a few CPU
minutes. Version 1 (one random flat colour per object on random coloured clutter) was not learnable at CPU scale
even with labels, and self-distillation learned its per-image colours instead of classes
(``docs/pretraining-notes.md``).

Each image ``i`` is rendered from its own generator ``numpy.random.default_rng([seed, i])``, so the dataset is
a pure function of its parameters (same seed ⇒ byte-identical shards). Class ``i % classes`` ⇒ balanced classes.
Images and masks are PNG (lossless), so the mask is exactly the set of pixels painted in the two object colours.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from mimlab.data.fs import join, resolve, write_json
from mimlab.data.schema import CLASSES_FILE, records_table
from mimlab.data.shapes import SHAPE_ORDER, SHAPES
from mimlab.data.shards import shard_name, write_shard
from mimlab.data.sources import encode_png
from mimlab.data.textures import TEXTURE_ORDER, TEXTURES
from mimlab.errors import UserError

SYNTH_VERSION = 2
DEFAULTS = {"num_images": 5000, "size": 32, "classes": 10, "seed": 0, "split_val": 0.2}
_SUPERSAMPLE = 4
LIGHT = np.array([235, 225, 200], dtype=np.uint8)  # the object's two colours (the same for every class)
DARK = np.array([40, 50, 90], dtype=np.uint8)
BACKGROUND = np.array([112, 112, 124], dtype=np.float32)  # plus N(0, 6) pixel noise: never equals LIGHT/DARK
PERIOD_PX = (3.0, 6.0)  # texture period range at 32 px; scales with the image size


def render(rng: np.random.Generator, shape: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one image of the class whose shape is ``shape`` (and whose texture has the same index).

    Returns:
        ``(image uint8 [size,size,3], mask bool [size,size])``; ``image[mask]`` holds only ``LIGHT`` and ``DARK``.
    """
    image = np.clip(BACKGROUND + rng.normal(0, 6, size=(size, size, 3)), 0, 255).astype(np.uint8)
    r = size * rng.uniform(0.28, 0.45)
    cx, cy = rng.uniform(r * 0.8, size - r * 0.8, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    SHAPES.get(shape)(ImageDraw.Draw(canvas), cx * _SUPERSAMPLE, cy * _SUPERSAMPLE, r * _SUPERSAMPLE, angle)
    mask = np.asarray(canvas.resize((size, size), Image.Resampling.BOX)) >= 128  # [4S,4S] -> [S,S]
    if not mask.any():  # degenerate draw (never seen, but keep the mask non-empty)
        mask[int(cy) % size, int(cx) % size] = True
    dark = texture(rng, TEXTURE_ORDER[SHAPE_ORDER.index(shape)], size, (cx, cy))
    image[mask] = np.where(dark[..., None], DARK, LIGHT)[mask]
    return image, mask


def texture(rng: np.random.Generator, name: str, size: int, centre: tuple[float, float]) -> np.ndarray:
    """The ``bool [size,size]`` dark-pixel pattern of texture ``name``, random period and phase."""
    period = rng.uniform(*PERIOD_PX) * size / 32
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)  # [S,S] pixel coordinates
    x, y = xx + rng.uniform(0, period), yy + rng.uniform(0, period)
    r = np.hypot(xx - centre[0], yy - centre[1])
    return TEXTURES.get(name)(x, y, r, period, rng)


def check_params(*, num_images: int, size: int, classes: int, seed: int, split_val: float) -> None:
    """Validate generation parameters.

    Raises:
        UserError: naming the option and the valid range.
    """
    if not 2 <= classes <= len(SHAPE_ORDER):
        raise UserError(f"--classes must be between 2 and {len(SHAPE_ORDER)}, got {classes}")
    if size < 8:
        raise UserError(f"--size must be >= 8 pixels, got {size}")
    if not 0.0 <= split_val < 1.0:
        raise UserError(f"--split-val must be in [0, 1), got {split_val}")
    if num_images < 1:
        raise UserError(f"--num-images must be >= 1, got {num_images}")
    n_val = int(round(num_images * split_val))
    if num_images - n_val < 1:
        raise UserError(f"--num-images {num_images} with --split-val {split_val} leaves no training image")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")


def write_synthetic(out: str | os.PathLike, *, num_images: int = DEFAULTS["num_images"], size: int = DEFAULTS["size"],
                    classes: int = DEFAULTS["classes"], seed: int = DEFAULTS["seed"],
                    split_val: float = DEFAULTS["split_val"], shard_size: int = 1000,
                    progress: Callable[[int], None] | None = None) -> dict:
    """Generate the synthetic dataset into ``out/train`` and ``out/val`` shard folders (any fsspec URL).

    Every shard is written atomically; ``classes.json`` (class names) sits in each split folder and
    ``dataset.json`` (the parameters) at the root.

    Returns:
        ``{"train": n_train, "val": n_val, "classes": [...], "root": url}``.
    """
    check_params(num_images=num_images, size=size, classes=classes, seed=seed, split_val=split_val)
    if shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {shard_size}")
    fs, root = resolve(out)
    if fs.exists(root) and not fs.isdir(root):
        raise UserError(f"output '{os.fspath(out)}' is an existing file; expected a folder")
    if not fs.exists(join(fs, root, "dataset.json")):
        foreign = fs.glob(join(fs, root, "*", "part-*.parquet")) + fs.glob(join(fs, root, "part-*.parquet"))
        if foreign:
            raise UserError(f"'{os.fspath(out)}' holds shards `platform data synth` did not write (no dataset.json), "
                            f"e.g. '{foreign[0]}'; use an empty output folder")
    names = list(SHAPE_ORDER[:classes])
    n_val = int(round(num_images * split_val))
    splits = {"train": range(0, num_images - n_val), "val": range(num_images - n_val, num_images)}
    for split, indices in splits.items():
        folder = join(fs, root, split)
        fs.makedirs(folder, exist_ok=True)
        for stale in fs.glob(join(fs, folder, "part-*.parquet")):
            fs.rm(stale)
        for shard, start in enumerate(range(0, len(indices), shard_size)):
            chunk = indices[start:start + shard_size]
            images, labels, paths, masks = [], [], [], []
            for i in chunk:
                label = i % classes
                image, mask = render(np.random.default_rng([seed, i]), names[label], size)
                images.append(encode_png(image))
                masks.append(encode_png(mask))
                labels.append(label)
                paths.append(f"synth/{split}/{i:06d}_{names[label]}.png")
            write_shard(fs, join(fs, folder, shard_name(shard)), records_table(images, labels, paths, masks))
            if progress is not None:
                progress(len(chunk))
        write_json(fs, join(fs, folder, CLASSES_FILE), names)
    params = {"num_images": num_images, "size": size, "classes": classes, "seed": seed, "split_val": split_val,
              "version": SYNTH_VERSION}
    write_json(fs, join(fs, root, "dataset.json"), params)
    return {"train": len(splits["train"]), "val": len(splits["val"]), "classes": names, "root": os.fspath(out)}


def params_hash(**params: float) -> str:
    """Short hash of the generation parameters (names the cache folder)."""
    merged = {**DEFAULTS, **params, "version": SYNTH_VERSION}
    return hashlib.sha256(json.dumps(merged, sort_keys=True).encode()).hexdigest()[:12]


def default_dataset(**params: float) -> str:
    """Root of the embedded dataset (``train/`` and ``val/`` shard folders), generated once into the cache.

    Generation goes to a temporary folder renamed into place when complete, so a killed run never leaves a
    half dataset that looks complete, and concurrent callers (Ray workers) agree on one copy.

    Args:
        params: overrides of :data:`DEFAULTS` (``num_images``, ``size``, ``classes``, ``seed``, ``split_val``).
    """
    from mimlab.paths import cache_dir

    unknown_keys = set(params) - set(DEFAULTS)
    if unknown_keys:
        raise UserError(f"unknown synthetic-dataset parameter(s): {', '.join(sorted(unknown_keys))}; "
                        f"valid: {', '.join(DEFAULTS)}")
    base = cache_dir()
    root = base / f"synth-{params_hash(**params)}"
    if root.is_dir():
        return str(root)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write_synthetic(tmp, **{**DEFAULTS, **params})
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.is_dir():  # lost a race only if someone else finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(root)
