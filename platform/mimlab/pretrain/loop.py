"""Pure helpers of the one training function (:func:`mimlab.runtime.train._train_fn`): the result type, the metric
sink protocol, the per-epoch k-NN/attention diagnostics and the per-batch class count. No Ray, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch


@dataclass
class PretrainResult:
    """The final checkpoint (``checkpoint_dir``: a local folder ``load_model`` reads) and the last epoch's
    metrics (``knn_top1``, ``knn_top1_init``, losses, ``batch_classes``)."""

    checkpoint_dir: str
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint_uri: str | None = None  # where the store keeps it (``s3://…`` or a folder); a local copy is above


class MetricSink(Protocol):
    """Where metrics go (MLflow on rank 0, nothing elsewhere)."""

    def log_step(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...
    def log_image(self, key: str, image: np.ndarray, step: int) -> None: ...


def resolve_config(cfg: Any):
    """Accept a :class:`PretrainConfig`, a dict or a YAML path."""
    from mimlab.config.pretrain import PretrainConfig, load_pretrain_config

    return cfg if isinstance(cfg, PretrainConfig) else load_pretrain_config(cfg)


def epoch_diagnostics(parts, monitor, epoch: int, sink: MetricSink | None, every: int) -> dict[str, float]:
    """k-NN every ``every`` epochs (and at the last), and at the same epochs (every epoch when k-NN is off) the
    three probe pictures logged to ``sink``: ``cls_attention``, ``patch_pca`` and the strategy's ``masks``."""
    import torch

    from mimlab.pretrain.pictures import probe_pictures

    out: dict[str, float] = {}
    if monitor is None:
        return out
    last = epoch == parts.cfg.optim.epochs - 1
    knn_epoch = every > 0 and ((epoch + 1) % every == 0 or last)
    if knn_epoch:
        top1 = monitor.knn_top1(parts.teacher)
        if top1 is not None:
            out["knn_top1"] = top1
    if sink is not None and len(monitor.probes) and (knn_epoch or every <= 0):
        # a fixed generator: the masks panel shows the same draw every epoch, so changes are the model's
        pictures = probe_pictures(parts.teacher, monitor.probes, parts.masking,
                                  torch.Generator().manual_seed(parts.cfg.train.seed))
        for key, image in pictures.items():
            sink.log_image(key, image, epoch)
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


class BatchClasses:
    """Mean number of distinct labels per training batch (``batch_classes``): 1-2 means a class-sorted stream.

    :meth:`see` passes each batch through unchanged; batches with any label < 0 (unlabelled data) are not counted.
    """

    def __init__(self) -> None:
        self.counts: list[int] = []

    def see(self, batch: dict[str, Any]) -> dict[str, Any]:
        labels = batch.get("label")
        if labels is not None:
            labels = torch.as_tensor(labels).reshape(-1)  # [B]
            if labels.numel() and bool((labels >= 0).all()):
                self.counts.append(int(torch.unique(labels).numel()))
        return batch

    def mean(self, steps: int | None = None) -> float | None:
        """Mean over the first ``steps`` batches (the engine may pull one batch past its last step)."""
        counts = self.counts[:steps] if steps is not None else self.counts
        return float(np.mean(counts)) if counts else None
