"""Images and features for evaluation: the in-process torch path and the Ray Data actor-pool path.

* ``workers == 0``: decode, transform and extract in this process (plain torch loop) — small data, Tune trials.
* ``workers >= 1``: a Ray Data pipeline; decoding/augmentation run as tasks, feature extraction runs in
  ``map_batches`` over an :class:`~ray.data.ActorPoolStrategy` of ``workers`` actors, one model per actor (one GPU
  per actor when the cluster has GPUs). Reuses a running Ray runtime (inside a Tune trial) via ``ensure_ray``.

Transforms: eval = resize the shorter side to ``S/0.875`` (bicubic) + centre-crop ``S``
(:func:`mimlab.data.transforms.eval_transform`); train augmentation for the linear probe = RandomResizedCrop ``S``
(scale 0.08–1, bilinear, as torchvision's default in DINO ``eval_linear``) + horizontal flip p 0.5.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from mimlab.errors import UserError

RRC_SCALE = (0.08, 1.0)


@dataclass(frozen=True)
class ModelRef:
    """How to (re)load the evaluated model in any process (Ray actors reload it from this)."""

    model: str
    weights: str | None = None
    student: bool = False
    img_size: int | None = None

    def load(self):
        from mimlab.models.loading import load_model

        return load_model(self.model, self.weights, img_size=self.img_size, student=self.student)


@dataclass
class Split:
    """Decoded images of one split: ``images`` list of ``uint8 [H,W,3]``, ``labels int64 [N]``, source ``url``,
    and the paths of the ``skipped`` images PIL refused."""

    images: list[np.ndarray]
    labels: np.ndarray
    url: str
    skipped: list[str] = field(default_factory=list)


def split_source(src: str | None, split: str) -> tuple[str | None, str | None]:
    """``(src, split argument for load_records)``: ``None`` ⇒ the embedded dataset's ``split``; a root holding
    ``train/`` and ``val/`` ⇒ that subfolder; anything else is used as given."""
    if src is None:
        return None, split
    from mimlab.data.fs import join, resolve

    fs, path = resolve(str(src))
    if fs.isdir(path) and fs.isdir(join(fs, path, "train")) and fs.isdir(join(fs, path, "val")):
        return str(src), split
    return str(src), None


def load_split(src: str | None, split: str, limit: int | None = None) -> Split:
    """Decode every image of a split (labels required); an undecodable image is skipped and counted.

    Raises:
        UserError: missing or unlabelled data, or no decodable image at all.
    """
    from mimlab.data.sources import CorruptImage, decode_rgb, load_records

    url, which = split_source(src, split)
    records = load_records(url, split=which, limit=limit)
    name = url if url is not None else f"embedded dataset ({split})"
    missing = [r.path for r in records if r.label is None]
    if missing:
        raise UserError(f"{split} data '{name}' has images without labels (e.g. '{missing[0]}'); "
                        f"k-NN and linear probing need labelled data")
    images, labels, skipped = [], [], []
    for r in records:
        try:
            images.append(decode_rgb(r.image))
            labels.append(r.label)
        except CorruptImage:
            skipped.append(r.path)
    if records and not images:
        raise UserError(f"{split} data '{name}': none of its {len(records)} images decodes")
    return Split(images, np.asarray(labels, dtype=np.int64), name, skipped)


def eval_batch(images: list[np.ndarray], size: int) -> np.ndarray:
    """Eval transform of a list of images: ``uint8 [B, S, S, 3]``."""
    from mimlab.data.transforms import eval_transform

    return np.stack([eval_transform(img, size) for img in images])


def augment_batch(images: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """RandomResizedCrop(``size``, scale 0.08–1, bilinear) + h-flip p 0.5: ``uint8 [B, S, S, 3]``."""
    from mimlab.data.transforms import random_resized_crop_box

    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        top, left, h, w = random_resized_crop_box(rng, img.shape[0], img.shape[1], RRC_SCALE)
        crop = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR,
                                                      box=(left, top, left + w, top + h)))
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class FeatureModel:
    """A loaded model that maps ``uint8 [B,S,S,3]`` batches to ``{"knn": [B,D], "linear": [B,n·D]}`` numpy."""

    def __init__(self, ref: ModelRef, n_last_blocks: int = 4, loaded=None) -> None:
        self.loaded = loaded if loaded is not None else ref.load()
        self.device = default_device()
        self.loaded.module.to(self.device).eval()
        self.n_last_blocks = n_last_blocks if self.loaded.kind == "vit" else 1
        if self.loaded.kind == "vit" and n_last_blocks > len(self.loaded.module.blocks):
            self.n_last_blocks = len(self.loaded.module.blocks)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        from mimlab.evaluation.features import batch_features, to_input

        x = to_input(images, self.loaded.mean, self.loaded.std, self.device)
        feats = batch_features(self.loaded.module, x, self.n_last_blocks)
        return {k: v.float().cpu().numpy() for k, v in feats.items()}


class _FeatureActor:
    """Ray Data actor: one model per actor; ``image`` uint8 column → ``knn``/``linear`` feature columns."""

    def __init__(self, ref: ModelRef, n_last_blocks: int) -> None:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.model = FeatureModel(ref, n_last_blocks)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = int(self.model.loaded.img_size)
        images = np.stack(list(batch["image"])) if len(batch["image"]) else np.zeros((0, size, size, 3), np.uint8)
        feats = self.model(images)  # a batch whose images were all skipped: [0, D] features
        return {"knn": feats["knn"], "linear": feats["linear"], "label": np.asarray(batch["label"])}


def _decode_transform(batch: dict[str, np.ndarray], *, size: int, augment: bool, seed: int, tag: str) -> dict:
    """Ray task: decode ``image`` bytes, then eval transform or train augmentation → ``uint8 [B,S,S,3]``;
    undecodable images are dropped and counted under ``tag`` (:func:`mimlab.data.pipeline.skipped_images`)."""
    import zlib

    from mimlab.data.pipeline import decode_kept

    images, keep = decode_kept(batch, tag, announce=False)  # the command reports the count (one line)
    labels = np.asarray(batch["label"], dtype=np.int64)[keep]
    if not images:
        return {"image": np.zeros((0, size, size, 3), dtype=np.uint8), "label": labels}
    if augment:
        # per-batch stream from (seed, first path): reproducible, different for every batch and epoch seed
        rng = np.random.default_rng([seed, zlib.crc32(str(batch["path"][0]).encode())])
        out = augment_batch(images, size, rng)
    else:
        out = eval_batch(images, size)
    return {"image": out, "label": labels}


def features_local(model: FeatureModel, images: list[np.ndarray], size: int, batch_size: int,
                   rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """In-process features of decoded images (eval transform, or train augmentation when ``rng`` is given)."""
    parts: dict[str, list[np.ndarray]] = {"knn": [], "linear": []}
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        batch = augment_batch(chunk, size, rng) if rng is not None else eval_batch(chunk, size)
        for key, value in model(batch).items():
            parts[key].append(value)
    return {k: torch.from_numpy(np.concatenate(v)) for k, v in parts.items()}


def features_ray(ref: ModelRef, src: str | None, split: str, *, size: int, n_last_blocks: int, batch_size: int,
                 workers: int, limit: int | None = None, augment: bool = False, seed: int = 0,
                 ) -> tuple[dict[str, torch.Tensor], int]:
    """Features of a split through Ray Data: decode/transform tasks, then an actor pool of ``workers`` models.

    Returns:
        ``({"knn": [N, D], "linear": [N, n·D], "label": [N]}, skipped)`` (row order is not guaranteed;
        ``skipped``: undecodable images dropped).
    """
    import uuid

    import ray

    from mimlab.data.pipeline import skipped_images
    from mimlab.runtime.ray_env import ensure_ray

    ensure_ray()
    tag = f"eval-{split}-{uuid.uuid4().hex[:8]}"
    ds = _image_dataset(src, split, size=size, batch_size=batch_size, limit=limit, augment=augment, seed=seed,
                        tag=tag)
    resources = ray.cluster_resources()
    num_gpus = 1 if resources.get("GPU", 0) >= 1 else 0
    # leave at least one CPU for the read/decode tasks, or a pool as large as the cluster starves them
    num_cpus = max(0.25, min(1.0, (resources.get("CPU", 1) - 1) / workers))
    ds = ds.map_batches(_FeatureActor, compute=ray.data.ActorPoolStrategy(size=workers), batch_size=batch_size,
                        batch_format="numpy", num_gpus=num_gpus, num_cpus=num_cpus,
                        fn_constructor_kwargs={"ref": ref, "n_last_blocks": n_last_blocks})
    parts: dict[str, list[np.ndarray]] = {"knn": [], "linear": [], "label": []}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for key in parts:
            parts[key].append(batch[key])
    if not parts["label"]:
        raise UserError(f"{split} data '{src or 'embedded dataset'}': no decodable image")
    return {k: torch.from_numpy(np.concatenate(v)) for k, v in parts.items()}, int(skipped_images(tag))


def _image_dataset(src: str | None, split: str, *, size: int, batch_size: int, limit: int | None, augment: bool,
                   seed: int, tag: str):
    """``ray.data.Dataset`` of transformed ``image`` uint8 ``[S,S,3]`` + ``label``: shards are streamed with
    :mod:`mimlab.data.pipeline`; ImageFolder/flat sources are listed in the driver (bytes shipped as items)."""
    import ray

    from mimlab.data import pipeline
    from mimlab.data.fs import join, resolve
    from mimlab.data.sources import load_records, source_kind

    url, which = split_source(src, split)
    if url is None:
        kind = "shards"
    else:
        fs, path = resolve(url)
        if not fs.exists(path):
            raise UserError(f"no such file or folder: '{url}'")
        kind = source_kind(fs, join(fs, path, which) if which else path, url)
    if kind == "shards":
        which = which or (split if url is None else None)
        _check_shard_labels(url, which, split)
        if not augment:
            ds = pipeline.eval_dataset(url, size, split=which, batch_size=batch_size, tag=tag, announce=False)
            return _first(ds, limit)
        ds = _first(pipeline.read_shards(url, split=which, columns=["image", "label", "path"]), limit)
    else:
        records = load_records(url, split=which, limit=limit)
        if any(r.label is None for r in records):
            raise UserError(f"{split} data '{url}' has images without labels; k-NN and linear probing need "
                            f"labelled data")
        items = [{"image": r.image, "label": int(r.label), "path": r.path} for r in records]
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 16)))
    return ds.map_batches(_decode_transform, batch_size=batch_size, batch_format="numpy",
                          fn_kwargs={"size": size, "augment": augment, "seed": seed, "tag": tag})


def _first(ds, limit: int | None):
    """The first ``limit`` rows in shard order (as the in-process path takes them), or ``ds`` unchanged."""
    if limit is None:
        return ds
    ds.context.execution_options.preserve_order = True
    return ds.limit(limit)


def _check_shard_labels(url: str | None, which: str | None, split: str) -> None:
    """One-line error for shards with missing labels (reads only the ``label`` column, before any Ray work)."""
    from mimlab.data import pipeline
    from mimlab.data.shards import iter_tables

    fs, files = pipeline.shard_files(url, which)
    for name, table in iter_tables(fs, files, columns=["label"]):
        if table.column("label").null_count:
            raise UserError(f"{split} data '{url or 'embedded dataset'}': shard '{name}' has images without labels; "
                            f"k-NN and linear probing need labelled data")
