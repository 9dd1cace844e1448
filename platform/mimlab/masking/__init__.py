"""Masking strategies for masked image modelling (iBOT), behind one interface.

Interface used by the pretraining step (it never branches on strategy names)::

    from mimlab.masking import build_masking, MASKING

    masking = build_masking(cfg.masking, num_global_crops=G, depth=D, contrastive=cfg.contrastive is not None)
    masking.needs_attention   # bool: capture teacher attention at all?
    masking.layers            # tuple[int, ...]: 0-based teacher blocks to capture (union over crops)
    masking.needs_logits      # bool: capture pre-softmax logits too (AttentionCapture(logits=...))
    masking.needs_keys        # bool: capture keys too (AttentionCapture(keys=...))

    with torch.no_grad(), AttentionCapture(teacher, layers=masking.layers, keys=masking.needs_keys,
                                           logits=masking.needs_logits) as cap:
        targets = teacher(global_crops)                      # the ONE teacher forward that computes the targets
    masks = masking(crop_index, batch_size, grid, captured, generator)
    # -> torch.bool [B, h*w], True = masked (replaced by the mask token). ``captured`` is the capture (or a per-crop
    #    slice of it: any object with .attn[l] [B,H,T,T], .logits[l], .keys[l], .num_prefix_tokens) holding THIS
    #    crop's B images; None when ``needs_attention`` is False. ``generator`` is the only randomness.
    scores = masking.pair_scores(crop_index, captured)     # float [B, N] for DenseContrastive pair selection

The ``masking`` section: ``strategy`` (a spec string for every global crop, or a list, crop 1 = first entry),
``prob`` (0.5), ``ratio`` ([0.1, 0.5]), ``ratio_mode`` (``per_image`` thesis | ``per_batch`` AttMask | ``fixed``),
``fixed_ratio`` (``fixed`` mode: every image masked at exactly this ratio, prob forced to 1),
``legacy_cumulative_headsum_bug`` (B4). Layers in specs are 1-based (``attmask-raw:layer=12`` = last block of 12).

Strategies (``MASKING.names()``; methods-spec §4.6, §5):

=====================================  ===========================================================================
``block``                              BEiT block-wise (iBOT baseline); ratio 0 with prob 1 − prob, else U(ratio)
``random``                             exactly ⌊r·N⌋ uniformly random cells
``attmask-high[:layer=L]``             AttMask: most-attended patches (last block, [cls] row, head mean)
``attmask-low[:layer=L]``              AttMask-Low: least-attended patches
``attmask-hint[:layer=L,show_max=F]``  AttMask-Hint: High, then reveal a few of the top show_max (quirk B10)
``attmask-raw:layer=L``                thesis AttMask-Raw_L
``attmask-rollout:layers=A-B[,order]`` thesis AttMask-Rollout_{A-B}; order descending (default) | ascending (B3)
``attmask-pow:p=P[,layer=L]``          thesis AttMask-Pow(p) (B4 flag)
``attmask-log[:layer=L]``              thesis AttMask-Log (≡ mean-logit ranking; B4 flag)
``attmask-from:<explainer spec>``      any gradient-free attention-family explainer, e.g. attmask-from:raw-star
=====================================  ===========================================================================

Per-crop lists reproduce the thesis multi-layer runs: ``["attmask-raw:layer=12", "attmask-raw:layer=5"]`` is
AttMask-Raw_{5,12} (crop 1 = deepest, methods-spec A2); three entries with ``crops.global_crops: 3`` is
AttMask-Raw_{3,5,12}.

Decisions worth knowing:

* ``needs_attention`` is True when anything this object computes reads the capture: a crop's mask, or (with
  ``contrastive=True``) the last-block fallback score for pair selection of crops whose strategy has no score.
* ``per_batch`` draws one ratio per call, i.e. per global crop; AttMask shares one draw across both crops.
* ``fixed`` mode: random and attention strategies mask exactly ⌊fixed_ratio·N⌋ cells; ``block`` may undershoot
  (BEiT growth stops when a round of 10 attempts adds nothing); ``attmask-hint`` uses fixed_ratio for its second draw.
* Ties in a score are broken towards the lower patch index (stable sort, B7). Counts are ⌊r·N⌋ computed in float64.
* Randomness: every draw comes from the given ``torch.Generator`` (block growth runs in numpy, seeded from it), so
  masks are reproducible per generator state and identical whether the capture lives on the CPU or a GPU.
"""

from mimlab.masking import attention_guided, blockwise, from_explainer  # noqa: F401  (register every strategy)
from mimlab.masking.base import MASKING, MaskContext, MaskingStrategy, MaskParams, select_top
from mimlab.masking.per_crop import CropMasking, build_masking, build_strategy

__all__ = [
    "MASKING",
    "CropMasking",
    "MaskContext",
    "MaskParams",
    "MaskingStrategy",
    "build_masking",
    "build_strategy",
    "select_top",
]
