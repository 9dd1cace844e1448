"""Linear probing of frozen features (DINO / iBOT ``eval_linear`` protocol), pure tensors.

A single ``nn.Linear`` (weights N(0, 0.01), bias 0) on the concatenated [cls] of the last blocks; SGD with momentum
0.9 and no weight decay; lr = ``base_lr × batch / 256``; cosine annealing to 0 over the epochs, stepped once per
epoch; validation after every epoch. The reported number is the best val top-1 over epochs (selection on val, as
in the references — say so in reports).

Two ways to feed the train split:

* **cached** — :func:`train_linear_probe` with a feature tensor: features extracted once (eval transform, no
  augmentation), shuffled minibatches of a full-batch tensor. Fast; results are labelled ``cached-features``.
* **augmented** — :func:`fit_linear` with ``train_batches(epoch)``, a callable yielding ``(features, labels)`` for
  that epoch (random-resized-crop + flip through the frozen backbone; see :mod:`mimlab.evaluation.api`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from mimlab.errors import UserError

TrainBatches = Callable[[int], Iterable[tuple[Tensor, Tensor]]]


@dataclass
class ProbeResult:
    """Outcome of a linear probe. Epochs are 1-based; accuracies are percentages."""

    curve: list[float]
    """val top-1 after each epoch."""
    curve_top5: list[float]
    train_loss: list[float]
    lr_per_epoch: list[float]
    """the lr used during each epoch (cosine, stepped per epoch)."""
    best_epoch: int
    best_top1: float
    lr: float
    batch_size: int
    cached_features: bool
    reach: float | None = None
    reach_epoch: int | None = None
    """first epoch whose val top-1 is >= ``reach`` (``None``: never reached or no target)."""
    extra: dict = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return "cached-features (no augmentation)" if self.cached_features else "augmented (RRC + flip)"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mode"] = self.mode
        return out


def epochs_to_reach(curve: list[float], target: float) -> int | None:
    """First 1-based epoch whose accuracy is at or above ``target``; ``None`` if never."""
    for epoch, acc in enumerate(curve, start=1):
        if acc >= target:
            return epoch
    return None


def best_of(curve: list[float]) -> tuple[int, float]:
    """``(best 1-based epoch, best value)``; the earliest epoch wins ties."""
    if not curve:
        raise ValueError("empty curve")
    best = max(range(len(curve)), key=lambda i: (curve[i], -i))
    return best + 1, curve[best]


def make_probe(dim: int, num_classes: int, seed: int = 0) -> nn.Linear:
    """``nn.Linear(dim, num_classes)`` initialised as in the references: N(0, 0.01) weights, zero bias."""
    gen = torch.Generator().manual_seed(seed)
    probe = nn.Linear(dim, num_classes)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(num_classes, dim, generator=gen) * 0.01)
        probe.bias.zero_()
    return probe


@torch.no_grad()
def accuracy(probe: nn.Module, features: Tensor, labels: Tensor, batch: int = 8192) -> tuple[float, float]:
    """Top-1 and top-5 (%) of ``probe`` on ``features [N, D]`` with ``labels [N]``."""
    hit1 = hit5 = 0
    for start in range(0, features.shape[0], batch):
        logits = probe(features[start:start + batch])  # [b,C]
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # [b,5]
        correct = top.eq(labels[start:start + batch, None])
        hit1 += int(correct[:, 0].sum())
        hit5 += int(correct.any(1).sum())
    n = max(features.shape[0], 1)
    return 100.0 * hit1 / n, 100.0 * hit5 / n


def _check(dim: int, val_features: Tensor, val_labels: Tensor | None, epochs: int) -> None:
    if val_labels is None:
        raise UserError("linear probe needs labels for the val split; the data has none")
    if val_features.ndim != 2 or val_features.shape[1] != dim:
        raise UserError(
            f"linear probe feature-dimension mismatch: train features are {dim}-d but val features are "
            f"{tuple(val_features.shape)}")
    if val_labels.numel() and int(val_labels.min()) < 0:
        raise UserError("linear probe: the val split has images without a label (label < 0)")
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1; got {epochs}")


def fit_linear(
    train_batches: TrainBatches,
    val_features: Tensor,
    val_labels: Tensor,
    *,
    dim: int,
    num_classes: int,
    epochs: int = 100,
    batch_size: int = 1024,
    base_lr: float = 0.003,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    reach: float | None = None,
    cached_features: bool = False,
    seed: int = 0,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> tuple[nn.Linear, ProbeResult]:
    """Train a linear probe from per-epoch train batches and validate after every epoch.

    Args:
        train_batches: ``epoch (0-based) -> iterable of (features [b, dim], labels [b])``.
        val_features: ``[Nval, dim]`` (eval transform, fixed).
        val_labels: ``[Nval]``.
        dim: feature dimension (e.g. 4 × 384 = 1536 for ViT-S).
        num_classes: C.
        epochs: cosine schedule length; validation after each.
        batch_size: the batch the lr is scaled with (``lr = base_lr × batch_size / 256``).
        base_lr, momentum, weight_decay: SGD settings (references: 0.003, 0.9, 0).
        reach: report the first epoch with val top-1 >= this (%).
        cached_features: label the result as a cached-features run.
        seed: classifier initialisation seed.
        on_epoch: called as ``on_epoch(epoch 1-based, val_top1, train_loss)``.

    Returns:
        ``(trained probe, ProbeResult)``.
    """
    _check(dim, val_features, val_labels, epochs)
    val_labels = val_labels.long()
    probe = make_probe(dim, num_classes, seed)
    lr = base_lr * batch_size / 256.0
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=0.0)
    loss_fn = nn.CrossEntropyLoss()
    curve: list[float] = []
    curve5: list[float] = []
    losses: list[float] = []
    lrs: list[float] = []
    for epoch in range(epochs):
        probe.train()
        lrs.append(opt.param_groups[0]["lr"])
        total, count = 0.0, 0
        for feats, labels in train_batches(epoch):
            if feats.shape[1] != dim:
                raise UserError(f"linear probe feature-dimension mismatch: expected {dim}-d, got {feats.shape[1]}")
            loss = loss_fn(probe(feats), labels.long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * feats.shape[0]
            count += feats.shape[0]
        sched.step()
        probe.eval()
        top1, top5 = accuracy(probe, val_features, val_labels)
        curve.append(top1)
        curve5.append(top5)
        losses.append(total / max(count, 1) if count else math.nan)
        if on_epoch is not None:
            on_epoch(epoch + 1, top1, losses[-1])
    best_epoch, best_top1 = best_of(curve)
    result = ProbeResult(
        curve=curve, curve_top5=curve5, train_loss=losses, lr_per_epoch=lrs, best_epoch=best_epoch, best_top1=best_top1, lr=lr,
        batch_size=batch_size, cached_features=cached_features, reach=reach,
        reach_epoch=epochs_to_reach(curve, reach) if reach is not None else None)
    return probe, result


def shuffled_batches(features: Tensor, labels: Tensor, batch_size: int, seed: int = 0) -> TrainBatches:
    """Per-epoch shuffled minibatches of full-batch tensors (the cached-features train feed)."""

    def batches(epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(features.shape[0], generator=gen)
        for start in range(0, features.shape[0], batch_size):
            idx = perm[start:start + batch_size]
            yield features[idx], labels[idx]

    return batches


def train_linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    *,
    epochs: int = 100,
    batch_size: int = 1024,
    base_lr: float = 0.003,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    num_classes: int | None = None,
    reach: float | None = None,
    seed: int = 0,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> ProbeResult:
    """Linear probe on cached features (extracted once, no augmentation): the fast path for sweeps.

    The minibatch is ``min(batch_size, Ntrain)`` and the lr is scaled with that batch.

    Args:
        train_features: ``[Ntrain, D]``.
        train_labels: ``[Ntrain]``.
        val_features: ``[Nval, D]``.
        val_labels: ``[Nval]``.
        num_classes: C; ``None`` = 1 + the largest label seen.
        Other arguments as in :func:`fit_linear`.

    Returns:
        :class:`ProbeResult` with ``cached_features=True``.
    """
    if train_labels is None:
        raise UserError("linear probe needs labels for the train split; the data has none")
    if train_features.ndim != 2 or train_labels.shape != (train_features.shape[0],):
        raise UserError(
            f"linear probe train features must be [N, D] with labels [N]; got {tuple(train_features.shape)} "
            f"and {tuple(train_labels.shape)}")
    if train_features.shape[0] == 0:
        raise UserError("linear probe: the train split is empty")
    if int(train_labels.min()) < 0:
        raise UserError("linear probe: the train split has images without a label (label < 0)")
    train_labels = train_labels.long()
    if num_classes is None:
        num_classes = int(max(train_labels.max(), val_labels.max() if val_labels is not None and
                              val_labels.numel() else 0)) + 1
    batch = min(batch_size, train_features.shape[0])
    _, result = fit_linear(
        shuffled_batches(train_features, train_labels, batch, seed), val_features, val_labels,
        dim=train_features.shape[1], num_classes=num_classes, epochs=epochs, batch_size=batch, base_lr=base_lr,
        momentum=momentum, weight_decay=weight_decay, reach=reach, cached_features=True, seed=seed,
        on_epoch=on_epoch)
    return result
