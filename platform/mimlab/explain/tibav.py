"""TIBAV — Chefer et al., "Transformer Interpretability Beyond Attention Visualization" (methods-spec §2.4).

Our own relevance (LRP) pass over timm's ViT structure, reading weights from the timm modules and activations
recorded by forward hooks during one ordinary forward (no re-implemented model):

* Linear layers: LRP-αβ with α=1, β=0 (only the activating part ``W⁺x⁺ + W⁻x⁻``), biases ignored.
* LayerNorm, GELU, Softmax, Dropout, DropPath, LayerScale: relevance passes through unchanged.
* ``A·V`` and ``Q·Kᵀ``: gradient×input on both operands, each operand's relevance halved.
* Residual adds: gradient×input split, each branch rescaled by its share of the absolute sums so that the total
  relevance is conserved (per image here; Chefer sums over the batch, identical for batch 1).
* Clones (the residual fork) sum their branches' relevance. Sign-aware safe division with ε = 1e-9.

Per block b: ``R_b`` = relevance at the attention probabilities, ``∇A_b`` = ∂y_t/∂A_b;
``Ā_b = mean_h (∇A_b ⊙ R_b)⁺``; ``C = (I + Ā_L) ··· (I + Ā_start)`` without row normalisation; the map is
``C[0, prefix:]``, reshaped to the patch grid, upsampled bilinearly (``align_corners=False``) and min-maxed.
The input patch-embedding convolution is not traversed: the map only needs relevance at the attention layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from mimlab.errors import UserError
from mimlab.explain.base import EXPLAINERS, Explainer, patch_scores_to_map, predicted_targets
from mimlab.spec import check_layer

EPS = 1e-9


def safe_div(a: Tensor, b: Tensor) -> Tensor:
    """``a / (b + ε·sign(b))`` with 0 where ``b == 0`` (sign-aware, sign(0) taken as +)."""
    den = b + torch.where(b >= 0, EPS, -EPS)
    return torch.where(b == 0, torch.zeros_like(a), a / den)


def linear_relprop(x: Tensor, weight: Tensor, relevance: Tensor) -> Tensor:
    """LRP-α1β0 through ``y = x Wᵀ`` (bias ignored). x [...,I], weight [O,I], relevance [...,O] -> [...,I]."""
    pw, nw = weight.clamp(min=0), weight.clamp(max=0)
    px, nx = x.clamp(min=0), x.clamp(max=0)
    z = px @ pw.T + nx @ nw.T  # activating contributions only
    s = safe_div(relevance, z)
    return px * (s @ pw) + nx * (s @ nw)


def matmul_relprop(x: Tensor, y: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient×input through ``z = x @ y`` for both operands, each halved. x [...,n,m], y [...,m,d]."""
    s = safe_div(relevance, x @ y)
    rx = x * (s @ y.transpose(-2, -1)) / 2
    ry = y * (x.transpose(-2, -1) @ s) / 2
    return rx, ry


def add_relprop(a: Tensor, b: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """Split relevance of ``a + b`` between the branches, conserving the per-image total. All [B,...]."""
    s = safe_div(relevance, a + b)
    ra, rb = a * s, b * s
    dims = tuple(range(1, relevance.dim()))
    sa, sb = ra.sum(dims, keepdim=True), rb.sum(dims, keepdim=True)
    total = relevance.sum(dims, keepdim=True)
    denom = sa.abs() + sb.abs()
    fa = safe_div(sa.abs(), denom) * total
    fb = safe_div(sb.abs(), denom) * total
    return ra * safe_div(fa, sa), rb * safe_div(fb, sb)


@dataclass
class _BlockTape:
    """Activations of one block recorded by hooks (all [B,N,·] except ``attn`` [B,H,N,N])."""

    x_in: Tensor | None = None
    qkv_in: Tensor | None = None
    qkv_out: Tensor | None = None
    attn: Tensor | None = None
    proj_in: Tensor | None = None
    branch1: Tensor | None = None
    x_mid: Tensor | None = None
    fc1_in: Tensor | None = None
    fc2_in: Tensor | None = None
    branch2: Tensor | None = None


@dataclass
class _Tape:
    blocks: dict[int, _BlockTape] = field(default_factory=dict)
    head_in: dict[str, Tensor] = field(default_factory=dict)
    tokens: Tensor | None = None


def _record(model: nn.Module, first: int) -> tuple[_Tape, list[Any]]:
    """Register forward hooks recording what the relevance pass needs, for blocks ``first..last``."""
    tape = _Tape()
    handles = []

    def keep_in(tape_block: _BlockTape, name: str):
        return lambda m, args, out: setattr(tape_block, name, args[0])

    def keep_out(tape_block: _BlockTape, name: str):
        return lambda m, args, out: setattr(tape_block, name, out)

    for idx in range(first, len(model.blocks)):
        blk = model.blocks[idx]
        for part in ("norm1", "attn", "ls1", "norm2", "mlp", "ls2"):
            if not hasattr(blk, part):
                raise UserError(
                    f"tibav needs timm ViT blocks (norm1/attn/ls1/norm2/mlp/ls2); block {idx} has no {part}"
                )
        if getattr(blk.attn, "gate", None) is not None:
            raise UserError("tibav does not support gated attention blocks")
        bt = tape.blocks.setdefault(idx, _BlockTape())
        hooks = [
            (blk.norm1, keep_in(bt, "x_in")),
            (blk.attn.qkv, keep_in(bt, "qkv_in")),
            (blk.attn.qkv, keep_out(bt, "qkv_out")),
            (blk.attn.attn_drop, keep_out(bt, "attn")),
            (blk.attn.proj, keep_in(bt, "proj_in")),
            (blk.ls1, keep_out(bt, "branch1")),
            (blk.norm2, keep_in(bt, "x_mid")),
            (blk.mlp.fc1, keep_in(bt, "fc1_in")),
            (blk.mlp.fc2, keep_in(bt, "fc2_in")),
            (blk.ls2, keep_out(bt, "branch2")),
        ]
        handles += [m.register_forward_hook(h) for m, h in hooks]
    handles.append(model.norm.register_forward_hook(lambda m, a, out: setattr(tape, "tokens", out)))
    for name in ("head", "head_dist"):
        mod = getattr(model, name, None)
        if mod is not None:
            handles.append(mod.register_forward_hook(lambda m, a, out, n=name: tape.head_in.__setitem__(n, a[0])))
    return tape, handles


def _head_relprop(model: nn.Module, tape: _Tape, onehot: Tensor) -> Tensor:
    """Relevance of the final token sequence [B,N,C] from a one-hot at the logits [B,K]."""
    tokens = tape.tokens.detach()
    r_tokens = torch.zeros_like(tokens)

    def through(name: str, r: Tensor) -> Tensor:
        mod = getattr(model, name)
        if isinstance(mod, nn.Linear):
            return linear_relprop(tape.head_in[name].detach(), mod.weight.detach(), r)
        return r  # identity head (num_classes=0): features are the outputs

    if getattr(model, "head_dist", None) is not None:  # DeiT distilled: (head(x0) + head_dist(x1)) / 2
        y0 = model.head(tape.head_in["head"]).detach() / 2
        y1 = model.head_dist(tape.head_in["head_dist"]).detach() / 2
        r0, r1 = add_relprop(y0, y1, onehot)
        r_tokens[:, 0] = through("head", r0)
        r_tokens[:, 1] = through("head_dist", r1)
        return r_tokens
    r_pooled = through("head", onehot)  # [B,C]; fc_norm / head_drop pass relevance through
    pool = getattr(model, "global_pool", "token")
    if getattr(model, "attn_pool", None) is not None:
        raise UserError("tibav does not support attention-pooled ViTs (global_pool='map')")
    if pool in ("token", ""):
        r_tokens[:, 0] = r_pooled
    elif pool == "avg":
        prefix = int(model.num_prefix_tokens)
        patches = tokens[:, prefix:]  # [B,N,C] -> [B,Np,C]
        pooled = patches.mean(1, keepdim=True)
        r_tokens[:, prefix:] = patches / patches.shape[1] * safe_div(r_pooled[:, None], pooled)
    else:
        raise UserError(f"tibav supports global_pool 'token' or 'avg', the model uses '{pool}'")
    return r_tokens


def _attn_relprop(attn_mod: nn.Module, bt: _BlockTape, r_out: Tensor) -> tuple[Tensor, Tensor]:
    """Relevance through one attention module. r_out [B,N,C] -> (relevance at qkv input [B,N,C], R_A [B,H,N,N])."""
    r_o = linear_relprop(bt.proj_in.detach(), attn_mod.proj.weight.detach(), r_out)  # attn.norm passes through
    b, n, _ = bt.qkv_out.shape
    heads = attn_mod.num_heads
    qkv = bt.qkv_out.detach().reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)  # [B,N,3HD] -> [3,B,H,N,D]
    q, k, v = qkv[0], qkv[1], qkv[2]
    with torch.no_grad():
        q, k = attn_mod.q_norm(q), attn_mod.k_norm(k)
    r_o = r_o.reshape(b, n, heads, -1).transpose(1, 2)  # [B,N,HD] -> [B,H,N,D]
    r_attn, r_v = matmul_relprop(bt.attn.detach(), v, r_o)  # A·V
    r_q, r_kt = matmul_relprop(q, k.transpose(-2, -1), r_attn)  # softmax passes through; Q·Kᵀ (scale cancels)
    r_qkv = torch.stack([r_q, r_kt.transpose(-2, -1), r_v])  # [3,B,H,N,D]
    r_qkv = r_qkv.permute(1, 3, 0, 2, 4).reshape(b, n, -1)  # [3,B,H,N,D] -> [B,N,3HD]
    r_in = linear_relprop(bt.qkv_in.detach(), attn_mod.qkv.weight.detach(), r_qkv)
    return r_in, r_attn


def block_relprop(blk: nn.Module, bt: _BlockTape, r_out: Tensor) -> tuple[Tensor, Tensor]:
    """Relevance through one pre-norm timm Block. r_out [B,N,C] -> (r_in [B,N,C], R_A [B,H,N,N])."""
    r_mid_skip, r_branch2 = add_relprop(bt.x_mid.detach(), bt.branch2.detach(), r_out)
    r_fc2 = linear_relprop(bt.fc2_in.detach(), blk.mlp.fc2.weight.detach(), r_branch2)  # ls2 passes through
    r_fc1 = linear_relprop(bt.fc1_in.detach(), blk.mlp.fc1.weight.detach(), r_fc2)  # GELU passes through
    r_mid = r_mid_skip + r_fc1  # clone: sum of branches (norm2 passes through)
    r_in_skip, r_branch1 = add_relprop(bt.x_in.detach(), bt.branch1.detach(), r_mid)
    r_attn_in, r_attn = _attn_relprop(blk.attn, bt, r_branch1)
    return r_in_skip + r_attn_in, r_attn


@dataclass
class TibavResult:
    """Patch scores [B,Np] plus the per-block pieces (R_b, ∇A_b, relevance totals in/out) for inspection."""

    scores: Tensor
    relevance: dict[int, Tensor]
    grads: dict[int, Tensor]
    totals: dict[int, tuple[Tensor, Tensor]]
    targets: Tensor


def tibav_scores(model: nn.Module, images: Tensor, targets: Tensor | None = None, start: int = 0) -> TibavResult:
    """TIBAV patch scores for a timm ViT.

    Args:
        model: timm ViT with fused attention off (``create_backbone``/``load_model`` do this).
        images: [B,3,H,W] normalised.
        targets: LongTensor [B] or ``None`` for the top-1 class.
        start: first aggregated block, 0-based.
    Returns:
        :class:`TibavResult` with ``scores`` [B,Np].
    """
    tape, handles = _record(model, start)
    try:
        with torch.enable_grad():
            logits = model(images)
    finally:
        for h in handles:
            h.remove()
    tgt = predicted_targets(logits, targets)
    depth = len(model.blocks)
    blocks = list(range(start, depth))
    missing = [b for b in blocks if tape.blocks[b].attn is None]
    if missing:
        raise UserError(f"tibav: blocks {missing} produced no attention probabilities (fused attention?)")
    chosen = logits.gather(1, tgt[:, None]).sum()
    grads = torch.autograd.grad(chosen, [tape.blocks[b].attn for b in blocks])
    onehot = torch.zeros_like(logits.detach()).scatter_(1, tgt[:, None], 1.0)  # [B,K]
    with torch.no_grad():
        r = _head_relprop(model, tape, onehot)
        relevance, totals = {}, {}
        for b in reversed(blocks):
            r_in, r_attn = block_relprop(model.blocks[b], tape.blocks[b], r)
            relevance[b], totals[b] = r_attn, (r_in.flatten(1).sum(1), r.flatten(1).sum(1))
            r = r_in
        n = tape.tokens.shape[1]
        eye = torch.eye(n, dtype=logits.dtype, device=logits.device)
        joint = None
        for b, g in zip(blocks, grads):
            cam = (g * relevance[b]).clamp(min=0).mean(1)  # [B,H,N,N] -> [B,N,N], clamp before the head mean
            joint = cam + eye if joint is None else (cam + eye) @ joint  # later blocks on the left, no row norm
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        patch_scores = joint[:, 0, prefix:]  # [B,N,N] -> [B,Np]
    return TibavResult(patch_scores, relevance, dict(zip(blocks, grads)), totals, tgt)


@EXPLAINERS.register("tibav")
class Tibav(Explainer):
    """TIBAV relevance × attention-gradient rollout; ``tibav:start=L`` (1-based first block, default 1)."""

    vit_only = True
    keys = frozenset({"start"})

    def configure(self) -> None:
        depth = self.loaded.depth
        self.start = check_layer(self.spec.get_int("start", 1), depth, what=f"method '{self.text}': start")

    def explain(self, images: Tensor, targets: Tensor | None) -> Tensor:
        result = tibav_scores(self.model, images, targets, self.start)
        ph, pw = self.model.patch_embed.patch_size
        grid = (images.shape[-2] // ph, images.shape[-1] // pw)
        self.model.zero_grad(set_to_none=True)
        return patch_scores_to_map(result.scores, grid, tuple(images.shape[-2:]), align_corners=False,
                                   normalise="after")
