"""Device handling (skipped without CUDA): masks follow the captured tensors' device and equal the CPU masks for the
same generator; the contrastive term runs under bf16 autocast and reaches the student."""

from __future__ import annotations

import pytest
import torch

from mimlab.masking import MASKING, build_masking
from mimlab.pretrain.contrastive import DenseContrastive

from .conftest import DEPTH, GRID, FakeCapture, make_capture
from .test_masking_contract import EXAMPLES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _to(cap, device, dtype=None):
    move = {s: {l: t.to(device=device, dtype=dtype or t.dtype) for l, t in getattr(cap, s).items()}
            for s in ("attn", "logits", "keys")}
    return FakeCapture(move["attn"], move["logits"], move["keys"], cap.num_prefix_tokens)


@pytest.mark.parametrize("name", MASKING.names())
@pytest.mark.parametrize("gen_device", ["cpu", "cuda"])
def test_cuda_capture_gives_cuda_masks_equal_to_cpu(name, gen_device):
    masking = build_masking({"strategy": EXAMPLES[name]}, num_global_crops=1, depth=DEPTH)
    cap = make_capture(64, seed=1)
    gpu_cap = _to(cap, "cuda")
    cpu = masking(0, 64, GRID, cap if masking.needs_attention else None,
                  torch.Generator(device=gen_device).manual_seed(5))
    gpu = masking(0, 64, GRID, gpu_cap, torch.Generator(device=gen_device).manual_seed(5))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.bool
    if gen_device == "cpu":
        assert torch.equal(cpu.cpu(), gpu.cpu())


def test_half_precision_capture_selects_like_fp32():
    masking = build_masking({"strategy": "attmask-raw:layer=2", "prob": 1.0, "ratio_mode": "fixed",
                             "fixed_ratio": 0.25}, num_global_crops=1, depth=DEPTH)
    cap = make_capture(32, seed=2)
    masks = masking(0, 32, GRID, _to(cap, "cuda", torch.bfloat16), torch.Generator().manual_seed(0))
    assert masks.device.type == "cuda" and (masks.sum(1) == 16).all()


def test_contrastive_bf16_autocast_gradient_on_cuda():
    student = torch.randn(2, 4, 64, 32, device="cuda", requires_grad=True)
    scores = torch.rand(2, 4, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = DenseContrastive(k=3, tau=0.2)(student, None, scores)
    loss.backward()
    assert torch.isfinite(loss) and student.grad.abs().sum() > 0
