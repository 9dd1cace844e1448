"""The masking interface: registry, parameters, per-call context and the shared vectorised selection helpers.

One strategy = one registered class with ClassVar metadata and one verb::

    @MASKING.register("attmask-raw")
    class RawAttentionMask(AttentionGuidedMask):
        needs_attention: ClassVar[bool] = True
        def __call__(self, ctx: MaskContext) -> Tensor: ...   # bool [B, N], True = masked

The randomness (ratio per image / per batch / fixed, masking probability) lives in :class:`MaskParams` and the
helpers below, so every strategy draws it the same way and the training step never branches on names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from mimlab.errors import UserError, did_you_mean
from mimlab.registry import Registry
from mimlab.spec import MethodSpec

MASKING: Registry[type[MaskingStrategy]] = Registry("masking strategy")

RATIO_MODES = ("per_image", "per_batch", "fixed")
_PARAM_KEYS = ("strategy", "prob", "ratio", "ratio_mode", "fixed_ratio", "legacy_cumulative_headsum_bug")


@dataclass(frozen=True)
class MaskParams:
    """How much to mask, shared by every strategy of one run (the ``masking`` config section minus ``strategy``).

    Attributes:
        prob: probability that an image is masked at all (thesis/AttMask 0.5); the others get an all-False row.
        ratio: ``(low, high)`` range of the masked fraction, drawn uniformly (thesis 0.1–0.5).
        ratio_mode: ``per_image`` (thesis: one draw per image), ``per_batch`` (AttMask: one draw per call, shared by
            the batch) or ``fixed`` (every image masked at ``fixed_ratio``, ``prob`` forced to 1 — fair ablations).
        fixed_ratio: the ratio of ``fixed`` mode.
        legacy_cumulative_headsum_bug: replicate thesis bug B4 (Pow/Log scores summed cumulatively over the batch).
    """

    prob: float = 0.5
    ratio: tuple[float, float] = (0.1, 0.5)
    ratio_mode: str = "per_image"
    fixed_ratio: float | None = None
    legacy_cumulative_headsum_bug: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise UserError(f"masking.prob must be a probability in [0, 1], got {self.prob}")
        lo, hi = self.ratio
        if not 0.0 <= lo <= hi <= 1.0:
            raise UserError(f"masking.ratio must be [low, high] with 0 <= low <= high <= 1, got {list(self.ratio)}")
        if self.ratio_mode not in RATIO_MODES:
            raise UserError(
                f"masking.ratio_mode must be one of {', '.join(RATIO_MODES)}, got '{self.ratio_mode}'"
                f"{did_you_mean(str(self.ratio_mode), RATIO_MODES)}"
            )
        if self.ratio_mode == "fixed":
            if self.fixed_ratio is None or not 0.0 <= self.fixed_ratio <= 1.0:
                raise UserError(
                    f"masking.fixed_ratio must be a number in [0, 1] when masking.ratio_mode is 'fixed', "
                    f"got {self.fixed_ratio}"
                )
        elif self.fixed_ratio is not None:
            raise UserError(
                f"masking.fixed_ratio is only used with masking.ratio_mode: fixed (ratio_mode is '{self.ratio_mode}')"
            )

    @property
    def effective_prob(self) -> float:
        """The masking probability actually applied (1 in ``fixed`` mode)."""
        return 1.0 if self.ratio_mode == "fixed" else self.prob


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The ``masking`` section as a plain dict, from a pydantic model, a dataclass-like object or a mapping."""
    if cfg is None:
        return {}
    if hasattr(cfg, "model_dump"):
        return dict(cfg.model_dump())
    if isinstance(cfg, dict):
        return dict(cfg)
    return {k: getattr(cfg, k) for k in _PARAM_KEYS if hasattr(cfg, k)}


def params_from_config(section: dict[str, Any]) -> MaskParams:
    """Validate the non-strategy keys of the ``masking`` section (unknown keys are errors)."""
    for key in section:
        if key not in _PARAM_KEYS:
            raise UserError(
                f"masking: unknown key '{key}'{did_you_mean(key, _PARAM_KEYS)}; valid keys: {', '.join(_PARAM_KEYS)}"
            )
    kw: dict[str, Any] = {}
    for key in ("prob", "fixed_ratio"):
        if section.get(key) is not None:
            try:
                kw[key] = float(section[key])
            except (TypeError, ValueError):
                raise UserError(f"masking.{key} must be a number, got {section[key]!r}") from None
    if "ratio" in section:
        ratio = section["ratio"]
        try:
            lo, hi = (float(v) for v in ratio)
        except (TypeError, ValueError):
            raise UserError(f"masking.ratio must be a pair [low, high], got {ratio!r}") from None
        kw["ratio"] = (lo, hi)
    if section.get("ratio_mode") is not None:
        kw["ratio_mode"] = str(section["ratio_mode"])
    if "legacy_cumulative_headsum_bug" in section:
        kw["legacy_cumulative_headsum_bug"] = bool(section["legacy_cumulative_headsum_bug"])
    return MaskParams(**kw)


@dataclass
class MaskContext:
    """Everything one strategy call may read.

    Attributes:
        batch_size: B, the number of images of this global crop.
        grid: ``(h, w)`` patch grid; N = h*w.
        captured: the teacher :class:`~mimlab.models.capture.AttentionCapture` (or a per-crop slice of it) holding
            ``attn[l]`` ``[B,H,T,T]``, ``logits[l]``, ``keys[l]`` and ``num_prefix_tokens``; None when no strategy
            needs attention.
        generator: the only source of randomness (deterministic given its state).
    """

    batch_size: int
    grid: tuple[int, int]
    captured: Any
    generator: torch.Generator

    @property
    def num_patches(self) -> int:
        return int(self.grid[0]) * int(self.grid[1])

    @property
    def device(self) -> torch.device:
        """Where masks are returned: the captured tensors' device, else the generator's."""
        if self.captured is not None:
            for store in ("attn", "logits", "keys"):
                values = getattr(self.captured, store, None) or {}
                items = values.values() if isinstance(values, dict) else values
                for t in items:
                    if isinstance(t, Tensor):
                        return t.device
        return self.generator.device

    def rand(self, *shape: int) -> Tensor:
        """U[0,1) float64 draws from the generator, moved to :attr:`device`."""
        g = self.generator
        return torch.rand(*shape, generator=g, device=g.device, dtype=torch.float64).to(self.device)


class MaskingStrategy:
    """One masking strategy for one global crop. Subclasses set the metadata and implement ``__call__``.

    Args:
        spec: the parsed spec (``name:key=value,...``); keys are checked against :attr:`keys`.
        params: the shared ratio / probability parameters.
        depth: number of blocks of the teacher (1-based layers in specs are checked against it).
    """

    needs_attention: ClassVar[bool] = False
    needs_logits: ClassVar[bool] = False
    needs_keys: ClassVar[bool] = False
    keys: ClassVar[frozenset[str]] = frozenset()
    registry_name: ClassVar[str] = ""

    def __init__(self, spec: MethodSpec, params: MaskParams, depth: int) -> None:
        spec.check_keys(self.keys)
        self.spec = spec
        self.params = params
        self.depth = depth
        self.layers: tuple[int, ...] = ()  # 0-based teacher blocks this strategy reads

    def __call__(self, ctx: MaskContext) -> Tensor:
        """Return the mask, bool ``[B, N]`` (True = replaced by the mask token)."""
        raise NotImplementedError

    def score(self, ctx: MaskContext) -> Tensor | None:
        """Per-patch score ``[B, N]`` this strategy ranks by (higher = more attended), or None if it has none."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.text!r})"


# ---------------------------------------------------------------------------------------------------------------
# Shared, vectorised randomness and selection
# ---------------------------------------------------------------------------------------------------------------


def draw_ratios(params: MaskParams, ctx: MaskContext) -> Tensor:
    """The masked fraction of each image, float64 ``[B]`` (one draw per image, one per call, or fixed)."""
    b = ctx.batch_size
    if params.ratio_mode == "fixed":
        return torch.full((b,), float(params.fixed_ratio), dtype=torch.float64, device=ctx.device)
    lo, hi = params.ratio
    u = ctx.rand(b) if params.ratio_mode == "per_image" else ctx.rand(1).expand(b)
    return lo + (hi - lo) * u


def draw_masked_rows(params: MaskParams, ctx: MaskContext) -> Tensor:
    """Which images keep their mask, bool ``[B]`` (each independently with probability ``prob``)."""
    return ctx.rand(ctx.batch_size) < params.effective_prob


def ratio_to_count(ratios: Tensor, num_patches: int) -> Tensor:
    """⌊r·N⌋ as int64 ``[B]`` (float64 so 0.5·64 is exactly 32)."""
    return torch.floor(ratios.double() * num_patches + 1e-9).long().clamp_(0, num_patches)


def select_top(scores: Tensor, counts: Tensor, *, largest: bool = True) -> Tensor:
    """Mark the ``counts[b]`` highest (or lowest) scores of each row, vectorised over the batch.

    Ties are broken by a stable sort: the lower patch index wins (methods-spec B7).

    Args:
        scores: float ``[B, N]``.
        counts: int ``[B]``, how many cells to mark per row (0..N).
        largest: highest scores first (True) or lowest first (False).

    Returns:
        bool ``[B, N]`` with exactly ``counts[b]`` True entries in row b.
    """
    b, n = scores.shape
    order = torch.sort(scores, dim=1, descending=largest, stable=True).indices  # [B,N] patch ids, best first
    ranks = torch.arange(n, device=scores.device).expand(b, n)  # [N] -> [B,N] position in the sorted order
    chosen = ranks < counts.to(scores.device)[:, None]  # [B,N] in sorted order
    mask = torch.zeros(b, n, dtype=torch.bool, device=scores.device)
    return mask.scatter_(1, order, chosen)  # back to patch order


def apply_probability(mask: Tensor, params: MaskParams, ctx: MaskContext) -> Tensor:
    """Clear whole rows with probability 1 − prob (thesis: "then clear the whole mask")."""
    keep = draw_masked_rows(params, ctx)  # [B]
    return mask & keep[:, None].to(mask.device)


def block_min_area(grid: tuple[int, int]) -> int:
    """BEiT/iBOT lower bound on a block's area: ⌊min(h, w)/3⌋² (16 on a 14×14 grid)."""
    return (min(grid) // 3) ** 2


LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))
