"""ImageFolder (or flat ImageNet-val folder) → shards at any fsspec URL; resumable, every shard atomic.

The plan (item order, shard size, options) is fixed by the sorted file listing and stored in ``_plan.json``;
a re-run with the same plan skips shards that already exist (they only appear once complete), and a re-run with a
different plan is refused instead of mixing two layouts.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError

from mimlab.data.decode import CorruptImage, check_encoded
from mimlab.data.fs import join, read_json, resolve, write_json
from mimlab.data.schema import CLASSES_FILE, records_table
from mimlab.data.shards import shard_name, write_shard
from mimlab.data.sources import flat_val_items, imagefolder_items, source_kind
from mimlab.errors import UserError

PLAN_FILE = "_plan.json"
log = logging.getLogger("mimlab.data")


def shard_imagefolder(src: str | os.PathLike, out: str | os.PathLike, *, shard_size: int = 1000,
                      per_class_limit: int | None = None, resize: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> dict:
    """Write an ImageFolder tree as shards.

    Args:
        src: ImageFolder root (one folder per class) or flat ImageNet-val folder, any fsspec URL.
        out: output folder URL.
        shard_size: images per shard.
        per_class_limit: keep the first K images per class in sorted order (ImageFolder only).
        resize: resize the shorter side to this many pixels (bicubic, re-encoded as JPEG q95, PNG stays PNG).
        progress: called as ``progress(done_images, total_images)`` after each shard (written or skipped).

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
    src_text, out_text = os.fspath(src), os.fspath(out)
    src_fs, src_path = resolve(src_text)
    if not src_fs.exists(src_path) or not src_fs.isdir(src_path):
        raise UserError(f"no such folder: '{src_text}' (expected an ImageFolder tree)")
    kind = source_kind(src_fs, src_path, src_text)
    if kind == "shards":
        raise UserError(f"'{src_text}' already holds shards; expected an ImageFolder tree")
    if kind == "imagefolder":
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
    plan = {"images": len(items), "shard_size": shard_size, "per_class_limit": per_class_limit, "resize": resize,
            "classes": len(classes), "first": os.path.relpath(items[0][0], src_path),
            "last": os.path.relpath(items[-1][0], src_path)}
    old = read_json(out_fs, join(out_fs, out_path, PLAN_FILE))
    if old is None and out_fs.glob(join(out_fs, out_path, "part-*.parquet")):
        raise UserError(f"'{out_text}' holds part-*.parquet files but no {PLAN_FILE}: they were not written by "
                        "`platform data shard`; use an empty output folder")
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
