"""Bad input gives one clear UserError naming the cause; the pydantic config section and a real teacher capture work."""

from __future__ import annotations

import pytest
import torch

from mimlab.errors import UserError
from mimlab.masking import build_masking

from .conftest import DEPTH, GRID, N, make_capture


@pytest.mark.parametrize(("section", "crops", "message"), [
    ({"strategy": "atmask-high"}, 2, "unknown masking strategy 'atmask-high' (did you mean 'attmask-high'?)"),
    ({"strategy": "attmask-raw:lyer=3"}, 2, "has no key 'lyer' (did you mean 'layer'?)"),
    ({"strategy": "attmask-raw:layer=5"}, 2, "layer 5 is outside 1..4"),
    ({"strategy": "attmask-raw:layer=0"}, 2, "layer 0 is outside 1..4 (layers are 1-based"),
    ({"strategy": "attmask-rollout:layers=3-7"}, 2, "layers 7 is outside 1..4"),
    ({"strategy": "attmask-rollout:order=up"}, 2, "order must be one of descending, ascending"),
    ({"strategy": "attmask-pow"}, 2, "needs a power p > 0"),
    ({"strategy": "attmask-pow:p=x"}, 2, "key 'p' must be a number"),
    ({"strategy": "attmask-hint:show_max=2"}, 2, "show_max must be in [0, 1]"),
    ({"strategy": ["attmask-raw:layer=4", "attmask-raw:layer=2"]}, 3, "lists 2 strategies but there are 3 global crops"),
    ({"strategy": 3}, 2, "masking.strategy must be a spec string or a list"),
    ({"strategy": "block", "probability": 0.5}, 2, "masking: unknown key 'probability'"),
    ({"strategy": "block", "prob": 1.5}, 2, "masking.prob must be a probability in [0, 1]"),
    ({"strategy": "block", "ratio": [0.5, 0.1]}, 2, "masking.ratio must be [low, high]"),
    ({"strategy": "block", "ratio_mode": "per_images"}, 2, "masking.ratio_mode must be one of"),
    ({"strategy": "block", "ratio_mode": "fixed"}, 2, "masking.fixed_ratio must be a number in [0, 1]"),
    ({"strategy": "attmask-from"}, 2, "needs an explainer spec"),
    ({"strategy": "attmask-from:gradcam"}, 2, "'gradcam' is not a gradient-free attention-family explainer"),
    ({"strategy": "attmask-from:tibav"}, 2, "'tibav' is not a gradient-free attention-family explainer"),
    ({"strategy": "attmask-from:raw:layer=9"}, 2, "layer 9 is outside 1..4"),
    ({"strategy": "attmask-from:rawstar"}, 2, "unknown method 'rawstar'"),
])
def test_bad_input_is_one_clear_user_error(section, crops, message):
    with pytest.raises(UserError) as err:
        build_masking(section, num_global_crops=crops, depth=DEPTH)
    text = str(err.value)
    assert message in text
    assert "\n" not in text
    if "strategy" in message or "layer" in message or "key 'p'" in message:
        assert text.startswith("masking.strategy")


def test_pydantic_masking_section_builds_the_per_crop_strategy():
    from mimlab.config.pretrain import MaskingConfig

    section = MaskingConfig(strategy=["attmask-raw:layer=4", "attmask-log:layer=2"], ratio_mode="per_batch")
    masking = build_masking(section, num_global_crops=2, depth=DEPTH)
    assert masking.layers == (1, 3) and masking.needs_logits and not masking.needs_keys
    assert masking.params.ratio_mode == "per_batch"


def test_attmask_from_reads_the_explainer_score():
    cap = make_capture(4, seed=2)
    fixed = {"prob": 1.0, "ratio_mode": "fixed", "fixed_ratio": 0.25}
    keys = build_masking({"strategy": "attmask-from:keys-norm:layer=2", **fixed}, num_global_crops=1, depth=DEPTH)
    assert keys.layers == (1,) and keys.needs_keys and not keys.needs_logits
    masks = keys(0, 4, GRID, cap, torch.Generator())
    norms = cap.keys[1].mean(1).norm(dim=-1)[:, 1:]  # [B,H,T,D] -> [B,T] -> [B,N]: ‖mean_h k‖, thesis §3.1
    assert torch.equal(masks, torch.zeros_like(masks).scatter_(1, norms.topk(16, dim=1).indices, True))
    # raw-log through the explainer ranks exactly like the native attmask-log
    via = build_masking({"strategy": "attmask-from:raw-log", **fixed}, num_global_crops=1, depth=DEPTH)
    native = build_masking({"strategy": "attmask-log", **fixed}, num_global_crops=1, depth=DEPTH)
    assert torch.equal(via(0, 4, GRID, cap, torch.Generator()), native(0, 4, GRID, cap, torch.Generator()))


@pytest.fixture(scope="module")
def tiny_vit():
    from tiny_assets import tiny_vit as build

    return build(patch_size=4, depth=DEPTH, num_classes=0)


def test_real_teacher_capture_one_forward(tiny_vit):
    from mimlab.models.capture import AttentionCapture

    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    strategies = ["attmask-raw:layer=1", "attmask-from:head:layer=4,head=2"]
    masking = build_masking({"strategy": strategies, "prob": 1.0, "ratio_mode": "fixed", "fixed_ratio": 0.5},
                            num_global_crops=2, depth=DEPTH, model=tiny_vit)
    assert masking.layers == (0, 3)
    with torch.no_grad(), AttentionCapture(tiny_vit, layers=masking.layers, keys=masking.needs_keys,
                                           logits=masking.needs_logits) as cap:
        tiny_vit(images)
    assert cap.forwards == 1 and cap.grid == GRID
    gen = torch.Generator().manual_seed(0)
    first, second = masking(0, 6, cap.grid, cap, gen), masking(1, 6, cap.grid, cap, gen)
    assert first.shape == second.shape == (6, N) and (first.sum(1) == N // 2).all()
    cls0 = cap.attn[0][:, :, 0, 1:].mean(1)  # block 0 = 1-based layer 1: [B,H,T,T] -> [B,N]
    assert torch.equal(first, torch.zeros_like(first).scatter_(1, cls0.topk(N // 2, dim=1).indices, True))
    head2 = cap.attn[3][:, 1, 0, 1:]  # 1-based head 2 of the last block
    assert torch.equal(second, torch.zeros_like(second).scatter_(1, head2.topk(N // 2, dim=1).indices, True))


def test_head_explainer_without_model_says_what_to_pass():
    with pytest.raises(UserError, match="model=teacher"):
        build_masking({"strategy": "attmask-from:head:head=2"}, num_global_crops=1, depth=DEPTH)


def test_wrong_capture_is_a_loud_error():
    masking = build_masking({"strategy": "attmask-high"}, num_global_crops=1, depth=DEPTH)
    with pytest.raises(ValueError, match="needs the teacher's captured attention"):
        masking(0, 4, GRID, None, torch.Generator())
    with pytest.raises(ValueError, match="expected batch_size=5"):
        masking(0, 5, GRID, make_capture(4), torch.Generator())
    with pytest.raises(ValueError, match="grid"):
        masking(0, 4, (4, 4), make_capture(4), torch.Generator())


@pytest.mark.parametrize(("strategy", "line"), [
    ("attmask-raw:layer=5", "masking.strategy: masking strategy 'attmask-raw:layer=5': layer 5 is outside 1..4 "
                            "(layers are 1-based; the model has 4 blocks)"),
    ("attmask-rollout:layers=0-2", "masking.strategy: masking strategy 'attmask-rollout:layers=0-2': layers 0 is "
                                   "outside 1..4 (layers are 1-based; the model has 4 blocks)"),
    ("attmask-pow:p=0", "masking.strategy: masking strategy 'attmask-pow:p=0': needs a power p > 0 "
                        "(e.g. attmask-pow:p=0.5)"),
])
def test_error_line_names_the_spec_and_its_key(strategy, line):
    # the whole line, written by hand: which spec, which key, which value, what was expected
    with pytest.raises(UserError) as err:
        build_masking({"strategy": strategy}, num_global_crops=1, depth=DEPTH)
    assert str(err.value) == line


def test_wrong_capture_error_names_the_store_the_layer_and_both_counts():
    masking = build_masking({"strategy": "attmask-high"}, num_global_crops=1, depth=DEPTH)
    with pytest.raises(ValueError) as err:
        masking(0, 5, GRID, make_capture(4), torch.Generator())
    assert str(err.value) == "captured attn[3] has 4 images, expected batch_size=5"
    with pytest.raises(ValueError) as err:  # 8x8 grid + 1 cls token captured, a 4x4 grid asked for
        masking(0, 4, (4, 4), make_capture(4), torch.Generator())
    assert str(err.value) == "captured attn[3] has 64 patch tokens, but grid (4, 4) has 16"


@pytest.mark.parametrize("show_max", ["0", "1"])
def test_hint_show_max_accepts_both_ends_of_0_1(show_max):
    masking = build_masking({"strategy": f"attmask-hint:show_max={show_max}", "prob": 1.0, "ratio_mode": "fixed",
                             "fixed_ratio": 0.25}, num_global_crops=1, depth=DEPTH)
    high = build_masking({"strategy": "attmask-high", "prob": 1.0, "ratio_mode": "fixed", "fixed_ratio": 0.25},
                         num_global_crops=1, depth=DEPTH)
    cap = make_capture(6, seed=12)
    hint, plain = masking(0, 6, GRID, cap, torch.Generator().manual_seed(0)), high(0, 6, GRID, cap, torch.Generator())
    assert (hint <= plain).all()  # hints only ever unmask High's patches
    if show_max == "0":  # nothing may be revealed
        assert torch.equal(hint, plain)
