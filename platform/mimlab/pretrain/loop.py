"""One-process pretraining (no TorchTrainer): the engine of the Ray Train path, for Tune trials and laptops.

``pretrain_local`` writes the checkpoint format of docs/architecture.md into ``out_dir`` every epoch, resumes
from the last one, and calls ``on_epoch(epoch, metrics)`` after each epoch (a Tune trial reports from it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mimlab.errors import UserError


@dataclass
class PretrainResult:
    """Where the final checkpoint lives and the last epoch's metrics (``knn_top1``, ``knn_top1_init``, losses)."""

    checkpoint_dir: str
    metrics: dict[str, Any] = field(default_factory=dict)


class MetricSink(Protocol):
    """Where metrics go (MLflow on rank 0, nothing elsewhere)."""

    def log_step(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...
    def log_image(self, key: str, image: np.ndarray, step: int) -> None: ...


def resolve_config(cfg: Any):
    """Accept a :class:`PretrainConfig`, a dict or a YAML path."""
    from mimlab.config.pretrain import PretrainConfig, load_pretrain_config

    return cfg if isinstance(cfg, PretrainConfig) else load_pretrain_config(cfg)


def pick_device(cfg) -> torch.device:
    if cfg.train.use_gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def epoch_diagnostics(parts, monitor, epoch: int, sink: MetricSink | None, every: int) -> dict[str, float]:
    """k-NN every ``every`` epochs (and at the last) plus the probe attention image (logged to ``sink``)."""
    out: dict[str, float] = {}
    if monitor is None:
        return out
    last = epoch == parts.cfg.optim.epochs - 1
    if every > 0 and ((epoch + 1) % every == 0 or last):
        top1 = monitor.knn_top1(parts.teacher)
        if top1 is not None:
            out["knn_top1"] = top1
    if sink is not None:
        image = monitor.attention_image(parts.teacher)
        if image is not None:
            sink.log_image("cls_attention", image, epoch)
    return out


def initial_knn(parts, monitor, history: dict[str, Any], sink: MetricSink | None, every: int) -> None:
    """k-NN of the untrained teacher, once per run (kept in ``history``, so a resumed run does not redo it),
    logged at epoch -1 so every k-NN curve starts at the untrained model."""
    if monitor is None or every <= 0 or "knn_top1_init" in history:
        return
    init = monitor.knn_top1(parts.teacher)
    if init is not None:
        history["knn_top1_init"] = init
        if sink is not None:
            sink.log_epoch(-1, {"knn_top1": init})


def carry_forward(metrics: dict[str, Any], history: dict[str, Any]) -> dict[str, Any]:
    """Add the k-NN figures an epoch did not measure to ``metrics`` (for the checkpoint and the result).

    ``knn_top1_init`` always comes from ``history``; ``knn_top1`` from the last epoch that measured it.

    Returns:
        a copy of ``metrics`` as measured, before the additions: what goes to the metric sink, so an MLflow curve
        has points only at the epochs where k-NN ran.
    """
    measured = dict(metrics)
    if "knn_top1_init" in history:
        metrics["knn_top1_init"] = history["knn_top1_init"]
    if "knn_top1" not in metrics and "knn_top1" in history.get("last", {}):
        metrics["knn_top1"] = history["last"]["knn_top1"]
    return measured


def pretrain_local(cfg: Any, *, data: str | None = None, out_dir: str | os.PathLike,
                   on_epoch: Callable[[int, dict[str, Any]], None] | None = None, resume: bool = True,
                   sink: MetricSink | None = None) -> PretrainResult:
    """Pretrain in this process with the same engine as the Ray Train path.

    Args:
        cfg: :class:`~mimlab.config.pretrain.PretrainConfig` (or dict / YAML path).
        data: training source URL; overrides ``cfg.data.train`` (``None`` in both = embedded dataset).
        out_dir: local folder for ``checkpoint-EEEE/`` folders and the ``latest`` pointer.
        on_epoch: ``on_epoch(epoch, metrics)`` after each epoch's checkpoint is written.
        resume: continue from ``out_dir``'s last checkpoint when there is one.
        sink: optional metric/image logger (MLflow adapter in :mod:`mimlab.runtime.train`).

    Returns:
        :class:`PretrainResult` with the last checkpoint folder and the last epoch's metrics.

    Raises:
        UserError: bad config/data, a checkpoint of another architecture, a diverging loss (the last good
            checkpoint stays intact and is named).
    """
    from mimlab.pretrain.build import IMAGENET_MEAN, IMAGENET_STD, build_parts
    from mimlab.pretrain.checkpoint import LocalCheckpoints, load_state, restore
    from mimlab.pretrain.data_local import LocalMultiCrop, load_images
    from mimlab.pretrain.engine import DivergedLoss, crops_from_columns, train_one_epoch
    from mimlab.pretrain.monitor import OnlineMonitor
    from mimlab.pretrain.schedules import Schedules

    cfg = resolve_config(cfg)
    url = data if data is not None else cfg.data.train
    device = pick_device(cfg)
    parts = build_parts(cfg, device)
    images, labels = load_images(url, "train", cfg.data.limit)
    loader = LocalMultiCrop(images, labels, cfg)
    steps = cfg.train.steps_per_epoch or len(loader)
    schedules = Schedules.from_config(cfg, steps, world_size=1)
    ckpts = LocalCheckpoints(out_dir)
    start, history = 0, {}
    latest = ckpts.latest() if resume else None
    if latest is not None:
        state = load_state(latest)
        start = restore(parts, state, str(latest))
        history = state.get("history", {})
    needs_monitor = cfg.eval.knn_every > 0 or (sink is not None and cfg.eval.probe_images > 0)
    monitor = OnlineMonitor(cfg, url) if needs_monitor else None
    initial_knn(parts, monitor, history, sink, cfg.eval.knn_every)
    G, L = cfg.crops.global_crops, cfg.crops.local_crops
    metrics: dict[str, Any] = dict(history.get("last", {}))
    checkpoint_dir = str(latest) if latest is not None else ""
    for epoch in range(start, cfg.optim.epochs):
        batches = (crops_from_columns(b, G, L, IMAGENET_MEAN, IMAGENET_STD, device) for b in _cycle(loader, epoch))
        on_step = sink.log_step if sink is not None else None
        try:
            metrics = train_one_epoch(parts, batches, epoch, schedules, max_steps=steps, on_step=on_step,
                                      log_every=cfg.train.log_every)
        except DivergedLoss as err:
            where = checkpoint_dir or "none (it diverged in the first epoch)"
            raise DivergedLoss(f"{err}; run stopped, last good checkpoint: {where}") from None
        metrics.update(epoch_diagnostics(parts, monitor, epoch, sink, cfg.eval.knn_every))
        metrics["epoch"] = epoch
        measured = carry_forward(metrics, history)
        history["last"] = dict(metrics)
        checkpoint_dir = ckpts.save(parts, epoch, history)
        if sink is not None:
            sink.log_epoch(epoch, measured)
        if on_epoch is not None:
            on_epoch(epoch, dict(metrics))
    if not checkpoint_dir:
        raise UserError(f"nothing to do: '{out_dir}' already holds a checkpoint of all {cfg.optim.epochs} epochs")
    return PretrainResult(str(Path(checkpoint_dir)), metrics)


def _cycle(loader, epoch: int):
    """Batches of ``epoch``; when ``steps_per_epoch`` exceeds one pass, continue with fresh shuffles."""
    sub = 0
    while True:
        empty = True
        for batch in loader.epoch(epoch * 1000 + sub):
            empty = False
            yield batch
        if empty:
            return
        sub += 1
