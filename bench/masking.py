"""Benchmark: batch-vectorised masking vs per-image Python loops (the reference implementations' shape).

Prints, per case, the median time of our strategy and of a per-image reference measured in the same run, and the
ratio. The references are written here, straightforwardly, as the published code loops: BEiT block growth one image
at a time (Python ``random``), and thesis selection (score, top-k, coin flip) one image at a time. On a CUDA machine
it also checks that masks computed from GPU captures equal those from CPU captures (same generator) and times the
dense contrastive term forward+backward.

    .venv/bin/python bench/masking.py [--repeats 7] [--batch 256]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from types import SimpleNamespace

import torch

from mimlab.masking import build_masking
from mimlab.pretrain.contrastive import DenseContrastive


def _median_time(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reference_block(batch: int, grid=(14, 14), prob=0.5, ratio=(0.1, 0.5), seed=0) -> torch.Tensor:
    """Per-image BEiT/iBOT block-wise generator (methods-spec §4.6), one image at a time."""
    rng = random.Random(seed)
    h, w = grid
    out = torch.zeros(batch, h, w, dtype=torch.bool)
    low = (min(h, w) // 3) ** 2
    for b in range(batch):
        r = rng.uniform(*ratio) if rng.random() < prob else 0.0
        target = r * h * w
        mask = [[False] * w for _ in range(h)]
        count = 0
        while count < target:
            budget = target - count
            delta = 0
            for _ in range(10):
                area = rng.uniform(low, budget)
                aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
                bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
                if bh < h and bw < w:
                    top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
                    new = sum(not mask[i][j] for i in range(top, top + bh) for j in range(left, left + bw))
                    if 0 < new <= budget:
                        for i in range(top, top + bh):
                            for j in range(left, left + bw):
                                mask[i][j] = True
                        delta = new
                        break
            if delta == 0:
                break
            count += delta
        out[b] = torch.tensor(mask)
    return out.view(batch, -1)


def reference_thesis(attn: torch.Tensor, prob=0.5, ratio=(0.1, 0.5), seed=0) -> torch.Tensor:
    """Thesis selection, per image: head-mean cls attention, r ~ U, top-⌊N·r⌋, clear with probability 1 − prob."""
    rng = random.Random(seed)
    batch, n = attn.shape[0], attn.shape[-1] - 1
    out = torch.zeros(batch, n, dtype=torch.bool, device=attn.device)
    for b in range(batch):
        score = attn[b, :, 0, 1:].mean(0)
        k = int(n * rng.uniform(*ratio))
        out[b, score.topk(k).indices] = True
        if rng.random() >= prob:
            out[b] = False
    return out


def fake_capture(batch: int, heads: int, tokens: int, depth: int, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    attn = {l: (3 * torch.randn(batch, heads, tokens, tokens, generator=gen)).softmax(-1).to(device)
            for l in range(depth)}
    return SimpleNamespace(attn=attn, logits={}, keys={}, num_prefix_tokens=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the loops are 1 thread)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    b, grid, n = args.batch, (14, 14), 196
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {b}, grid 14x14 (ViT-S/16 at 224 px)")
    rows = []

    block = build_masking({"strategy": "block"}, num_global_crops=1, depth=12)
    ours = _median_time(lambda: block(0, b, grid, None, torch.Generator().manual_seed(0)), args.repeats)
    ref = _median_time(lambda: reference_block(b), args.repeats)
    rows.append(("block (BEiT), CPU", ours, ref))

    cap = fake_capture(b, 6, n + 1, 12, "cpu")
    raw = build_masking({"strategy": "attmask-raw:layer=12"}, num_global_crops=1, depth=12)
    ours = _median_time(lambda: raw(0, b, grid, cap, torch.Generator().manual_seed(0)), args.repeats)
    ref = _median_time(lambda: reference_thesis(cap.attn[11]), args.repeats)
    rows.append(("attmask-raw selection, CPU", ours, ref))

    if torch.cuda.is_available():
        sync = torch.cuda.synchronize
        gcap = fake_capture(b, 6, n + 1, 12, "cuda")
        ours = _median_time(lambda: raw(0, b, grid, gcap, torch.Generator().manual_seed(0)), args.repeats, sync)
        ref = _median_time(lambda: reference_thesis(gcap.attn[11]), args.repeats, sync)
        rows.append(("attmask-raw selection, CUDA", ours, ref))
        for spec in ("attmask-raw:layer=12", "attmask-hint", "attmask-pow:p=0.5", "attmask-rollout:layers=9-12",
                     "random", "block"):
            m = build_masking({"strategy": spec}, num_global_crops=1, depth=12)
            c_cpu, c_gpu = (cap, gcap) if m.needs_attention else (None, SimpleNamespace(attn={0: gcap.attn[0]}))
            cpu = m(0, b, grid, c_cpu, torch.Generator().manual_seed(3))
            gpu = m(0, b, grid, c_gpu, torch.Generator().manual_seed(3))
            same = torch.equal(cpu, gpu.cpu())
            print(f"CUDA check {spec:28s} device={gpu.device} identical to CPU: {same}")
        term = DenseContrastive(k=3, tau=0.2)
        student = torch.randn(2, b, n, 8192, device="cuda", requires_grad=True)
        scores = torch.rand(2, b, n, device="cuda")

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = term(student, None, scores)
            loss.backward()

        t = _median_time(step, args.repeats, sync)
        print(f"CUDA dense contrastive fwd+bwd [2,{b},{n},8192] bf16: {t * 1e3:.2f} ms, grad norm "
              f"{student.grad.norm().item():.3e}")

    print(f"{'case':34s} {'ours (ms)':>10s} {'per-image loop (ms)':>20s} {'speed-up':>9s}")
    for name, ours, ref in rows:
        print(f"{name:34s} {ours * 1e3:10.2f} {ref * 1e3:20.2f} {ref / ours:8.1f}x")


if __name__ == "__main__":
    main()
