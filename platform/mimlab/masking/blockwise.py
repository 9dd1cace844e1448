"""Attention-free strategies: BEiT block-wise masking (the iBOT baseline) and uniformly random cells."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mimlab.masking.base import (
    LOG_ASPECT,
    MASKING,
    MaskContext,
    MaskingStrategy,
    block_min_area,
    draw_masked_rows,
    draw_ratios,
    ratio_to_count,
    select_top,
)

_ATTEMPTS = 10  # BEiT: up to 10 tries to place one block per round


def _target_area(strategy: MaskingStrategy, ctx: MaskContext) -> Tensor:
    """Target count T = r·h·w per image, 0 for images left unmasked, float64 ``[B]``.

    iBOT's pred_ratio ``[0, m] ± [0, v]`` (50 % r = 0, else r ~ U(m−v, m+v)) maps onto ``prob`` (the chance of a
    non-zero draw) and ``ratio`` = (m−v, m+v).
    """
    ratios = draw_ratios(strategy.params, ctx)  # [B]
    keep = draw_masked_rows(strategy.params, ctx)  # [B]
    return ratios * ctx.num_patches * keep.double()


@MASKING.register("block")
class BlockwiseMask(MaskingStrategy):
    """BEiT block-wise masking exactly as methods-spec §4.6, run for the whole batch at once.

    Per image: grow rectangular blocks until the masked count reaches T = r·h·w. Each round makes up to 10
    attempts; an attempt draws an area ~ U(⌊min(h,w)/3⌋², T − count), an aspect ratio exp(U(log 0.3, log 1/0.3)),
    h' = round(√(area·aspect)), w' = round(√(area/aspect)) (must be < h, < w) and a uniform top-left corner, and is
    accepted when it adds between 1 and T − count new cells. A round that adds nothing ends the image, so the count
    may undershoot T slightly (also in ``fixed`` ratio mode). Images run in lock-step: every Python iteration is one
    attempt for all images still growing (no per-image loop).
    """

    def __call__(self, ctx: MaskContext) -> Tensor:
        h, w = (int(v) for v in ctx.grid)
        target = _target_area(self, ctx).cpu().numpy()  # [B] float64
        g = ctx.generator
        seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device))  # numpy stream seeded from g
        mask = grow_blocks(target, (h, w), np.random.default_rng(seed))  # [B,h,w]
        return torch.from_numpy(mask).view(ctx.batch_size, h * w).to(ctx.device)  # [B,h,w] -> [B,N], row-major


def grow_blocks(target: np.ndarray, grid: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The BEiT block growth for a batch in lock-step (numpy on the CPU: ~1 µs per op instead of torch's ~5-10 µs,
    and this loop is many tiny ops; masks are tiny and leave for the device once).

    Args:
        target: float64 ``[B]`` target counts T (0 = leave the image unmasked).
        grid: ``(h, w)``.
        rng: the random stream.

    Returns:
        bool ``[B, h, w]``.
    """
    h, w = grid
    b = target.shape[0]
    mask = np.zeros((b, h, w), dtype=bool)
    count = np.zeros(b, dtype=np.float64)
    ys, xs = np.arange(h)[None, :], np.arange(w)[None, :]  # [1,h], [1,w]
    min_area = float(block_min_area((h, w)))
    lo_log, hi_log = LOG_ASPECT
    growing = count < target  # [B]
    while growing.any():
        budget = target - count  # [B] cells still allowed this round
        added = np.zeros(b, dtype=bool)
        for _ in range(_ATTEMPTS):
            rows = np.flatnonzero(growing & ~added)  # [k] images still trying this round
            if rows.size == 0:
                break
            u = rng.random((rows.size, 4))  # [k,4]: area, aspect, top, left
            room = budget[rows]
            area = min_area + (room - min_area) * u[:, 0]
            aspect = np.exp(lo_log + (hi_log - lo_log) * u[:, 1])
            bh = np.rint(np.sqrt(area * aspect))[:, None]  # [k,1]  (half to even, like Python round)
            bw = np.rint(np.sqrt(area / aspect))[:, None]
            top = np.maximum(np.floor(u[:, 2:3] * (h - bh + 1)), 0)  # uniform in 0..h-bh
            left = np.maximum(np.floor(u[:, 3:4] * (w - bw + 1)), 0)
            in_rows = (ys >= top) & (ys < top + bh)  # [k,h]
            in_cols = (xs >= left) & (xs < left + bw)  # [k,w]
            box = in_rows[:, :, None] & in_cols[:, None, :]  # [k,h] x [k,w] -> [k,h,w]
            new = (box & ~mask[rows]).sum(axis=(1, 2))  # [k,h,w] -> [k]
            ok = (bh[:, 0] < h) & (bw[:, 0] < w) & (new > 0) & (new <= room)
            done = rows[ok]
            mask[done] |= box[ok]
            count[done] += new[ok]
            added[done] = True
        growing = growing & added & (count < target)
    return mask


@MASKING.register("random")
class RandomMask(MaskingStrategy):
    """Exactly ⌊r·N⌋ uniformly random cells per masked image (iBOT ``pred_shape rand``)."""

    def __call__(self, ctx: MaskContext) -> Tensor:
        counts = ratio_to_count(draw_ratios(self.params, ctx), ctx.num_patches)  # [B]
        counts = counts * draw_masked_rows(self.params, ctx).long()
        noise = ctx.rand(ctx.batch_size, ctx.num_patches)  # [B,N]
        return select_top(noise, counts)


__all__ = ["BlockwiseMask", "RandomMask"]
