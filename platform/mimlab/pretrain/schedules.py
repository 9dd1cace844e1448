"""Per-iteration and per-epoch schedules of iBOT (methods-spec §4.4), as plain numpy arrays indexed by step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def cosine_schedule(base: float, final: float, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0,
                    start_warmup: float = 0.0) -> np.ndarray:
    """Linear warm-up from ``start_warmup`` to ``base`` over ``warmup_epochs`` (per iteration, endpoints included),
    then a half-cosine from ``base`` to ``final`` over the remaining iterations.

    Returns:
        float64 ``[epochs * steps_per_epoch]``.
    """
    total = epochs * steps_per_epoch
    warm = min(warmup_epochs * steps_per_epoch, total)
    ramp = np.linspace(start_warmup, base, warm) if warm > 0 else np.zeros(0)
    rest = np.arange(total - warm)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * rest / max(1, len(rest))))
    return np.concatenate([ramp, cos])


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """``linspace(warmup_temp, temp, warmup_epochs)`` then constant ``temp``; float64 ``[epochs]``."""
    warm = np.linspace(warmup_temp, temp, warmup_epochs)
    return np.concatenate([warm, np.full(max(0, epochs - warmup_epochs), temp)])[:epochs]


def scaled_lr(lr: float, batch_size_per_worker: int, world_size: int) -> float:
    """Linear batch scaling: ``lr * global_batch / 256``."""
    return lr * batch_size_per_worker * world_size / 256.0


@dataclass(frozen=True)
class Schedules:
    """Every schedule of one run. ``lr``/``wd``/``momentum`` per iteration, temperatures per epoch."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    teacher_patch_temp: np.ndarray
    steps_per_epoch: int

    @classmethod
    def from_config(cls, cfg, steps_per_epoch: int, world_size: int) -> Schedules:
        """Build from a :class:`~mimlab.config.pretrain.PretrainConfig`."""
        o, l = cfg.optim, cfg.loss
        e = o.epochs
        return cls(
            lr=cosine_schedule(scaled_lr(o.lr, o.batch_size_per_worker, world_size), o.min_lr, e, steps_per_epoch,
                               o.warmup_epochs),
            wd=cosine_schedule(o.weight_decay, o.weight_decay_end, e, steps_per_epoch),
            momentum=cosine_schedule(o.momentum_teacher, 1.0, e, steps_per_epoch),
            teacher_temp=teacher_temp_schedule(l.warmup_teacher_temp, l.teacher_temp,
                                               l.warmup_teacher_temp_epochs, e),
            teacher_patch_temp=teacher_temp_schedule(l.warmup_teacher_patch_temp, l.teacher_patch_temp,
                                                     l.warmup_teacher_temp_epochs, e),
            steps_per_epoch=steps_per_epoch,
        )

    def at(self, epoch: int, step: int) -> dict[str, float]:
        """Values for iteration ``epoch * steps_per_epoch + step`` (clamped to the last one)."""
        it = min(epoch * self.steps_per_epoch + step, len(self.lr) - 1)
        ep = min(epoch, len(self.teacher_temp) - 1)
        return {"lr": float(self.lr[it]), "wd": float(self.wd[it]), "momentum": float(self.momentum[it]),
                "teacher_temp": float(self.teacher_temp[ep]),
                "teacher_patch_temp": float(self.teacher_patch_temp[ep])}
