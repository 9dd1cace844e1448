"""Dense contrastive term (methods-spec §6, §12 item 7): gradients reach the student; the legacy flags reproduce the
published code (zero gradient, B5a; broken formula, B5b)."""

from __future__ import annotations

import math

import pytest
import torch

from mimlab.errors import UserError
from mimlab.pretrain.contrastive import DenseContrastive, select_pairs


def _tiny_example():
    """G=2 crops, B=1, N=4 patches, D=2, k=1: crop 1 top patch (1,0), crop 2 top patch (0,1); negatives (1,0), (-1,0).

    Scores put the positive at patch 0 and the negative at patch 3 in both crops.
    """
    z = torch.zeros(2, 1, 4, 2)
    z[0, 0, 0] = torch.tensor([1.0, 0.0])  # positive, crop 1
    z[1, 0, 0] = torch.tensor([0.0, 1.0])  # positive, crop 2
    z[0, 0, 3] = torch.tensor([1.0, 0.0])  # negative, crop 1
    z[1, 0, 3] = torch.tensor([-1.0, 0.0])  # negative, crop 2
    z[:, :, 1:3] = torch.tensor([0.3, 0.7])  # the others, never picked
    scores = torch.tensor([[[0.9, 0.5, 0.4, 0.1]], [[0.8, 0.6, 0.3, 0.2]]])  # [G,B,N]
    return z, scores


def test_legacy_formula_matches_hand_computation():
    # By hand (τ = 0.5, P = 2 positives, B = 1): s⁺_12 = s⁺_21 = 0; anchor 1 vs negatives: s⁻ = (1, −1);
    # anchor 2 vs negatives: s⁻ = (0, 0).
    # B5b: [−0 + log(0 + e^2 + e^−2)] + [−0 + log(0 + 1 + 1)] = 2.0181503 + 0.6931472, divided by P·B = 2.
    expected = (math.log(math.exp(2) + math.exp(-2)) + math.log(2.0)) / 2
    z, scores = _tiny_example()
    loss = DenseContrastive(k=1, tau=0.5, weight=1.0, legacy_formula=True)(z, z, scores)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.3556487, rel=1e-6)


def test_intended_infonce_matches_hand_computation():
    # Standard InfoNCE on the same example: anchor 1: log(e^0 + e^2 + e^−2) − 0; anchor 2: log(1 + 1 + 1);
    # averaged over the P·(P−1)·B = 2 pairs; weight 2 doubles it.
    expected = 2.0 * (math.log(1 + math.exp(2) + math.exp(-2)) + math.log(3.0)) / 2
    z, scores = _tiny_example()
    loss = DenseContrastive(k=1, tau=0.5, weight=2.0)(z, z, scores)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def _random_inputs(seed=0, g=2, b=3, n=16, d=8, kdim=12):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(g, b, n, d, generator=gen, requires_grad=True)
    teacher = torch.softmax(torch.randn(g, b, n, kdim, generator=gen), dim=-1)
    scores = torch.rand(g, b, n, generator=gen)
    return student, teacher, scores


@pytest.mark.parametrize("legacy_formula", [False, True])
def test_gradient_reaches_student_by_default(legacy_formula):
    student, teacher, scores = _random_inputs()
    loss = DenseContrastive(k=3, tau=0.2, legacy_formula=legacy_formula)(student, teacher, scores)
    loss.backward()
    grad = student.grad
    assert grad is not None and grad.abs().sum() > 0
    # only the picked patches (top-3 and bottom-3 of each crop image) receive gradient
    pos, neg = select_pairs(scores, 3)
    picked = torch.zeros_like(scores, dtype=torch.bool)
    picked.scatter_(2, pos, True).scatter_(2, neg, True)
    touched = grad.abs().sum(-1) > 0  # [G,B,N,D] -> [G,B,N]
    assert torch.equal(touched & ~picked, torch.zeros_like(touched))
    assert touched[picked].all()


@pytest.mark.parametrize("flags", [{"legacy_teacher_nograd": True}, {"source": "teacher_probs"}])
def test_legacy_teacher_nograd_gives_exactly_zero_gradient(flags):
    student, teacher, scores = _random_inputs(seed=1)
    teacher.requires_grad_(True)  # even a teacher tensor that tracks grad is detached
    loss = DenseContrastive(k=2, tau=0.2, legacy_formula=True, **flags)(student, teacher, scores)
    assert torch.isfinite(loss) and loss.item() != 0.0
    assert not loss.requires_grad
    total = loss + (student * 0).sum()  # as in a training step: other terms keep the graph alive
    total.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_scores_pick_positives_and_negatives_stably():
    scores = torch.tensor([[[0.5, 0.9, 0.9, 0.1, 0.1]]])
    pos, neg = select_pairs(scores, 2)
    assert pos.tolist() == [[[1, 2]]]  # tie 0.9/0.9 -> lower index first
    assert neg.tolist() == [[[3, 4]]]


def test_bad_configuration_is_a_user_error():
    with pytest.raises(UserError, match="contrastive.k"):
        DenseContrastive(k=0)
    with pytest.raises(UserError, match="contrastive.source"):
        DenseContrastive(source="teacher")
    with pytest.raises(UserError, match="contrastive: unknown key 'temp'"):
        DenseContrastive.from_config({"k": 3, "temp": 0.1})
    student, teacher, scores = _random_inputs(n=4)
    with pytest.raises(UserError, match="2k=6"):
        DenseContrastive(k=3)(student, teacher, scores)
