"""What each strategy selects, against independent per-image computations (plain Python sorting of scores computed
directly from the captured tensors), plus the B4 legacy flag and per-crop lists."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from mimlab.masking import build_masking, select_top

from .conftest import DEPTH, GRID, N, make_capture

FIXED = {"prob": 1.0, "ratio_mode": "fixed", "fixed_ratio": 0.25}  # k = ⌊64·0.25⌋ = 16, no randomness
K = 16


def _mask(strategy, cap, batch, crops=1, crop=0, **section):
    masking = build_masking({"strategy": strategy, **(section or FIXED)}, num_global_crops=crops, depth=DEPTH)
    return masking(crop, batch, GRID, cap, torch.Generator().manual_seed(0))


def _topk_reference(values: list[float], k: int, largest: bool = True) -> set[int]:
    """Independent selection: Python's stable sort of (−value, index)."""
    order = sorted(range(len(values)), key=lambda j: (-values[j] if largest else values[j], j))
    return set(order[:k])


def _cls_scores(cap, layer, f=lambda a: a):
    """Per-image head mean of f(cls attention) by explicit loops over images and heads."""
    attn = cap.attn[layer]
    out = []
    for b in range(attn.shape[0]):
        heads = [f(attn[b, h, 0, cap.num_prefix_tokens :]) for h in range(attn.shape[1])]
        out.append((sum(heads) / len(heads)).tolist())
    return out


def _as_sets(mask):
    return [set(torch.nonzero(row).flatten().tolist()) for row in mask]


@pytest.mark.parametrize(("strategy", "layer", "largest"), [
    ("attmask-raw:layer=1", 0, True),
    ("attmask-raw:layer=3", 2, True),
    ("attmask-high", DEPTH - 1, True),
    ("attmask-low", DEPTH - 1, False),
])
def test_raw_masks_are_topk_of_the_1_based_layer(strategy, layer, largest):
    cap = make_capture(6, seed=3)
    got = _as_sets(_mask(strategy, cap, 6))
    want = [_topk_reference(s, K, largest) for s in _cls_scores(cap, layer)]
    assert got == want


def test_pow_and_log_golden():
    cap = make_capture(5, seed=4)
    got = _as_sets(_mask("attmask-pow:p=0.3,layer=2", cap, 5))
    assert got == [_topk_reference(s, K) for s in _cls_scores(cap, 1, lambda a: a.pow(0.3))]
    # Log ≡ mean-logit ranking (methods-spec §2.2 invariant): compare with the raw logits' head mean.
    logits = cap.logits[DEPTH - 1]
    star = [logits[b, :, 0, 1:].mean(0).tolist() for b in range(5)]
    assert _as_sets(_mask("attmask-log", cap, 5)) == [_topk_reference(s, K) for s in star]


@pytest.mark.parametrize("strategy", ["attmask-pow:p=0.5", "attmask-log:layer=2"])
def test_pow_log_per_image_independent_of_batch_neighbours(strategy):
    cap = make_capture(8, seed=5)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    permuted = make_capture(8, seed=5)
    for store in (permuted.attn, permuted.logits, permuted.keys):
        for l in store:
            store[l] = store[l][perm]
    base = _mask(strategy, cap, 8)
    assert torch.equal(_mask(strategy, permuted, 8), base[perm])
    # a single image alone gets the same mask as inside the batch
    single = make_capture(8, seed=5)
    for store in (single.attn, single.logits, single.keys):
        for l in store:
            store[l] = store[l][3:4]
    assert torch.equal(_mask(strategy, single, 1)[0], base[3])


def test_legacy_cumulative_headsum_bug_reproduces_the_running_sum():
    cap = make_capture(6, seed=6)
    legacy = {**FIXED, "legacy_cumulative_headsum_bug": True}
    per_image = _cls_scores(cap, DEPTH - 1, lambda a: a.pow(0.5))
    running, acc = [], [0.0] * N  # thesis: one accumulator for the whole batch, never reset
    for s in per_image:
        acc = [a + v for a, v in zip(acc, s)]
        running.append(list(acc))
    got = _as_sets(_mask("attmask-pow:p=0.5", cap, 6, **legacy))
    assert got == [_topk_reference(s, K) for s in running]
    assert got[0] == _topk_reference(per_image[0], K)  # the first image is unaffected
    correct = _as_sets(_mask("attmask-pow:p=0.5", cap, 6))
    assert got[1:] != correct[1:]


def test_rollout_layers_order_and_single_layer_identity():
    cap = make_capture(4, seed=8)
    masking = build_masking({"strategy": "attmask-rollout:layers=2-3", **FIXED}, num_global_crops=1, depth=DEPTH)
    assert masking.layers == (1, 2)
    # Rollout over one block = Raw of that block (methods-spec §12 item 4)
    assert torch.equal(_mask("attmask-rollout:layers=3-3", cap, 4), _mask("attmask-raw:layer=3", cap, 4))
    # Independent rollout: Ã = (Ā + I)/2 per block, descending product Ã_4 Ã_3 Ã_2 Ã_1 for layers 1-4
    mats = []
    for l in range(DEPTH):
        mean = cap.attn[l].mean(1)
        mats.append((mean + torch.eye(N + 1)) / 2)
    desc = mats[3] @ mats[2] @ mats[1] @ mats[0]
    asc = mats[0] @ mats[1] @ mats[2] @ mats[3]
    want_desc = [_topk_reference(desc[b, 0, 1:].tolist(), K) for b in range(4)]
    want_asc = [_topk_reference(asc[b, 0, 1:].tolist(), K) for b in range(4)]
    assert _as_sets(_mask("attmask-rollout", cap, 4)) == want_desc
    assert _as_sets(_mask("attmask-rollout:layers=1-4,order=ascending", cap, 4)) == want_asc
    assert want_desc != want_asc


def test_hint_reveals_only_top_patches():
    cap = make_capture(300, seed=9)
    section = {"prob": 1.0, "ratio": [0.3, 0.5], "ratio_mode": "per_image"}
    hint = _mask("attmask-hint:show_max=0.2", cap, 300, **section)
    scores = cap.attn[DEPTH - 1][:, :, 0, 1:].mean(1)  # [B,H,T,T] -> [B,N]
    top = select_top(scores, torch.full((300,), math.floor(N * 0.2)))  # the ⌊64·0.2⌋ = 12 most attended
    counts = hint.sum(1)
    n_high = torch.tensor([len(s) for s in _as_sets(hint)])
    assert torch.equal(counts, n_high)
    # every unmasked top patch is a revealed hint; High masks ≥ ⌊64·0.3⌋ = 19 ≥ 12, so the whole top is in High
    revealed = (top & ~hint).sum(1)
    assert revealed.min() >= math.floor(N * 0.2 * 0.3) and revealed.max() <= math.floor(N * 0.2 * 0.5)
    assert revealed.float().std() > 0  # B10: an independent second draw per image
    # outside the top, hint equals plain High with the same first ratio draw
    high = _mask("attmask-high", cap, 300, **section)
    assert torch.equal(hint & ~top, high & ~top)


def test_random_is_exact_count_and_uniform():
    masking = build_masking({"strategy": "random", **FIXED}, num_global_crops=1, depth=DEPTH)
    masks = masking(0, 4000, GRID, None, torch.Generator().manual_seed(0))
    assert (masks.sum(1) == K).all()
    per_cell = masks.float().mean(0)  # every cell has probability 16/64 = 0.25
    assert (per_cell - 0.25).abs().max() < 0.035  # 5 sigma of a mean of 4000 Bernoulli(0.25)


def test_block_masks_are_blocks_and_respect_the_target():
    grid = (14, 14)
    masking = build_masking({"strategy": "block", "prob": 1.0, "ratio": [0.3, 0.5]}, num_global_crops=1, depth=12)
    masks = masking(0, 200, grid, None, torch.Generator().manual_seed(0)).view(200, 14, 14)
    counts = masks.sum((1, 2)).float()
    assert (counts <= 0.5 * 196).all() and (counts >= 0.25 * 196).all()
    # block structure: most masked cells have a masked 4-neighbour on both axes (random cells rarely do)
    m = masks.float()
    pad = torch.nn.functional.pad(m, (1, 1, 1, 1))
    vert = (pad[:, :-2, 1:-1] + pad[:, 2:, 1:-1]) > 0
    horiz = (pad[:, 1:-1, :-2] + pad[:, 1:-1, 2:]) > 0
    assert ((vert & horiz) & masks).sum() / masks.sum() > 0.85
    rnd = build_masking({"strategy": "random", "prob": 1.0, "ratio": [0.3, 0.5]}, num_global_crops=1, depth=12)
    r = rnd(0, 200, grid, None, torch.Generator().manual_seed(0)).view(200, 14, 14)
    rp = torch.nn.functional.pad(r.float(), (1, 1, 1, 1))
    rv = (rp[:, :-2, 1:-1] + rp[:, 2:, 1:-1]) > 0
    rh = (rp[:, 1:-1, :-2] + rp[:, 1:-1, 2:]) > 0
    assert ((rv & rh) & r).sum() / r.sum() < 0.6


def test_per_crop_list_crop1_is_first_entry():
    cap = make_capture(4, seed=10)
    strategies = ["attmask-raw:layer=4", "attmask-raw:layer=2", "attmask-raw:layer=1"]
    masking = build_masking({"strategy": strategies, **FIXED}, num_global_crops=3, depth=DEPTH)
    assert masking.layers == (0, 1, 3) and masking.num_global_crops == 3
    for crop, layer in enumerate((3, 1, 0)):
        got = _as_sets(masking(crop, 4, GRID, cap, torch.Generator()))
        assert got == [_topk_reference(s, K) for s in _cls_scores(cap, layer)]


def test_pair_scores_own_score_or_last_layer_fallback():
    cap = make_capture(3, seed=11)
    masking = build_masking({"strategy": ["block", "attmask-pow:p=0.5,layer=2"]}, num_global_crops=2, depth=DEPTH,
                            contrastive=True)
    assert masking.needs_attention and masking.layers == (1, DEPTH - 1)
    last = torch.tensor(_cls_scores(cap, DEPTH - 1))
    assert torch.allclose(masking.pair_scores(0, cap), last, atol=1e-6)
    own = torch.tensor(_cls_scores(cap, 1, lambda a: a.pow(0.5)))
    assert torch.allclose(masking.pair_scores(1, cap), own, atol=1e-6)
    plain = build_masking({"strategy": "block"}, num_global_crops=2, depth=DEPTH)
    assert not plain.needs_attention and plain.layers == ()


def _ranks(cap, layer):
    """Per image, patch ids by decreasing head-mean cls attention (the independent loop of _cls_scores)."""
    return [sorted(range(N), key=lambda j: (-s[j], j)) for s in _cls_scores(cap, layer)]


def test_hint_can_reveal_each_of_the_exact_top_show_max_patches():
    # show_max 0.25 of 64 patches is exactly 16 top patches (the 16th included); fixed ratio 0.5: High masks the
    # top 32 and ⌊64·0.25·0.5⌋ = 8 of the top 16 are revealed, uniformly — over 200 images every one of the 16
    # ranks is revealed somewhere, and nothing outside them ever is.
    cap = make_capture(200, seed=13)
    section = {"prob": 1.0, "ratio_mode": "fixed", "fixed_ratio": 0.5}
    hint = _mask("attmask-hint:show_max=0.25", cap, 200, **section)
    revealed_ranks = set()
    for row, order in zip(_as_sets(hint), _ranks(cap, DEPTH - 1)):
        unmasked_top32 = [r for r, j in enumerate(order[:32]) if j not in row]
        assert len(unmasked_top32) == 8 and max(unmasked_top32) < 16
        revealed_ranks.update(unmasked_top32)
    assert revealed_ranks == set(range(16))


def test_hint_reveals_are_drawn_independently_per_image():
    # 40 copies of one image's attention: the High masks are identical, the revealed hints must not all be
    one = make_capture(1, seed=14)
    for store in (one.attn, one.logits, one.keys):
        for l in store:
            store[l] = store[l].expand(40, *store[l].shape[1:])
    section = {"prob": 1.0, "ratio_mode": "fixed", "fixed_ratio": 0.5}
    hint = _mask("attmask-hint:show_max=0.25", one, 40, **section)
    high = _mask("attmask-high", one, 40, **section)
    assert (high == high[0]).all()
    assert len({tuple(r.tolist()) for r in hint}) > 20  # C(16, 8) = 12870 equally likely reveal sets


def test_legacy_cumulative_headsum_bug_applies_to_log_too():
    cap = make_capture(5, seed=15)
    logits = cap.logits[DEPTH - 1]
    # independent: log-softmax of the cls row over all tokens, head mean, patch columns, then the running sum
    per_image = [(logits[b, :, 0, :] - logits[b, :, 0, :].logsumexp(-1, keepdim=True))[:, 1:].mean(0).tolist()
                 for b in range(5)]
    running, acc = [], [0.0] * N
    for s in per_image:
        acc = [a + v for a, v in zip(acc, s)]
        running.append(list(acc))
    got = _as_sets(_mask("attmask-log", cap, 5, **{**FIXED, "legacy_cumulative_headsum_bug": True}))
    assert got == [_topk_reference(s, K) for s in running]
    assert got[1:] != _as_sets(_mask("attmask-log", cap, 5))[1:]


def _beit_reference(target, grid, rng):
    """Independent BEiT block growth (methods-spec §4.6) with Python scalars and sets of cells, images in lock-step
    (one ``rng.random((k, 4))`` draw per attempt for the k images still trying, in image order, as grow_blocks
    documents), so the same stream gives the same blocks."""
    h, w = grid
    b = len(target)
    min_area = float((min(h, w) // 3) ** 2)
    lo, hi = math.log(0.3), math.log(1 / 0.3)
    cells = [set() for _ in range(b)]
    count = [0] * b
    growing = [count[i] < target[i] for i in range(b)]
    while any(growing):
        budget = [target[i] - count[i] for i in range(b)]
        added = [False] * b
        for _ in range(10):
            rows = [i for i in range(b) if growing[i] and not added[i]]
            if not rows:
                break
            u = rng.random((len(rows), 4))
            for j, i in enumerate(rows):
                area = min_area + (budget[i] - min_area) * u[j, 0]
                aspect = math.exp(lo + (hi - lo) * u[j, 1])
                bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
                top = max(math.floor(u[j, 2] * (h - bh + 1)), 0)
                left = max(math.floor(u[j, 3] * (w - bw + 1)), 0)
                box = {(y, x) for y in range(top, min(top + bh, h)) for x in range(left, min(left + bw, w))}
                new = len(box - cells[i])
                if bh < h and bw < w and 1 <= new <= budget[i]:
                    cells[i] |= box
                    count[i] += new
                    added[i] = True
        growing = [growing[i] and added[i] and count[i] < target[i] for i in range(b)]
    out = np.zeros((b, h, w), dtype=bool)
    for i, c in enumerate(cells):
        for y, x in c:
            out[i, y, x] = True
    return out


@pytest.mark.parametrize(("grid", "seed", "whole"), [((14, 14), 0, False), ((5, 7), 1, False), ((4, 4), 2, False),
                                                     ((9, 6), 3, False), ((14, 14), 4, True), ((6, 6), 5, True)])
def test_block_growth_equals_the_loop_reference(grid, seed, whole):
    from mimlab.masking.blockwise import grow_blocks

    n = grid[0] * grid[1]
    gen = np.random.default_rng(100 + seed)
    target = gen.uniform(0.1, 0.95, 24) * n * (gen.random(24) < 0.75)  # a quarter of the images unmasked (T = 0)
    if whole:  # whole-cell targets (e.g. 0.5 x 196 = 98): a block may fill the budget exactly
        target = np.floor(target)
    got = grow_blocks(target, grid, np.random.default_rng(seed))
    want = _beit_reference(target.tolist(), grid, np.random.default_rng(seed))
    assert np.array_equal(got, want)
    assert not got[target == 0].any() and got[target > 0].any()


def test_block_target_is_ratio_times_patches_and_zero_for_unmasked_images():
    from mimlab.masking.base import MaskContext
    from mimlab.masking.blockwise import _target_area

    masking = build_masking({"strategy": "block", "prob": 0.5, "ratio": [0.2, 0.4]}, num_global_crops=1, depth=DEPTH)
    strategy = masking.strategies[0]
    ctx = MaskContext(batch_size=400, grid=GRID, captured=None, generator=torch.Generator().manual_seed(0))
    target = _target_area(strategy, ctx)
    kept = target > 0
    assert 0.4 < kept.float().mean() < 0.6  # prob 0.5 of 400 images
    assert (target[~kept] == 0).all()  # exactly 0, not a stray value for the unmasked ones
    assert ((target[kept] >= 0.2 * N) & (target[kept] <= 0.4 * N)).all()


def test_block_masks_of_different_generator_seeds_are_all_distinct():
    # 200 generator seeds, one 14x14 image each: the numpy stream is seeded from the generator with enough range
    # that no two of 200 seeds share a mask (a handful of distinct seeds would repeat masks)
    masking = build_masking({"strategy": "block", "prob": 1.0, "ratio": [0.3, 0.5]}, num_global_crops=1, depth=12)
    masks = {tuple(masking(0, 1, (14, 14), None, torch.Generator().manual_seed(s))[0].tolist()) for s in range(200)}
    assert len(masks) == 200
