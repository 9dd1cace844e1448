"""One strategy per global crop behind a single object, built from the ``masking`` config section.

The training step only sees :class:`CropMasking`: it reads the metadata (what to capture) and calls it per crop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mimlab.errors import UserError
from mimlab.explain import scores as S
from mimlab.masking.base import (
    MASKING,
    MaskContext,
    MaskingStrategy,
    MaskParams,
    config_to_dict,
    params_from_config,
)
from mimlab.spec import parse_spec

FROM_PREFIX = "attmask-from:"


def build_strategy(text: str, params: MaskParams, depth: int, model: Any = None) -> MaskingStrategy:
    """Parse one spec string (``attmask-raw:layer=5``) into a registered strategy instance.

    ``attmask-from:<explainer spec>`` keeps everything after the first colon as the explainer's own spec
    (``model``, the teacher backbone, is only needed by explainers that inspect the blocks, e.g. ``head``).
    """
    if not isinstance(text, str):
        raise UserError(f"masking.strategy entries must be spec strings, got {text!r}")
    stripped = text.strip()
    if stripped.startswith(FROM_PREFIX):
        from mimlab.masking.from_explainer import ExplainerMask

        return ExplainerMask.from_text(stripped[len(FROM_PREFIX) :], params, depth, model)
    spec = parse_spec(stripped)
    cls = MASKING.get(spec.name)
    return cls(spec, params, depth)


class CropMasking:
    """The masking of one run: a strategy per global crop (crop 1 = first entry of a per-crop list).

    Attributes:
        strategies: one strategy per global crop.
        params: the shared ratio / probability parameters.
        needs_attention: True when captured teacher attention is read (by a mask or by :meth:`pair_scores`).
        layers: sorted 0-based teacher blocks to capture (union over crops).
        needs_logits / needs_keys: whether the capture must also record logits / keys.
    """

    def __init__(self, strategies: tuple[MaskingStrategy, ...], params: MaskParams, depth: int, *, pair_scores: bool):
        self.strategies = strategies
        self.params = params
        self.depth = depth
        self._pair_scores = pair_scores
        layers: set[int] = set()
        for s in strategies:
            layers.update(s.layers)
        # Pair selection of the dense contrastive term falls back to last-block raw attention (see pair_scores).
        self._fallback = pair_scores and any(s.needs_attention is False for s in strategies)
        if self._fallback:
            layers.add(depth - 1)
        self.layers: tuple[int, ...] = tuple(sorted(layers))
        self.needs_attention: bool = bool(self.layers)
        self.needs_logits: bool = any(s.needs_logits for s in strategies)
        self.needs_keys: bool = any(s.needs_keys for s in strategies)

    @property
    def num_global_crops(self) -> int:
        return len(self.strategies)

    def _context(self, crop_index: int, batch_size: int, grid, captured: Any, generator) -> MaskContext:
        if not 0 <= crop_index < len(self.strategies):
            raise IndexError(f"crop_index {crop_index} outside 0..{len(self.strategies) - 1}")
        if generator is None:
            raise ValueError("masking needs a torch.Generator (pass one seeded per worker)")
        h, w = (int(v) for v in grid)
        return MaskContext(batch_size=int(batch_size), grid=(h, w), captured=captured, generator=generator)

    def __call__(
        self,
        crop_index: int,
        batch_size: int,
        grid: tuple[int, int],
        captured: Any,
        generator: torch.Generator,
    ) -> Tensor:
        """Masks for global crop ``crop_index`` (0-based).

        Args:
            crop_index: which global crop (0 = first entry of a per-crop list).
            batch_size: B, images of this crop.
            grid: ``(h, w)`` patch grid.
            captured: the teacher AttentionCapture for THIS crop's images (``attn[l]`` ``[B,H,T,T]``,
                ``logits[l]``, ``keys[l]``, ``num_prefix_tokens``), or None when ``needs_attention`` is False.
            generator: the source of randomness.

        Returns:
            bool ``[B, h*w]``, True = masked (replaced by the mask token).
        """
        ctx = self._context(crop_index, batch_size, grid, captured, generator)
        strategy = self.strategies[crop_index]
        if strategy.needs_attention and captured is None:
            raise ValueError(f"{strategy!r} needs the teacher's captured attention (layers {strategy.layers})")
        mask = strategy(ctx)
        return mask.to(torch.bool)

    def pair_scores(self, crop_index: int, captured: Any, grid: tuple[int, int] | None = None) -> Tensor:
        """Per-patch teacher scores ``[B, N]`` used to pick contrastive positives (top-k) / negatives (bottom-k).

        The crop's own strategy score (e.g. Raw_l, Pow with the B4 flag, rollout) when it has one, else the
        last block's raw [cls] attention. Requires ``build_masking(..., contrastive=True)`` for the fallback layer
        to be captured.
        """
        if captured is None:
            raise ValueError("pair_scores needs the teacher's captured attention")
        layer = self.layers[0] if self.layers else self.depth - 1
        attn_any = captured.attn[layer]
        b, n_tokens = attn_any.shape[0], attn_any.shape[-1]
        n = n_tokens - int(getattr(captured, "num_prefix_tokens", 1))
        if grid is None:
            grid = (1, n)
        ctx = MaskContext(batch_size=b, grid=tuple(grid), captured=captured, generator=torch.Generator())
        strategy = self.strategies[crop_index]
        score = strategy.score(ctx) if strategy.needs_attention else None
        if score is None:
            if not self._fallback and (self.depth - 1) not in self.layers:
                raise ValueError("pair_scores fallback needs build_masking(..., contrastive=True)")
            attn = captured.attn[self.depth - 1]
            score = S.raw(attn, int(getattr(captured, "num_prefix_tokens", 1)))  # [B,H,T,T] -> [B,N]
        return score.float()

    def __repr__(self) -> str:
        return f"CropMasking({list(self.strategies)!r}, {self.params})"


def build_masking(
    cfg_masking: Any, *, num_global_crops: int, depth: int, contrastive: bool = False, model: Any = None
) -> CropMasking:
    """Build the run's masking from the ``masking`` config section.

    Args:
        cfg_masking: the ``masking`` section — a pydantic model or a dict with ``strategy`` (one spec string for all
            global crops, or a list with one spec per crop), ``prob``, ``ratio``, ``ratio_mode``, ``fixed_ratio``,
            ``legacy_cumulative_headsum_bug``.
        num_global_crops: G; a per-crop list must have exactly G entries.
        depth: number of teacher blocks (1-based layers in specs are checked against it).
        contrastive: the dense contrastive term is on, so also capture the last block when a crop's strategy has
            no attention score of its own (:meth:`CropMasking.pair_scores`).
        model: optional teacher backbone; only ``attmask-from:`` explainers that inspect the blocks need it.

    Raises:
        UserError: unknown strategy or key, bad value, layer beyond the depth, list length ≠ G.
    """
    section = config_to_dict(cfg_masking)
    strategy = section.pop("strategy", "block")
    params = params_from_config(section)
    if num_global_crops < 1:
        raise UserError(f"crops.global_crops must be >= 1, got {num_global_crops}")
    if isinstance(strategy, str):
        texts = [strategy] * num_global_crops
    elif isinstance(strategy, (list, tuple)):
        texts = list(strategy)
        if len(texts) != num_global_crops:
            raise UserError(
                f"masking.strategy lists {len(texts)} strategies but there are {num_global_crops} global crops "
                f"(crops.global_crops); give one per global crop or a single string for all"
            )
    else:
        raise UserError(f"masking.strategy must be a spec string or a list of them, got {strategy!r}")
    strategies = []
    for text in texts:
        try:
            strategies.append(build_strategy(text, params, depth, model))
        except UserError as err:
            raise UserError(f"masking.strategy: {err}") from None
    return CropMasking(tuple(strategies), params, depth, pair_scores=contrastive)
