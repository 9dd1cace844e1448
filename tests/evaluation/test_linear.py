"""Linear probe core: learns a separable problem, curve/best/reach consistent, schedule as specified."""

from __future__ import annotations

import math

import pytest
import torch

from mimlab.errors import UserError
from mimlab.evaluation.linear import (
    best_of,
    epochs_to_reach,
    fit_linear,
    shuffled_batches,
    train_linear_probe,
)


def _separable(n_per_class=40, classes=4, dim=48, seed=0):
    """LayerNorm-like features (unit variance per element) with class-dependent means: linearly separable."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, dim, generator=g)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = means[y] + 0.3 * torch.randn(len(y), dim, generator=g)
    return x, y


def test_learns_separable_problem_with_default_recipe():
    tr_x, tr_y = _separable(seed=0)
    va_x, va_y = _separable(n_per_class=20, seed=0)  # same means (same seed), fresh noise below
    va_x = va_x + 0.3 * torch.randn(va_x.shape, generator=torch.Generator().manual_seed(9))
    res = train_linear_probe(tr_x, tr_y, va_x, va_y, epochs=30, batch_size=32, reach=99.0)
    assert res.best_top1 == 100.0
    assert res.curve[-1] >= 99.0
    assert res.cached_features and "cached" in res.mode
    # curve / best / reach are consistent with each other
    assert len(res.curve) == 30 and len(res.curve_top5) == 30 and len(res.train_loss) == 30
    assert res.curve[res.best_epoch - 1] == res.best_top1 == max(res.curve)
    assert res.reach_epoch is not None and res.curve[res.reach_epoch - 1] >= 99.0
    assert all(a < 99.0 for a in res.curve[:res.reach_epoch - 1])
    assert res.train_loss[-1] < res.train_loss[0]
    assert res.lr == pytest.approx(0.003 * 32 / 256)


def test_reach_never_and_helpers():
    assert epochs_to_reach([10.0, 50.0, 57.1, 60.0], 57.1) == 3
    assert epochs_to_reach([10.0, 50.0], 57.1) is None
    assert best_of([1.0, 3.0, 3.0, 2.0]) == (2, 3.0)  # earliest epoch wins ties
    x, y = _separable(n_per_class=5)
    res = train_linear_probe(x, y, x, y, epochs=2, reach=101.0)
    assert res.reach_epoch is None and res.reach == 101.0


def test_cosine_schedule_and_optimizer_settings():
    """lr after each epoch follows base_lr·B/256·(1+cos(pi·e/E))/2 (closed form, stepped per epoch)."""
    x, y = _separable(n_per_class=8)
    lrs = []
    seen = {}

    def batches(epoch):
        seen.setdefault(epoch, 0)
        for xb, yb in shuffled_batches(x, y, 16, seed=0)(epoch):
            seen[epoch] += len(yb)
            yield xb, yb

    probe, res = fit_linear(batches, x, y, dim=x.shape[1], num_classes=4, epochs=4, batch_size=16,
                            on_epoch=lambda e, acc, loss: lrs.append((e, acc)))
    assert [e for e, _ in lrs] == [1, 2, 3, 4]
    assert [acc for _, acc in lrs] == res.curve
    assert seen == {0: 32, 1: 32, 2: 32, 3: 32}  # every sample once per epoch
    assert isinstance(probe, torch.nn.Linear) and probe.weight.shape == (4, x.shape[1])
    base = 0.003 * 16 / 256
    assert res.lr == pytest.approx(base)
    assert res.lr_per_epoch == pytest.approx([base * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])


def test_shuffling_is_seeded_and_differs_per_epoch():
    x = torch.arange(20.0)[:, None]
    y = torch.zeros(20, dtype=torch.long)
    b = shuffled_batches(x, y, 20, seed=0)
    e0 = next(iter(b(0)))[0].flatten().tolist()
    assert e0 == next(iter(b(0)))[0].flatten().tolist()
    assert e0 != next(iter(b(1)))[0].flatten().tolist()
    assert sorted(e0) == list(range(20))


@pytest.mark.parametrize("case, match", [("dim", "dimension mismatch"), ("nolabels", "needs labels"),
                                         ("epochs", "--epochs")])
def test_bad_input(case, match):
    x, y = _separable(n_per_class=5)
    vx, vy = x, y
    epochs = 1
    if case == "dim":
        vx = x[:, :10]
    if case == "nolabels":
        vy = None
    if case == "epochs":
        epochs = 0
    with pytest.raises(UserError, match=match):
        train_linear_probe(x, y, vx, vy, epochs=epochs)
