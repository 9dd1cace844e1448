"""Load images as :class:`Record` lists from shards, ImageFolder trees or flat ImageNet-val folders.

Labels:
    * shards: the stored ``label`` column;
    * ImageFolder (``root/<class>/<image>``): index of the class folder in the sorted list of class folders;
    * flat ImageNet-val folder (``n01440764_*.JPEG``): index of the file's wnid in the sorted list of the wnids
      **present in the folder**. The thesis indexes into the sorted list of all 1000 ImageNet wnids; the two agree
      whenever every class is present (the full 50k val set), and we never ship the 1000-id list.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mimlab.data.decode import CorruptImage, decode, decode_rgb  # noqa: F401 - re-exported
from mimlab.data.fs import join, list_shards, locate
from mimlab.data.shards import iter_tables
from mimlab.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
_WNID_FILE = re.compile(r"^(n\d{8})_.*\.jpe?g$", re.IGNORECASE)


@dataclass(frozen=True)
class Record:
    """One image: encoded ``image`` bytes, ``label`` (``None`` when unknown), source ``path``, optional PNG ``mask``."""

    image: bytes
    label: int | None
    path: str
    mask: bytes | None = None


# CorruptImage and decode_rgb live in mimlab.data.decode (safe decoding: bombs, truncation, bit flips)


def decode_mask(data: bytes) -> np.ndarray:
    """Decode a PNG foreground mask to ``bool [H, W]`` (any non-zero pixel is foreground)."""
    return decode(data, "L", "mask") > 0


def encode_png(array: np.ndarray) -> bytes:
    """Encode ``uint8 [H,W,3]`` or ``bool/uint8 [H,W]`` as PNG bytes (deterministic)."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def is_image_file(name: str) -> bool:
    """Whether a file name has an image extension."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def load_records(src: str | os.PathLike | None = None, *, split: str | None = None,
                 limit: int | None = None) -> list[Record]:
    """Load images with labels from any supported source.

    Args:
        src: shard folder/file URL, ImageFolder tree, flat folder of ``nXXXXXXXX_*.JPEG`` files, or a root holding
            ``train/`` and ``val/`` subfolders of any of these. ``None`` ⇒ the embedded synthetic dataset.
        split: subfolder to pick under a root with splits. ``None`` on such a root picks ``val``.
        limit: keep only the first ``limit`` records (shard order, or sorted file order).

    Returns:
        Records in a stable order.

    Raises:
        UserError: missing path, nothing loadable there, unknown split.
    """
    url, fs, path = locate(src)
    path, url = pick_split(fs, path, url, split)
    if limit is not None and limit < 0:
        raise UserError(f"limit must be >= 0, got {limit}")
    kind = source_kind(fs, path, url)
    if kind == "shards":
        records = _shard_records(fs, list_shards(fs, path, url), limit)
    elif kind == "imagefolder":
        records = [_file_record(fs, p, label) for p, label in imagefolder_items(fs, path, url)[0][:limit]]
    else:
        records = [_file_record(fs, p, label) for p, label in flat_val_items(fs, path, url)[:limit]]
    if not records and limit != 0:
        raise UserError(f"'{url}' holds no images (empty dataset)")
    return records


def drop_undecodable(records: list[Record]) -> tuple[list[Record], list[str]]:
    """The records whose image (and mask, if any) PIL decodes, and the paths of the others (truncated, corrupt,
    decompression bombs): a dataset's bad image is skipped and counted, never an error."""
    from mimlab.data.decode import check_encoded

    kept, bad = [], []
    for rec in records:
        try:
            check_encoded(rec.image)
            if rec.mask is not None:
                check_encoded(rec.mask)
            kept.append(rec)
        except CorruptImage:
            bad.append(rec.path)
    return kept, bad


def skipped_note(count: int, where: str, paths: list[str] | None = None) -> str:
    """The one stderr line of a reader that skipped ``count`` undecodable images (``where``: e.g. 'train 1, val 0')."""
    shown = f": {', '.join(paths[:5])}{' …' if len(paths) > 5 else ''}" if paths else ""
    return f"warning: skipped {count} undecodable image(s) ({where}){shown}"


def pick_split(fs, path: str, url: str, split: str | None, default: str = "val") -> tuple[str, str]:
    """``(path, url)`` of the split folder under a root with ``train/``/``val/`` (``split=None`` ⇒ ``default``),
    or the input unchanged for a folder without splits (``split`` must then be ``None``)."""
    if not fs.isdir(path):
        if split is not None:
            raise UserError(f"split='{split}' given but '{url}' is a file, not a folder with train/ and val/")
        return path, url
    subdirs = {os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False) if fs.isdir(p)}
    has_splits = {"train", "val"} <= subdirs and not _has_images_or_shards(fs, path)
    if split is None:
        if not has_splits:
            return path, url
        split = default
    if split not in subdirs:
        raise UserError(f"'{url}' has no '{split}/' subfolder; found: {', '.join(sorted(subdirs)) or 'none'}")
    return join(fs, path, split), url.rstrip("/") + "/" + split


def _has_images_or_shards(fs, path: str) -> bool:
    return any(p.endswith(".parquet") or is_image_file(p) for p in fs.ls(path, detail=False) if not fs.isdir(p))


def source_kind(fs, path: str, url: str) -> str:
    """``"shards"``, ``"imagefolder"`` or ``"flat"`` for a path that exists.

    Raises:
        UserError: when the folder holds neither shards, class folders nor ImageNet-val files.
    """
    if not fs.isdir(path):
        if path.endswith(".parquet"):
            return "shards"
        raise UserError(f"'{url}' is a file but not a .parquet shard")
    entries = fs.ls(path, detail=True)
    files = [e["name"] for e in entries if e["type"] != "directory"]
    dirs = [e["name"] for e in entries if e["type"] == "directory"]
    if any(f.endswith(".parquet") for f in files):
        return "shards"
    if any(_WNID_FILE.match(os.path.basename(f)) for f in files):
        return "flat"
    if dirs:
        return "imagefolder"
    raise UserError(f"'{url}' holds no .parquet shards, class folders or nXXXXXXXX_*.JPEG files (empty dataset)")


def imagefolder_items(fs, path: str, url: str, per_class_limit: int | None = None,
                      ) -> tuple[list[tuple[str, int]], list[str]]:
    """``(items, classes)`` of an ImageFolder tree: ``(file, label)`` in sorted class then sorted file order.

    ``per_class_limit`` keeps the first K files per class in that order (the thesis' ImageNet subset is K=260).

    Raises:
        UserError: a non-image file in a class folder, or no images at all.
    """
    class_dirs = sorted((p for p in fs.ls(path, detail=False) if fs.isdir(p)), key=lambda p: os.path.basename(p))
    classes = [os.path.basename(p.rstrip("/")) for p in class_dirs]
    items: list[tuple[str, int]] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted((p for p in fs.find(class_dir) if not os.path.basename(p).startswith(".")))
        for f in files:
            if not is_image_file(f):
                raise UserError(f"'{f}' in ImageFolder '{url}' is not an image file "
                                f"(expected one of {', '.join(IMAGE_EXTENSIONS)})")
        items.extend((f, label) for f in files[:per_class_limit])
    if not items:
        raise UserError(f"ImageFolder '{url}' holds no images (empty dataset)")
    return items, classes


def flat_val_items(fs, path: str, url: str) -> list[tuple[str, int]]:
    """``(file, label)`` of a flat ImageNet-val folder; label = index of the wnid among the wnids present."""
    files = sorted(p for p in fs.ls(path, detail=False) if _WNID_FILE.match(os.path.basename(p)))
    wnids = sorted({_WNID_FILE.match(os.path.basename(f)).group(1) for f in files})
    index = {w: i for i, w in enumerate(wnids)}
    return [(f, index[_WNID_FILE.match(os.path.basename(f)).group(1)]) for f in files]


def _file_record(fs, path: str, label: int | None) -> Record:
    with fs.open(path, "rb") as handle:
        return Record(image=handle.read(), label=label, path=path)


def _shard_records(fs, files: list[str], limit: int | None) -> list[Record]:
    records: list[Record] = []
    for _, table in iter_tables(fs, files, columns=["image", "label", "path", "mask"]):
        cols = table.to_pydict()
        masks = cols.get("mask") or [None] * table.num_rows
        for image, label, path, mask in zip(cols["image"], cols["label"], cols["path"], masks):
            if limit is not None and len(records) >= limit:
                return records
            records.append(Record(image=image, label=None if label is None else int(label), path=path, mask=mask))
    return records
