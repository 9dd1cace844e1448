"""Attention-guided strategies: AttMask High / Low / Hint (methods-spec §5.1) and the thesis Raw_l, Pow(p), Log and
Rollout_{a-b} masks (§5.2), all ranking patches by a per-patch score of the teacher forward that computed the targets.

Scores come from :mod:`mimlab.explain.scores` (the single copy shared with the explainers); this module only picks
the captured block(s), applies the selection, and replicates the documented legacy quirks behind flags.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mimlab.errors import UserError
from mimlab.explain import scores as S
from mimlab.masking.base import (
    MASKING,
    MaskContext,
    MaskingStrategy,
    MaskParams,
    apply_probability,
    draw_ratios,
    ratio_to_count,
    select_top,
)
from mimlab.spec import MethodSpec, check_layer


def spec_layer(spec: MethodSpec, depth: int, key: str = "layer") -> int:
    """The spec's 1-based ``layer`` (default: the last block) as a checked 0-based index."""
    layer = spec.get_int(key, depth)
    return check_layer(layer, depth, what=f"masking strategy '{spec.text}': {key}")


def captured_tensor(ctx: MaskContext, store: str, layer: int) -> Tensor:
    """``ctx.captured.<store>[layer]`` checked against the batch size and the patch grid (``[B,H,T,T|D]``)."""
    t = getattr(ctx.captured, store)[layer]
    prefix = num_prefix(ctx)
    if t.shape[0] != ctx.batch_size:
        raise ValueError(f"captured {store}[{layer}] has {t.shape[0]} images, expected batch_size={ctx.batch_size}")
    if t.shape[2] - prefix != ctx.num_patches:
        raise ValueError(
            f"captured {store}[{layer}] has {t.shape[2] - prefix} patch tokens, but grid {tuple(ctx.grid)} "
            f"has {ctx.num_patches}"
        )
    return t


def num_prefix(ctx: MaskContext) -> int:
    """Prefix (cls, distillation, register) tokens of the capture; every capture (AttentionCapture) carries it."""
    return int(ctx.captured.num_prefix_tokens)


class AttentionGuidedMask(MaskingStrategy):
    """Mask the ⌊r·N⌋ highest (``largest=True``) or lowest scores of each image, then clear whole images with
    probability 1 − prob. The thesis recipe (§5.2) is this with ``ratio_mode: per_image``; AttMask (§5.1) draws
    one ratio per batch (``ratio_mode: per_batch``).
    """

    needs_attention: ClassVar[bool] = True
    largest: ClassVar[bool] = True

    def __call__(self, ctx: MaskContext) -> Tensor:
        scores = self.score(ctx)  # [B,N]
        counts = ratio_to_count(draw_ratios(self.params, ctx), ctx.num_patches)  # [B]
        mask = select_top(scores, counts, largest=self.largest)
        return apply_probability(mask, self.params, ctx)

    def score(self, ctx: MaskContext) -> Tensor:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


class _OneLayer(AttentionGuidedMask):
    """A strategy that reads one block (key ``layer``, 1-based; default: the last)."""

    keys: ClassVar[frozenset[str]] = frozenset({"layer"})

    def __init__(self, spec: MethodSpec, params: MaskParams, depth: int) -> None:
        super().__init__(spec, params, depth)
        self.layer = spec_layer(spec, depth)
        self.layers = (self.layer,)


class _LastOrGivenLayerRaw(_OneLayer):
    """Head-mean [cls] attention of one block (default: the last)."""

    def score(self, ctx: MaskContext) -> Tensor:
        attn = captured_tensor(ctx, "attn", self.layer)
        return S.raw(attn, num_prefix(ctx)).float()  # [B,H,T,T] -> [B,N]


@MASKING.register("attmask-high")
class AttMaskHigh(_LastOrGivenLayerRaw):
    """AttMask-High: mask the most-attended patches of the teacher's last block ([cls] row, head mean)."""


@MASKING.register("attmask-low")
class AttMaskLow(_LastOrGivenLayerRaw):
    """AttMask-Low (MST-like): mask the least-attended patches. Pair scores (contrastive) stay high-is-attended."""

    largest: ClassVar[bool] = False


@MASKING.register("attmask-raw")
class AttMaskRaw(_LastOrGivenLayerRaw):
    """Thesis AttMask-Raw_l (``attmask-raw:layer=L``, 1-based; default the last block)."""


@MASKING.register("attmask-hint")
class AttMaskHint(_LastOrGivenLayerRaw):
    """AttMask-Hint: the High mask, then reveal a few of the top ⌊N·show_max⌋ most-attended patches.

    The number revealed is ⌊N·show_max·r′⌋ where r′ is a **second, independent ratio draw** (bug/quirk B10 of the
    AttMask code, replicated: with show_max 0.1 and r′ ~ U(0.1, 0.5) that is 1–9 of 196 patches). Revealed patches
    are chosen uniformly without replacement among the top ones. In ``fixed`` ratio mode r′ = fixed_ratio.
    """

    keys: ClassVar[frozenset[str]] = frozenset({"layer", "show_max"})

    def __init__(self, spec: MethodSpec, params: MaskParams, depth: int) -> None:
        super().__init__(spec, params, depth)
        self.show_max = spec.get_float("show_max", 0.1)
        if not 0.0 <= self.show_max <= 1.0:
            raise UserError(f"masking strategy '{spec.text}': show_max must be in [0, 1], got {self.show_max}")

    def __call__(self, ctx: MaskContext) -> Tensor:
        n = ctx.num_patches
        scores = self.score(ctx)  # [B,N]
        counts = ratio_to_count(draw_ratios(self.params, ctx), n)  # [B]
        high = select_top(scores, counts)
        hint_ratio = draw_ratios(self.params, ctx)  # B10: the second, independent draw
        n_top = int(n * self.show_max + 1e-9)
        top = select_top(scores, torch.full_like(counts, n_top))  # [B,N] the show_max most-attended
        n_show = ratio_to_count(hint_ratio * self.show_max, n)  # [B]
        noise = torch.where(top, ctx.rand(ctx.batch_size, n), torch.full_like(scores, -1.0, dtype=torch.float64))
        reveal = select_top(noise, torch.minimum(n_show, torch.full_like(n_show, n_top)))
        return apply_probability(high & ~reveal, self.params, ctx)


def _legacy_cumulative(scores: Tensor, enabled: bool) -> Tensor:
    """Bug B4: the thesis accumulates the per-head sum over the batch, so image b is ranked by Σ_{b'≤b} score_b'."""
    return scores.cumsum(dim=0) if enabled else scores  # [B,N] -> [B,N]


@MASKING.register("attmask-pow")
class AttMaskPow(_OneLayer):
    """Thesis AttMask-Pow(p): head mean of [cls] attention^p (``attmask-pow:p=P[,layer=L]``, default last block).

    With ``legacy_cumulative_headsum_bug`` the score is the running sum over the batch (B4).
    """

    keys: ClassVar[frozenset[str]] = frozenset({"p", "layer"})

    def __init__(self, spec: MethodSpec, params: MaskParams, depth: int) -> None:
        super().__init__(spec, params, depth)
        p = spec.get_float("p")
        if p is None or not p > 0:
            raise UserError(f"masking strategy '{spec.text}': needs a power p > 0 (e.g. attmask-pow:p=0.5)")
        self.p = p

    def score(self, ctx: MaskContext) -> Tensor:
        attn = captured_tensor(ctx, "attn", self.layer).float()
        return _legacy_cumulative(S.raw_pow(attn, self.p, num_prefix(ctx)), self.params.legacy_cumulative_headsum_bug)


@MASKING.register("attmask-log")
class AttMaskLog(_OneLayer):
    """Thesis AttMask-Log: head mean of log [cls] attention, from the logits (no log 0); ≡ mean-logit ranking.

    With ``legacy_cumulative_headsum_bug`` the score is the running sum over the batch (B4).
    """

    needs_logits: ClassVar[bool] = True

    def score(self, ctx: MaskContext) -> Tensor:
        logits = captured_tensor(ctx, "logits", self.layer).float()
        return _legacy_cumulative(S.raw_log(logits, num_prefix(ctx)), self.params.legacy_cumulative_headsum_bug)


@MASKING.register("attmask-rollout")
class AttMaskRollout(AttentionGuidedMask):
    """Thesis AttMask-Rollout_{a-b} (``attmask-rollout:layers=A-B[,order=descending|ascending]``, 1-based,
    inclusive; default all blocks). ``descending`` (default) is Abnar's faithful order; ``ascending`` is the thesis
    masking code (rollout_all_/rollout_mid_, and rollout_last of the contrastive script — bug B3).
    """

    keys: ClassVar[frozenset[str]] = frozenset({"layers", "order"})

    def __init__(self, spec: MethodSpec, params: MaskParams, depth: int) -> None:
        super().__init__(spec, params, depth)
        a, b = spec.get_range("layers", (1, depth))
        what = f"masking strategy '{spec.text}': layers"
        self.layers = tuple(range(check_layer(a, depth, what), check_layer(b, depth, what) + 1))
        self.order = spec.params.get("order", "descending")
        if self.order not in S.ROLLOUT_ORDERS:
            raise UserError(
                f"masking strategy '{spec.text}': order must be one of {', '.join(S.ROLLOUT_ORDERS)}, got '{self.order}'"
            )

    def score(self, ctx: MaskContext) -> Tensor:
        attns = [captured_tensor(ctx, "attn", l).float() for l in self.layers]  # forward order
        return S.rollout(attns, self.order, num_prefix(ctx))  # -> [B,N]


__all__ = [
    "AttMaskHigh",
    "AttMaskHint",
    "AttMaskLog",
    "AttMaskLow",
    "AttMaskPow",
    "AttMaskRaw",
    "AttMaskRollout",
    "AttentionGuidedMask",
]
