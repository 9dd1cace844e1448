import pytest
import torch

from mimlab.pretrain.build import build_parts
from mimlab.pretrain.engine import DivergedLoss, teacher_and_masks, train_step
from mimlab.pretrain.schedules import Schedules

from .helpers import micro_cfg, random_crops


def _count_forwards(module):
    calls = []
    module.patch_embed.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    return calls


@pytest.mark.parametrize("strategy", ["attmask-high", ["attmask-raw:layer=2", "attmask-raw:layer=1"],
                                      "attmask-rollout:layers=1-2"])
def test_teacher_runs_once_per_step_with_attention_guided_masks(strategy):
    cfg = micro_cfg(strategy=strategy)
    parts = build_parts(cfg)
    assert parts.masking.needs_attention
    calls = _count_forwards(parts.teacher)
    sched = Schedules.from_config(cfg, 2, 1)
    for step in range(2):
        train_step(parts, random_crops(cfg, seed=step), 0, sched.at(0, step))
    assert calls == [2 * 4, 2 * 4]  # one forward per step, on both global crops (G*B rows) at once


def test_masks_follow_the_teachers_attention():
    cfg = micro_cfg("masking.ratio_mode=fixed", "masking.fixed_ratio=0.25", strategy="attmask-high")
    parts = build_parts(cfg)
    crops = random_crops(cfg)
    _, masks, views = teacher_and_masks(parts, crops)
    assert masks.shape == (8, 16) and masks.sum(1).eq(4).all()
    last = max(views[0].attn)
    for q in range(2):
        cls_attn = views[q].attn[last][:, :, 0, 1:].mean(1)  # [B,H,T,T] -> [B,Np]
        top = cls_attn.topk(4, dim=1).indices
        rows = masks[q * 4:(q + 1) * 4]
        assert rows.gather(1, top).all()  # exactly the 4 most-attended patches of that crop


def test_block_masking_skips_the_capture():
    cfg = micro_cfg(strategy="block")
    parts = build_parts(cfg)
    _, masks, views = teacher_and_masks(parts, random_crops(cfg))
    assert views is None and masks.dtype == torch.bool


def test_last_layer_frozen_in_epoch_zero_only():
    cfg = micro_cfg("optim.freeze_last_layer=1")
    parts = build_parts(cfg)
    head = parts.raw_student.head
    sched = Schedules.from_config(cfg, 2, 1)
    before = head.last_layer.weight_v.detach().clone()
    mlp_before = head.mlp[0].weight.detach().clone()
    train_step(parts, random_crops(cfg), 0, sched.at(0, 1))
    torch.testing.assert_close(head.last_layer.weight_v, before)
    assert not torch.equal(head.mlp[0].weight, mlp_before)
    train_step(parts, random_crops(cfg), 1, sched.at(1, 0))
    assert not torch.equal(head.last_layer.weight_v, before)


def test_nan_loss_stops_before_touching_the_weights():
    cfg = micro_cfg()
    parts = build_parts(cfg)
    sched = Schedules.from_config(cfg, 2, 1)
    before = [p.detach().clone() for p in parts.raw_student.parameters()]
    crops = random_crops(cfg)
    crops.global_crops[0, 0, 0, 0] = float("nan")
    with pytest.raises(DivergedLoss, match="diverged"):
        train_step(parts, crops, 0, sched.at(0, 1))
    for b, p in zip(before, parts.raw_student.parameters()):
        assert torch.equal(b, p)


def test_teacher_follows_student_by_ema():
    cfg = micro_cfg("optim.momentum_teacher=0.5")
    parts = build_parts(cfg)
    sched = Schedules.from_config(cfg, 2, 1)
    values = sched.at(0, 1)
    t0 = parts.teacher.blocks[0].attn.qkv.weight.detach().clone()
    train_step(parts, random_crops(cfg), 0, values)
    s1 = parts.raw_student.encoder.backbone.blocks[0].attn.qkv.weight.detach()
    m = values["momentum"]
    torch.testing.assert_close(parts.teacher.blocks[0].attn.qkv.weight, m * t0 + (1 - m) * s1)


def test_contrastive_term_trains_the_student():
    cfg = micro_cfg("contrastive.k=2", strategy="attmask-high")
    parts = build_parts(cfg)
    out = train_step(parts, random_crops(cfg), 1, Schedules.from_config(cfg, 2, 1).at(1, 0))
    assert "loss_contrastive" in out and torch.isfinite(out["loss_contrastive"])
