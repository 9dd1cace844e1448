"""ImageFolder (or flat ImageNet-val folder) → shards at any fsspec URL; resumable, every shard atomic.

The plan (item order, shard size, options) is fixed by the sorted file listing and the shuffle seed, and stored
in ``_plan.json``; a re-run with the same plan skips shards that already exist (they only appear once complete) and
writes byte-identical shards, and a re-run with a different plan is refused instead of mixing two layouts.

Rows are written in a seeded random order across all shards (``seed``), so a class-sorted tree gives shards whose
consecutive rows mix classes; ``seed=None`` keeps the sorted class-then-file order.
"""

from __future__ import annotations

import io
import logging
import os
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from mimlab.data.decode import CorruptImage, check_encoded
from mimlab.data.fs import join, read_json, resolve, write_json
from mimlab.data.schema import CLASSES_FILE, records_table
from mimlab.data.shards import shard_name, write_shard
from mimlab.data.sources import IMAGE_EXTENSIONS as _EXTENSIONS
from mimlab.data.sources import flat_val_items, imagefolder_items, is_image_file, source_kind
from mimlab.errors import UserError

PLAN_FILE = "_plan.json"
DEFAULT_SEED = 0
log = logging.getLogger("mimlab.data")


def shard_imagefolder(src: str | os.PathLike, out: str | os.PathLike, *, shard_size: int = 1000,
                      per_class_limit: int | None = None, resize: int | None = None,
                      seed: int | None = DEFAULT_SEED, progress: Callable[[int, int], None] | None = None,
                      unlabeled: bool = False) -> dict:
    """Write an ImageFolder tree as shards (or, with ``unlabeled``, every image of any tree, label null).

    Args:
        src: ImageFolder root (one folder per class) or flat ImageNet-val folder, any fsspec URL.
        out: output folder URL.
        shard_size: images per shard.
        per_class_limit: keep the first K images per class in sorted order (ImageFolder only).
        resize: resize the shorter side to this many pixels (bicubic, re-encoded as JPEG q95, PNG stays PNG).
        seed: rows go to the shards in the order of a permutation drawn from this seed (the same seed and listing
            ⇒ the same shards, byte for byte); ``None`` ⇒ sorted class-then-file order.
        progress: called as ``progress(done_images, total_images)`` after each shard (written or skipped).
        unlabeled: take every image file under ``src`` (a flat folder or any tree, sorted by path) with a null
            ``label`` (pretraining data; k-NN and linear probing refuse it).

    Returns:
        ``{"images", "shards", "written", "skipped", "classes", "out"}``.

    Raises:
        UserError: missing source, non-image or undecodable file, empty dataset, bad option, plan mismatch.
    """
    if shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {shard_size}")
    if per_class_limit is not None and per_class_limit < 1:
        raise UserError(f"--per-class-limit must be >= 1, got {per_class_limit}")
    if resize is not None and resize < 1:
        raise UserError(f"--resize must be >= 1, got {resize}")
    if seed is not None and seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    src_text, out_text = os.fspath(src), os.fspath(out)
    src_fs, src_path = resolve(src_text)
    if not src_fs.exists(src_path) or not src_fs.isdir(src_path):
        raise UserError(f"no such folder: '{src_text}' (expected an ImageFolder tree)")
    if unlabeled:
        if per_class_limit is not None:
            raise UserError("--per-class-limit needs class folders; it cannot be used with --unlabeled")
        items, classes = unlabeled_items(src_fs, src_path, src_text), []
    elif (kind := source_kind(src_fs, src_path, src_text)) == "shards":
        raise UserError(f"'{src_text}' already holds shards; expected an ImageFolder tree")
    elif kind == "imagefolder":
        items, classes = imagefolder_items(src_fs, src_path, src_text, per_class_limit)
    else:
        if per_class_limit is not None:
            raise UserError(f"--per-class-limit needs an ImageFolder tree; '{src_text}' is a flat ImageNet-val folder")
        items = flat_val_items(src_fs, src_path, src_text)
        classes = sorted({os.path.basename(p).split("_", 1)[0] for p, _ in items})
    out_fs, out_path = resolve(out_text)
    if out_fs.exists(out_path) and not out_fs.isdir(out_path):
        raise UserError(f"output '{out_text}' is an existing file; expected a folder")
    out_fs.makedirs(out_path, exist_ok=True)
    relpaths = [os.path.relpath(p, src_path) for p, _ in items]
    plan = {"images": len(items), "shard_size": shard_size, "per_class_limit": per_class_limit, "resize": resize,
            "classes": len(classes), "first": relpaths[0], "last": relpaths[-1], "seed": seed,
            "listing_crc32": zlib.crc32("\n".join(relpaths).encode()), **({"unlabeled": True} if unlabeled else {})}
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(items))
        items = [items[i] for i in order]
    old = read_json(out_fs, join(out_fs, out_path, PLAN_FILE))
    if old is None and out_fs.glob(join(out_fs, out_path, "part-*.parquet")):
        raise UserError(f"'{out_text}' holds part-*.parquet files but no {PLAN_FILE}: they were not written by "
                        "`platform data shard`; use an empty output folder")
    if old is not None:
        old.setdefault("seed", None)  # plans written before shuffling existed were sorted
        old.setdefault("listing_crc32", plan["listing_crc32"])
    if old is not None and old != plan:
        raise UserError(f"'{out_text}' holds shards from a different run ({PLAN_FILE} differs); "
                        "use an empty output folder or the same options")
    write_json(out_fs, join(out_fs, out_path, PLAN_FILE), plan)
    write_json(out_fs, join(out_fs, out_path, CLASSES_FILE), classes)
    starts = list(range(0, len(items), shard_size))
    written = skipped = 0
    bad: list[str] = []
    for index, start in enumerate(starts):
        target = join(out_fs, out_path, shard_name(index))
        chunk = items[start:start + shard_size]
        if out_fs.exists(target):
            skipped += 1
        else:
            with ThreadPoolExecutor(max_workers=8) as pool:  # file reads and PIL decoding release the GIL
                images = list(pool.map(lambda item: _encoded(src_fs, item[0], resize), chunk))
            good = [(img, item) for img, item in zip(images, chunk) if img is not None]
            bad.extend(item[0] for img, item in zip(images, chunk) if img is None)
            paths = [os.path.relpath(p, src_path) for _, (p, _) in good]
            write_shard(out_fs, target, records_table([img for img, _ in good], [label for _, (_, label) in good],
                                                      paths))
            written += 1
        if progress is not None:
            progress(min(start + shard_size, len(items)), len(items))
    return {"images": len(items) - len(bad), "shards": len(starts), "written": written, "skipped": skipped,
            "classes": classes, "out": out_text, "bad_images": bad}


def unlabeled_items(fs, path: str, url: str) -> list[tuple[str, None]]:
    """``(file, None)`` for every image file anywhere under ``path``, in sorted path order (dot-files skipped).

    Raises:
        UserError: the tree holds shards, a non-image file, or no images.
    """
    files = sorted(p for p in fs.find(path) if not any(part.startswith(".") for part in
                                                      os.path.relpath(p, path).split(os.sep)))
    for f in files:
        if f.endswith(".parquet"):
            raise UserError(f"'{url}' already holds shards ('{f}'); expected a folder of images")
        if not is_image_file(f):
            raise UserError(f"'{f}' in '{url}' is not an image file (expected one of {', '.join(_EXTENSIONS)})")
    if not files:
        raise UserError(f"'{url}' holds no images (empty dataset)")
    return [(f, None) for f in files]


def _encoded(fs, path: str, resize: int | None) -> bytes | None:
    """The file's bytes after checking they decode (optionally resized and re-encoded); ``None`` when PIL refuses
    them (truncated, corrupt, a decompression bomb): the image is skipped and counted."""
    with fs.open(path, "rb") as handle:
        data = handle.read()
    try:
        check_encoded(data)
    except CorruptImage as err:
        log.warning("skipping '%s': %s", path, err)
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if resize is None:
                return data
            fmt = "PNG" if img.format == "PNG" else "JPEG"
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        log.warning("skipping '%s': not a readable image (%s)", path, err)
        return None
    width, height = rgb.size
    scale = resize / min(width, height)
    rgb = rgb.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    rgb.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()
