"""The Python API: the platform's jobs as functions that return plain results and never print.

Each function calls the same code the ``platform`` CLI command calls (and accepts the same model references: a timm
name + optional local weights, a ``platform pretrain`` checkpoint folder, or ``package.module:callable``); nothing is
downloaded. Use them from notebooks or scripts::

    import mimlab

    ex = mimlab.explain(["cat.jpg"], "runs/pretrain-demo/checkpoint", methods=["raw", "rollout", "gradcam"])
    ex.maps["raw"]                     # float32 [N, H, W] in [0, 1]
    scores = mimlab.evaluate_saliency("runs/pretrain-demo/checkpoint", methods=["raw"],
                                      metrics=["insertion", "deletion", "pointing"], limit=64)
    scores.table["raw"]["pointing"]    # mean over the images
    run = mimlab.pretrain("experiments/pretrain-demo.yaml", overrides=["optim.epochs=1"])
    mimlab.knn(run.checkpoint_dir)["results"]["20"]["top1"]
    mimlab.linear_probe(run.checkpoint_dir, epochs=10, cached_features=True)["best_top1"]

Bad input raises :class:`mimlab.errors.UserError` with a one-line message, as the CLI reports it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mimlab.errors import UserError

if TYPE_CHECKING:
    from mimlab.pretrain.loop import PretrainResult
    from mimlab.runtime.saliency import SaliencyResult

ImageLike = str | Path | np.ndarray


@dataclass
class Explanation:
    """What :func:`explain` returns.

    Attributes:
        maps: method spec (as given) -> float32 ``[N, H, W]`` in [0, 1], images in order.
        images: the model-sized RGB images the maps refer to, uint8 ``[N, H, W, 3]`` (for overlays).
        top5: per image, ``[(class index, probability), ...]`` of the model's top-5 predictions.
        methods: the method specs, in order (``all_methods=True`` adds every method that fits the model).
    """

    maps: dict[str, np.ndarray]
    images: np.ndarray
    top5: list[list[tuple[int, float]]]
    methods: list[str]


def _as_rgb(image: ImageLike) -> np.ndarray:
    from mimlab.explain.run import read_image

    if isinstance(image, (str, Path)):
        return read_image(Path(image))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise UserError(f"an image array must be [H, W, 3] RGB, got shape {list(arr.shape)}")
    if arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 1:
            raise UserError("a float image array must hold values in [0, 1] (or pass uint8 0..255)")
        arr = (arr * 255).round().astype(np.uint8)
    return arr


def explain(
    images: ImageLike | Sequence[ImageLike],
    model: str,
    *,
    methods: Sequence[str] = (),
    weights: str | Path | None = None,
    all_methods: bool = False,
    img_size: int | None = None,
    target: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channel_order: str = "rgb",
    student: bool = False,
) -> Explanation:
    """Saliency maps of images, as ``platform explain`` computes them (nothing is written or printed).

    Args:
        images: file paths and/or uint8 ``[H, W, 3]`` RGB arrays (float arrays in [0, 1] are accepted).
        model: timm name, ``platform pretrain`` checkpoint folder (teacher) or ``package.module:callable``.
        methods: specs such as ``"raw:layer=12"``, ``"rollout:layers=9-12"``, ``"gradcam"`` (layers 1-based;
            the list is in docs/methods.md). Empty = the model's default method.
        weights: local weights for a timm name (none = random weights).
        all_methods: add every method that fits the model.
        img_size: input side in pixels (default: the model's).
        target: class to explain (default: each image's top-1 prediction).
        mean, std: override the model's normalisation (3 values each).
        channel_order: ``rgb`` or ``bgr_legacy`` (replicates thesis bug B1).
        student: for a pretrain checkpoint, explain the student instead of the teacher.

    Returns:
        :class:`Explanation`.
    """
    import torch

    from mimlab.explain import build_explainer, explain_many
    from mimlab.explain.run import CHANNEL_ORDERS, default_methods, preprocess
    from mimlab.models.loading import load_model

    items = [images] if isinstance(images, (str, Path, np.ndarray)) else list(images)
    if not items:
        raise UserError("give at least one image")
    if channel_order not in CHANNEL_ORDERS:
        raise UserError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got '{channel_order}'")
    raw = [_as_rgb(i) for i in items]  # fail on a bad image before loading the model
    loaded = load_model(model, Path(weights) if weights else None, img_size=img_size, student=student)
    size = int(img_size or loaded.img_size)
    specs = list(dict.fromkeys(methods)) or default_methods(loaded, all_methods)
    if methods and all_methods:
        specs += [m for m in default_methods(loaded, True) if m not in specs]
    explainers = {s: build_explainer(s, loaded) for s in specs}
    display, batch = preprocess(raw, size, mean or loaded.mean, std or loaded.std, channel_order)
    with torch.no_grad():
        probs = loaded.module(batch).softmax(-1)  # [N, classes]
    if target is not None and not 0 <= target < probs.shape[-1]:
        raise UserError(f"target {target} is outside 0..{probs.shape[-1] - 1}")
    top = probs.topk(min(5, probs.shape[-1]), dim=-1)
    top5 = [list(zip(i.tolist(), p.tolist(), strict=True)) for i, p in zip(top.indices, top.values, strict=True)]
    maps: dict[str, list[np.ndarray]] = {s: [] for s in specs}
    for i in range(len(raw)):  # one image at a time, as the CLI does (targets and CAM batches stay per image)
        tgt = torch.tensor([target]) if target is not None else None
        per = explain_many(loaded, batch[i : i + 1], list(explainers.values()), tgt)
        for s in specs:
            maps[s].append(per[s][0].numpy().astype(np.float32))
    return Explanation({s: np.stack(v) for s, v in maps.items()}, np.stack([np.asarray(d) for d in display]),
                       top5, specs)


def evaluate_saliency(
    model: str,
    *,
    methods: Sequence[str] = ("raw",),
    metrics: Sequence[str] | None = None,
    weights: str | None = None,
    data: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    img_size: int | None = None,
    workers: int = 0,
    batch_size: int = 16,
    save_maps: bool = False,
    out: str | Path | None = None,
) -> SaliencyResult:
    """Explain and score every image of a dataset, as ``platform evaluate saliency`` (without the MLflow run).

    Args:
        model: as for :func:`explain`.
        methods: method specs (docs/methods.md §1).
        metrics: metric specs, e.g. ``["ad", "ai", "insertion", "deletion", "pointing", "energy", "iou:k=20"]``
            (default ad, ai, insertion, deletion; localisation metrics need masks: the embedded data has them).
        data: shards / ImageFolder / root with ``train/`` and ``val/``; ``None`` = the embedded dataset.
        split: subfolder of a root with splits (default ``val``).
        limit: first ``limit`` images only.
        workers: 0 = in this process (no Ray); N = Ray actors the batches are shared over (results do not
            depend on it).
        save_maps: also write ``maps.npz`` into ``out``.
        out: folder for ``results.json``, ``per_image.csv``, ``metrics.png`` (default: a fresh temporary folder).

    Returns:
        :class:`mimlab.runtime.saliency.SaliencyResult`: ``table[method][metric]`` = mean over images,
        ``rows`` = one dict per (image, method), ``higher_is_better[metric]``, ``files``.
    """
    from mimlab.runtime.saliency import DEFAULT_METHODS, compute_saliency

    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="mimlab-saliency-"))
    return compute_saliency(model=model, weights=weights, data=data, split=split, limit=limit,
                            methods=list(methods or DEFAULT_METHODS), metrics=list(metrics) if metrics else None,
                            img_size=img_size, workers=workers, batch_size=batch_size, save_maps=save_maps,
                            out=folder)


def pretrain(
    config: str | Path | dict[str, Any] | Any,
    *,
    overrides: Sequence[str] = (),
    data: str | None = None,
    name: str | None = None,
    storage_path: str | None = None,
    workers: int = 0,
    tracking_uri: str | None = None,
    experiment: str = "pretrain",
) -> PretrainResult:
    """iBOT pretraining with a masking strategy as a parameter.

    The one training path of ``platform pretrain`` and every sweep trial: the Ray Data stream into the train
    function, logged to MLflow. ``workers=0`` runs it in this process (Ray Train's local mode); ``workers >= 1`` is
    Ray Train DDP with N workers.

    Args:
        config: experiment YAML path, a (partial) config dict or a ``PretrainConfig``.
        overrides: ``["masking.strategy=attmask-low", "optim.epochs=1"]`` (values parsed as YAML).
        data: training shards URL (default: the config's, else the embedded dataset).
        name: run name; re-running the same name and storage path resumes (default: the YAML's stem or
            ``pretrain``). Checkpoints go to ``storage_path/name``.
        storage_path: checkpoint folder (default ``train.storage_path``).
        workers: 0 = in-process (local mode); N >= 1 = Ray Train with N workers.
        tracking_uri, experiment: where the run logs (default ``./mlflow.db``).

    Returns:
        ``PretrainResult``: ``checkpoint_dir`` (usable as ``model`` everywhere in this API) and ``metrics`` of the
        last epoch (with ``eval.knn_every > 0``: ``knn_top1`` and ``knn_top1_init``, the untrained model).
    """
    from mimlab.config.pretrain import load_pretrain_config

    cfg = load_pretrain_config(config, list(overrides))
    run_name = name or (Path(config).stem if isinstance(config, (str, Path)) else "pretrain")
    if workers < 0:
        raise UserError(f"workers must be >= 0, got {workers}")
    from mimlab.runtime.train import run_pretrain

    return run_pretrain(cfg, data=data, name=run_name, storage_path=storage_path, workers=workers,
                        tracking_uri=tracking_uri, experiment=experiment)


def knn(
    model: str,
    *,
    weights: str | None = None,
    student: bool = False,
    train: str | None = None,
    val: str | None = None,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    limit: int | None = None,
    batch_size: int = 128,
    workers: int = 0,
) -> dict[str, Any]:
    """Weighted k-NN top-1/top-5 of frozen [cls] features, as ``platform eval knn`` (no MLflow run, no files).

    Args:
        model: as for :func:`explain` (a pretrain checkpoint evaluates its teacher; ``student=True`` the student).
        train, val: bank and query splits (default: the embedded dataset's).
        ks: neighbour counts, evaluated in one pass; temperature: vote temperature T.
        limit: first ``limit`` images of each split.
        workers: 0 = in-process; >= 1 = a Ray Data actor pool.

    Returns:
        ``{"results": {"20": {"top1": %, "top5": %}, ...}, "metrics": {"knn_top1_k20": ...}, "n_train", "n_val",
        ...}``.
    """
    from mimlab.evaluation.api import run_knn

    return run_knn(model, weights=weights, student=student, train=train, val=val, ks=tuple(ks),
                   temperature=temperature, limit=limit, out=None, log_mlflow=False, batch_size=batch_size,
                   workers=workers)


def linear_probe(
    model: str,
    *,
    weights: str | None = None,
    student: bool = False,
    train: str | None = None,
    val: str | None = None,
    epochs: int = 100,
    cached_features: bool = False,
    n_last_blocks: int = 4,
    base_lr: float = 0.003,
    batch_size: int = 256,
    limit: int | None = None,
    workers: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Linear probe on frozen features, as ``platform eval linear`` (no MLflow run, no files).

    Args:
        model, weights, student, train, val, limit, workers: as for :func:`knn`.
        epochs: SGD epochs (cosine to 0); base_lr: lr per 256 images.
        cached_features: extract features once without augmentation (fast) instead of
            random-resized-crop + flip every epoch.
        n_last_blocks: [cls] of that many last blocks are concatenated.

    Returns:
        A dict with ``best_top1`` (best val top-1 over epochs, %: selection on val, as the references do),
        ``best_epoch``, ``curve`` (val top-1 per epoch) and the protocol.
    """
    from mimlab.evaluation.api import run_linear

    return run_linear(model, weights=weights, student=student, train=train, val=val, epochs=epochs,
                      cached_features=cached_features, n_last_blocks=n_last_blocks, base_lr=base_lr,
                      batch_size=batch_size, limit=limit, out=None, log_mlflow=False, workers=workers, seed=seed)


__all__ = ["Explanation", "evaluate_saliency", "explain", "knn", "linear_probe", "pretrain"]
