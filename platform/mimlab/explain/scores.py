"""Per-patch attention scores from captured tensors — one copy shared by explainers and attention-guided masking.

Every function takes tensors recorded by :class:`mimlab.models.capture.AttentionCapture` and returns
``[B, Np]`` scores for the patch tokens (the ``num_prefix`` cls/distillation/register tokens are dropped), read
from the **cls row** (query 0). Definitions follow methods-spec §2.2/§2.3; head averaging is the arithmetic
mean applied after any per-head transform. Nothing here is min-maxed except where a definition requires it
(:func:`raw_star_x_keys_norm`); use :func:`minmax` for display.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

ROLLOUT_ORDERS = ("descending", "ascending")
KEYS_NORM_VARIANTS = ("mean-key", "concat", "mean-norm")
PRODUCT_MODES = ("minmax", "raw")


def minmax(scores: Tensor, eps: float = 1e-12) -> Tensor:
    """Min-max each row of ``[B, ...]`` to [0, 1]; a constant row becomes all zeros."""
    flat = scores.flatten(1)  # [B,...] -> [B,M]
    lo = flat.min(1, keepdim=True).values
    hi = flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(eps)).reshape(scores.shape)


def raw(attn: Tensor, num_prefix: int = 1) -> Tensor:
    """Raw_l: head-mean cls attention. ``attn`` [B,H,N,N] post-softmax -> [B,Np]."""
    return attn[:, :, 0, num_prefix:].mean(1)  # [B,H,N,N] -> [B,Np]


def head(attn: Tensor, h: int, num_prefix: int = 1) -> Tensor:
    """One head's cls attention (0-based head ``h``). ``attn`` [B,H,N,N] -> [B,Np]."""
    return attn[:, h, 0, num_prefix:]  # [B,H,N,N] -> [B,Np]


def raw_star(logits: Tensor, num_prefix: int = 1) -> Tensor:
    """Raw*: head-mean of the pre-softmax cls logits. ``logits`` [B,H,N,N] -> [B,Np]."""
    return logits[:, :, 0, num_prefix:].mean(1)  # [B,H,N,N] -> [B,Np]


def raw_log(logits: Tensor, num_prefix: int = 1) -> Tensor:
    """Raw-Log: head-mean of log-attention, computed from logits (no log(0)). [B,H,N,N] -> [B,Np].

    ``log A_h(j) = s_h(j) - logsumexp_j' s_h(j')`` with the softmax over all N columns (prefix included).
    """
    row = logits[:, :, 0, :]  # [B,H,N,N] -> [B,H,N]
    log_attn = row - torch.logsumexp(row, dim=-1, keepdim=True)
    return log_attn[:, :, num_prefix:].mean(1)  # [B,H,N] -> [B,Np]


def raw_pow(attn: Tensor, p: float, num_prefix: int = 1) -> Tensor:
    """Raw-Pow(p): head-mean of cls attention raised to ``p``. [B,H,N,N] -> [B,Np]."""
    return attn[:, :, 0, num_prefix:].pow(p).mean(1)  # [B,H,N,N] -> [B,Np]


def _check_rollout_args(attns: Sequence[Tensor], order: str) -> None:
    if order not in ROLLOUT_ORDERS:
        raise ValueError(f"rollout order must be one of {ROLLOUT_ORDERS}, got {order!r}")
    if not attns:
        raise ValueError("rollout needs at least one attention tensor")


def _rollout_factor(attn: Tensor) -> Tensor:
    """One block's rollout factor ``Ã = rownorm(mean_h A + I)``: ``[B,H,N,N]`` -> ``[B,N,N]`` (fp32 for half input)."""
    mean = _as_fp32(attn.mean(1))  # [B,H,N,N] -> [B,N,N]
    aug = mean + torch.eye(mean.shape[-1], dtype=mean.dtype, device=mean.device)
    return aug / aug.sum(-1, keepdim=True)  # rows sum to 1


def rollout_matrix(attns: Sequence[Tensor], order: str = "descending") -> Tensor:
    """The rollout product over blocks given in forward order. Each ``[B,H,N,N]``; returns ``[B,N,N]``.

    Per block ``Ã = rownorm(mean_h A + I)`` (every row of ``mean_h A + I`` sums to 2, so this is ``(Ā+I)/2``).
    ``descending`` (Abnar, default, faithful): ``Ã_b ··· Ã_a`` — later blocks on the left.
    ``ascending`` (thesis legacy, bug B3): ``Ã_a ··· Ã_b`` — earlier blocks on the left.
    """
    _check_rollout_args(attns, order)
    result: Tensor | None = None
    for a in attns:
        aug = _rollout_factor(a)
        if result is None:
            result = aug
        elif order == "descending":
            result = aug @ result  # later block on the left
        else:
            result = result @ aug  # later block on the right
    assert result is not None
    return result


def rollout(attns: Sequence[Tensor], order: str = "descending", num_prefix: int = 1) -> Tensor:
    """Rollout_{a-b}: cls row of :func:`rollout_matrix` over ``attns`` (forward order). -> [B,Np].

    Only the cls row is needed, so it is carried as a row vector through the chain (``e_0ᵀ Ã_b ··· Ã_a``), and no
    factor ``Ã`` is ever formed: each step reads a block's ``[B,H,N,N]`` attention twice (row sums, then one
    batched vector-matrix product per head). O(L·H·N²) per image instead of the O(L·N³) matrix chain.
    """
    _check_rollout_args(attns, order)
    # the leftmost factor is the last block (descending) or the first block (ascending)
    chain = list(reversed(attns)) if order == "descending" else list(attns)
    first = _as_fp32(chain[0])
    row = first[:, :, 0, :].mean(1)  # cls row of mean_h A: [B,H,N,N] -> [B,N]
    row[:, 0] += 1.0
    row = row / row.sum(-1, keepdim=True)  # cls row of Ã = rownorm(mean_h A + I)
    for a in chain[1:]:
        row = _times_rollout_factor(row, _as_fp32(a))
    return row[:, num_prefix:]  # [B,N] -> [B,Np]


def _as_fp32(attn: Tensor) -> Tensor:
    return attn.float() if attn.dtype in (torch.float16, torch.bfloat16) else attn


def _times_rollout_factor(row: Tensor, attn: Tensor) -> Tensor:
    """``row @ rownorm(mean_h attn + I)`` without forming the factor: ``[B,N]`` x ``[B,H,N,N]`` -> ``[B,N]``.

    With row sums ``s = rowsum(mean_h A) + 1`` and ``w = row / s``: ``row @ Ã = mean_h (w @ A_h) + w``.
    """
    w = row / (attn.sum(-1).mean(1) + 1.0)  # [B,H,N,N] -> [B,N]
    return torch.matmul(w[:, None, None, :], attn).squeeze(2).mean(1) + w  # [B,1,1,N] x [B,H,N,N] -> [B,N]


def keys_norm(keys: Tensor, variant: str = "mean-key", num_prefix: int = 1) -> Tensor:
    """Keys_norm: L2 norm of each patch token's key. ``keys`` [B,H,N,D] -> [B,Np].

    Variants (methods-spec §2.2): ``mean-key`` (default, thesis §3.1) ‖mean_h k_h‖; ``concat`` the norm of the
    concatenated key √(Σ_h ‖k_h‖²); ``mean-norm`` the head-mean of per-head norms. Keys include the qkv bias.
    """
    if variant == "mean-key":
        norms = keys.mean(1).norm(dim=-1)  # [B,H,N,D] -> [B,N,D] -> [B,N]
    elif variant == "concat":
        norms = keys.pow(2).sum(dim=(1, 3)).sqrt()  # [B,H,N,D] -> [B,N]
    elif variant == "mean-norm":
        norms = keys.norm(dim=-1).mean(1)  # [B,H,N,D] -> [B,H,N] -> [B,N]
    else:
        raise ValueError(f"keys_norm variant must be one of {KEYS_NORM_VARIANTS}, got {variant!r}")
    return norms[:, num_prefix:]  # [B,N] -> [B,Np]


def raw_star_x_keys_norm(
    logits: Tensor, keys: Tensor, mode: str = "minmax", variant: str = "mean-key", num_prefix: int = 1
) -> Tensor:
    """Raw* × Keys_norm. ``mode="minmax"`` (default): min-max each factor, multiply; ``"raw"``: plain product.

    Args:
        logits: [B,H,N,N] pre-softmax logits of the block.
        keys: [B,H,N,D] keys of the same block.
    Returns:
        [B,Np] scores.
    """
    star = raw_star(logits, num_prefix)
    norms = keys_norm(keys, variant, num_prefix)
    if mode == "minmax":
        return minmax(star) * minmax(norms)
    if mode == "raw":
        return star * norms
    raise ValueError(f"raw_star_x_keys_norm mode must be one of {PRODUCT_MODES}, got {mode!r}")
