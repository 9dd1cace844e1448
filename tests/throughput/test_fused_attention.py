"""Fused attention wherever nothing reads it: same losses and masks as the all-explicit path, per strategy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mimlab.config.pretrain import load_pretrain_config
from mimlab.masking import MASKING
from mimlab.models.capture import AttentionCapture
from mimlab.models.vit import create_backbone, set_fused_attention
from mimlab.pretrain.build import build_parts
from mimlab.pretrain.engine import Crops, teacher_and_masks

DEPTH = 4
# One example spec per registered strategy (a new registration fails test_every_strategy_has_an_example).
EXAMPLES = {
    "block": "block",
    "random": "random",
    "attmask-high": "attmask-high",
    "attmask-low": "attmask-low",
    "attmask-hint": "attmask-hint",
    "attmask-raw": "attmask-raw:layer=2",
    "attmask-pow": "attmask-pow:p=0.5,layer=3",
    "attmask-log": "attmask-log",
    "attmask-rollout": "attmask-rollout:layers=2-4",
    "attmask-from": "attmask-from:raw-star:layer=3",
}


def _cfg(strategy):
    tree = {
        "model": {"timm_name": "vit_tiny_patch16_224", "drop_path": 0.0,
                  "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": DEPTH, "num_heads": 2}},
        "head": {"out_dim": 64, "hidden_dim": 48, "bottleneck_dim": 16},
        "crops": {"global_crops": 2, "global_size": 16, "local_crops": 2, "local_size": 8},
        "masking": {"strategy": strategy, "prob": 0.8},
        "loss": {"warmup_teacher_temp_epochs": 1},
        "optim": {"epochs": 2, "batch_size_per_worker": 6, "warmup_epochs": 1},
        "eval": {"knn_every": 0, "probe_images": 0},
    }
    return load_pretrain_config(tree, [])


def _sharpen(parts) -> None:
    """Scale q/k weights so the attention is far from uniform: at init every patch score is nearly equal and the
    ranking would hinge on the last float bit, which no kernel choice can promise."""
    with torch.no_grad():
        for model in (parts.teacher, parts.raw_student.encoder.backbone):
            for blk in model.blocks:
                blk.attn.qkv.weight.mul_(12.0)


def _step_outputs(parts, crops):
    t_out, masks, _ = teacher_and_masks(parts, crops)
    s_out = parts.student(crops.global_crops, crops.local_crops, masks)
    losses = parts.loss(s_out["cls"], s_out["patch"], t_out["cls"], t_out["patch"], masks, 0.04, 0.04)
    return masks, losses


def test_every_strategy_has_an_example():
    assert sorted(EXAMPLES) == MASKING.names()


@pytest.mark.parametrize("name", MASKING.names())
def test_fused_step_equals_all_explicit_step(name):
    cfg = _cfg(EXAMPLES[name])
    fused, explicit = build_parts(cfg), build_parts(cfg)  # same seed: same weights, same generator state
    for parts in (fused, explicit):
        _sharpen(parts)
    set_fused_attention(explicit.teacher, False)
    set_fused_attention(explicit.student, False)
    g = torch.Generator().manual_seed(3)
    crops = Crops(torch.randn(12, 3, 16, 16, generator=g), torch.randn(12, 3, 8, 8, generator=g), 6)
    masks_f, losses_f = _step_outputs(fused, crops)
    masks_e, losses_e = _step_outputs(explicit, crops)
    assert masks_f.any()  # the comparison is not vacuous
    assert torch.equal(masks_f, masks_e)
    for key in ("loss", "loss_cls", "loss_patch"):
        torch.testing.assert_close(losses_f[key], losses_e[key], rtol=1e-5, atol=1e-6)


def _count_sdpa(monkeypatch) -> list[int]:
    """Record the batch size of every fused-kernel call (timm's Attention calls F.scaled_dot_product_attention)."""
    calls: list[int] = []
    real = F.scaled_dot_product_attention

    def counting(q, *args, **kwargs):
        calls.append(q.shape[0])
        return real(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_capture_of_block_l_makes_only_block_l_explicit(layer, monkeypatch):
    torch.manual_seed(0)
    model = create_backbone("vit_tiny_patch16_224", fused_attention=True, img_size=16, patch_size=4, embed_dim=32,
                            depth=DEPTH, num_heads=2, num_classes=0)
    modes: list[bool] = []
    for blk in model.blocks:
        blk.attn.register_forward_pre_hook(lambda m, a: modes.append(bool(m.fused_attn)))
    calls = _count_sdpa(monkeypatch)
    with torch.no_grad(), AttentionCapture(model, layers=[layer], keys=False, logits=False) as cap:
        model(torch.randn(3, 3, 16, 16))
    assert modes == [l != layer for l in range(DEPTH)]
    assert len(calls) == DEPTH - 1
    assert sorted(cap.attn) == [layer]
    assert all(blk.attn.fused_attn for blk in model.blocks)  # restored on exit
    modes.clear()
    with torch.no_grad():
        model(torch.randn(3, 3, 16, 16))  # outside any capture: every block fused
    assert modes == [True] * DEPTH and len(calls) == 2 * DEPTH - 1


@pytest.mark.parametrize("strategy,explicit", [("block", ()), ("attmask-raw:layer=2", (1,)),
                                               ("attmask-rollout:layers=2-3", (1, 2))])
def test_training_step_runs_explicit_only_in_the_teacher_blocks_masking_reads(strategy, explicit, monkeypatch):
    parts = build_parts(_cfg(strategy))
    seen: dict[str, list[bool]] = {"teacher": [], "student": []}
    for who, model in (("teacher", parts.teacher), ("student", parts.raw_student.encoder.backbone)):
        for blk in model.blocks:
            blk.attn.register_forward_pre_hook(lambda m, a, who=who: seen[who].append(bool(m.fused_attn)))
    crops = Crops(torch.randn(12, 3, 16, 16), torch.randn(12, 3, 8, 8), 6)
    _step_outputs(parts, crops)
    assert seen["teacher"] == [l not in explicit for l in range(DEPTH)]  # one teacher forward
    assert seen["student"] == [True] * (2 * DEPTH)  # global and local forwards, all fused


@pytest.mark.parametrize("name", ["block", "attmask-raw"])
def test_teacher_logits_only_where_read_give_the_full_loss_and_centre(name):
    """The teacher's last layer at the masked rows and on the patch mean equals the full [G*B,Np,K] path."""
    cfg = _cfg(EXAMPLES[name])
    full, lean = build_parts(cfg), build_parts(cfg)
    crops = Crops(torch.randn(12, 3, 16, 16), torch.randn(12, 3, 8, 8), 6)
    t_full, masks_full, _ = teacher_and_masks(full, crops, all_patches=True)
    t_lean, masks_lean, _ = teacher_and_masks(lean, crops, all_patches=False)
    assert torch.equal(masks_full, masks_lean) and masks_full.any()
    assert t_lean["patch"].shape == (int(masks_full.sum()), 64) and t_lean["patch_mean"].shape == (12, 64)
    torch.testing.assert_close(t_lean["patch"], t_full["patch"][masks_full])
    s_out = full.student(crops.global_crops, crops.local_crops, masks_full)
    ref = full.loss(s_out["cls"], s_out["patch"], t_full["cls"], t_full["patch"], masks_full, 0.04, 0.04)
    got = full.loss(s_out["cls"], s_out["patch"], t_lean["cls"], t_lean["patch"], masks_full, 0.04, 0.04)
    torch.testing.assert_close(got["loss"], ref["loss"])
    full.loss.update_center(t_full["cls"], t_full["patch"])
    lean.loss.update_center(t_lean["cls"], t_lean["patch_mean"])
    torch.testing.assert_close(lean.loss.center2, full.loss.center2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lean.loss.center, full.loss.center)


def test_a_profiled_step_names_its_phases_and_the_two_heads():
    """bench/pretrain.py --step-profile reads these regions: every phase of the step appears once per step, and the
    teacher and student heads inside their phases (a renamed or lost region would silently empty its table)."""
    from torch.profiler import ProfilerActivity, profile

    from mimlab.pretrain.engine import train_step
    from mimlab.pretrain.schedules import Schedules

    cfg = _cfg("attmask-raw:layer=2")
    parts = build_parts(cfg)
    sched = Schedules.from_config(cfg, 4, 1)
    g = torch.Generator().manual_seed(3)
    crops = Crops(torch.randn(12, 3, 16, 16, generator=g), torch.randn(12, 3, 8, 8, generator=g), 6)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(2):
            train_step(parts, crops, 1, sched.at(1, i))
    counts = {e.key: e.count for e in prof.key_averages() if e.key.startswith("ibot.")}
    assert counts == {name: 2 for name in ("ibot.teacher_and_masks", "ibot.teacher_head", "ibot.student_forward",
                                           "ibot.student_head", "ibot.loss", "ibot.backward", "ibot.update")}
