"""Summaries of a dataset: per split, the shard files, image count, classes, image sizes and bytes."""

from __future__ import annotations

import io
import os
from collections import Counter

import pyarrow.parquet as pq
from PIL import Image

from mimlab.data.fs import join, list_shards, locate, read_json
from mimlab.data.schema import CLASSES_FILE
from mimlab.data.schema import check_schema
from mimlab.data.shards import iter_tables, read_schema
from mimlab.errors import UserError


def dataset_info(url: str | os.PathLike | None = None, *, sample: int | None = 5000) -> dict:
    """Describe the shards at ``url`` (a shard folder/file, or a root with split subfolders; ``None`` ⇒ embedded).

    Counts come from the ``label`` column of every shard; image sizes from the headers of the first ``sample``
    images per split (``None`` ⇒ all), so a large dataset is not read in full.

    Returns:
        ``{"url", "splits": {name: {"files", "images", "bytes", "classes", "class_names", "per_class",
        "sizes", "sized", "with_mask"}}}``; ``sizes`` maps ``"HxW"`` to a count over ``sized`` images.
    """
    text, fs, path = locate(url)
    splits = {}
    if fs.isdir(path):
        subdirs = sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False) if fs.isdir(p))
        has_files = any(p.endswith(".parquet") for p in fs.ls(path, detail=False))
        if subdirs and not has_files:
            for name in subdirs:
                splits[name] = _split_info(fs, join(fs, path, name), f"{text.rstrip('/')}/{name}", sample)
    if not splits:
        splits["."] = _split_info(fs, path, text, sample)
    return {"url": text, "splits": splits}


def _split_info(fs, path: str, url: str, sample: int | None) -> dict:
    files = list_shards(fs, path, url)
    per_class: Counter = Counter()
    sizes: Counter = Counter()
    images = unlabeled = 0
    with_mask = False
    for _, table in iter_tables(fs, files, columns=["label"]):
        labels = table.column("label").to_pylist()
        unlabeled += labels.count(None)
        per_class.update(label for label in labels if label is not None)
        images += table.num_rows
    if images == 0:
        raise UserError(f"'{url}' holds no images (empty dataset)")
    for f in files:
        if sample is not None and sum(sizes.values()) >= sample:
            break
        with_mask = with_mask or check_schema(read_schema(fs, f), f)
        with fs.open(f, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            for group in range(parquet.num_row_groups):
                for data in parquet.read_row_group(group, columns=["image"]).column("image").to_pylist():
                    if sample is not None and sum(sizes.values()) >= sample:
                        break
                    sizes[_size(data)] += 1
    names = read_json(fs, join(fs, path, CLASSES_FILE)) if fs.isdir(path) else None
    return {"files": len(files), "images": images, "bytes": sum(fs.size(f) for f in files),
            "classes": len(per_class), "class_names": names, "per_class": dict(sorted(per_class.items())),
            "sizes": dict(sizes.most_common()), "sized": sum(sizes.values()), "with_mask": with_mask,
            "unlabeled": unlabeled}


def _size(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
        return f"{height}x{width}"
    except Exception:  # noqa: BLE001 - an undecodable image is reported, not fatal
        return "undecodable"


def format_info(info: dict) -> str:
    """Human-readable text of :func:`dataset_info`."""
    lines = [f"dataset: {info['url']}"]
    for name, s in info["splits"].items():
        sizes = ", ".join(f"{k} ×{v}" for k, v in list(s["sizes"].items())[:5])
        counts = list(s["per_class"].values())
        lines.append(f"[{name}] images: {s['images']}  shards: {s['files']}  bytes: {s['bytes']:,} "
                     f"({s['bytes'] / 2**20:.1f} MiB)  masks: {'yes' if s['with_mask'] else 'no'}")
        names = s["class_names"]
        shown = f" ({', '.join(names[:10])}{' …' if len(names) > 10 else ''})" if names else ""
        spread = f"  per class: min {min(counts)} max {max(counts)}" if counts else ""
        blank = f"  unlabeled: {s['unlabeled']}" if s.get("unlabeled") else ""
        lines.append(f"  classes: {s['classes']}{shown}{spread}{blank}")
        note = "" if s["sized"] == s["images"] else f" (first {s['sized']} images)"
        lines.append(f"  image sizes (HxW){note}: {sizes}{' …' if len(s['sizes']) > 5 else ''}")
    return "\n".join(lines)
