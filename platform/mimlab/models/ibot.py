"""iBOT model pieces: the projection head and the masked-ViT student (methods-spec §4.1).

* :class:`IBOTHead` — DINO-style MLP (Linear-GELU-Linear-GELU-Linear) to a bottleneck, L2-normalise, then a
  weight-normalised bias-free ``last_layer`` to ``out_dim``. ``norm_last_layer=False`` (thesis) keeps the weight-norm
  gain trainable. With ``shared=False`` patch tokens use their own ``last_layer2``.
* :class:`MaskedViT` — wraps a timm ``VisionTransformer``; a learnable ``mask_token`` replaces the patch embeddings
  of masked positions **before** position embeddings are added, so masked tokens keep their position.
* :class:`IBOTStudent` — backbone + head in one module, so DDP wraps a single forward per step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function


def _trunc_normal_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight ``W = g * v / ||v||`` (row-wise), ``g`` initialised to 1.

    Args:
        in_dim: input width (the bottleneck).
        out_dim: number of prototypes K.
        fix_gain: freeze ``g`` at 1 (iBOT ``norm_last_layer=True``).
    """

    def __init__(self, in_dim: int, out_dim: int, fix_gain: bool) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fix_gain)

    def forward(self, x: Tensor) -> Tensor:  # [M, in] -> [M, K]
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)  # [K, in]
        return F.linear(x, weight)


class IBOTHead(nn.Module):
    """Projection head applied to [cls] and patch tokens.

    Args:
        in_dim: backbone width D.
        out_dim: K, prototypes of the last layer (8192 in the thesis).
        hidden_dim: MLP width (2048).
        bottleneck_dim: width before the L2 normalisation (256).
        norm_last_layer: freeze the last layer's weight-norm gain at 1.
        shared: one ``last_layer`` for cls and patch tokens (iBOT ``shared_head``).
    """

    def __init__(self, in_dim: int, out_dim: int = 8192, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 norm_last_layer: bool = False, shared: bool = True) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.mlp.apply(_trunc_normal_init)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_gain=norm_last_layer)
        self.last_layer2 = None if shared else WeightNormLinear(bottleneck_dim, out_dim, fix_gain=norm_last_layer)
        self.out_dim = out_dim

    def forward(self, cls_tokens: Tensor, patch_tokens: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Run the MLP once over both token sets (one matmul chain), then the last layer(s).

        Args:
            cls_tokens: ``[Mc, D]``.
            patch_tokens: ``[Mp, D]`` or ``None``.

        Returns:
            ``([Mc, K], [Mp, K] | None)`` logits.
        """
        n_cls = cls_tokens.shape[0]
        x = cls_tokens if patch_tokens is None else torch.cat([cls_tokens, patch_tokens], 0)  # [Mc+Mp, D]
        z = F.normalize(self.mlp(x), dim=-1, p=2)  # [Mc+Mp, bottleneck]
        cls_out = self.last_layer(z[:n_cls])
        if patch_tokens is None:
            return cls_out, None
        return cls_out, self.patch_layer(z[n_cls:])

    @property
    def patch_layer(self) -> WeightNormLinear:
        """The last layer of patch tokens (``last_layer2``, or ``last_layer`` when shared)."""
        return self.last_layer if self.last_layer2 is None else self.last_layer2

    def embed(self, cls_tokens: Tensor, patch_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """[cls] logits ``[Mc, K]`` and the L2-normalised bottleneck of the patch tokens ``[Mp, bottleneck]``:
        the patch logits are ``patch_layer`` of it, taken later only where something reads them."""
        n_cls = cls_tokens.shape[0]
        z = F.normalize(self.mlp(torch.cat([cls_tokens, patch_tokens], 0)), dim=-1, p=2)  # [Mc+Mp, bottleneck]
        return self.last_layer(z[:n_cls]), z[n_cls:]


class MaskedViT(nn.Module):
    """A timm VisionTransformer whose patch embeddings can be replaced by a learnable mask token.

    Args:
        backbone: ``timm.models.vision_transformer.VisionTransformer`` (``dynamic_img_size=True`` for crops of
            several sizes).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim))
        self.num_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 1))

    def forward(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """Tokens after the final norm.

        Args:
            images: ``[B, 3, S, S]``.
            mask: bool ``[B, h*w]`` (True = masked) or ``None``.

        Returns:
            ``[B, prefix + h*w, D]``.
        """
        vit = self.backbone
        x = vit.patch_embed(images)  # [B, h*w, D] or [B, h, w, D] with dynamic_img_size
        if mask is not None:
            token = self.mask_token.to(x.dtype)
            if x.ndim == 4:
                m = mask.view(x.shape[0], x.shape[1], x.shape[2], 1)  # [B, h*w] -> [B, h, w, 1]
                token = token.view(1, 1, 1, -1)
            else:
                m = mask.unsqueeze(-1)  # [B, h*w] -> [B, h*w, 1]
            x = torch.where(m, token, x)
        x = vit._pos_embed(x)  # [B, prefix + h*w, D]
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        return vit.norm(x)


class IBOTStudent(nn.Module):
    """Student backbone and head in one module: one forward per step covers every crop.

    Returns only what a loss reads (methods-spec §4.1 performance note): [cls] logits of every crop, and patch
    logits of the global crops (of the masked positions only, unless ``all_patches``).
    """

    def __init__(self, backbone: nn.Module, head: IBOTHead) -> None:
        super().__init__()
        self.encoder = MaskedViT(backbone)
        self.head = head

    def forward(self, global_crops: Tensor, local_crops: Tensor | None, masks: Tensor,
                all_patches: bool = False) -> dict[str, Any]:
        """
        Args:
            global_crops: ``[G*B, 3, S, S]`` (crop-major).
            local_crops: ``[L*B, 3, s, s]`` or ``None``.
            masks: bool ``[G*B, Np]``.
            all_patches: return head logits of every global patch (contrastive term) instead of masked ones.

        Returns:
            dict with ``cls`` ``[(G+L)*B, K]`` (global rows first), ``patch`` ``[M, K]`` (masked rows in
            ``masks.nonzero()`` order, or ``[G*B*Np, K]`` with ``all_patches``), ``patch_tokens`` ``[G*B, Np, D]``.
        """
        p = self.encoder.num_prefix_tokens
        g_tokens = self.encoder(global_crops, masks)  # [G*B, p+Np, D]
        cls_list = [g_tokens[:, 0]]
        if local_crops is not None and local_crops.shape[0] > 0:
            l_tokens = self.encoder(local_crops, None)  # [L*B, p+n, D]
            cls_list.append(l_tokens[:, 0])
        patch_tokens = g_tokens[:, p:]  # [G*B, Np, D]
        picked = patch_tokens.reshape(-1, patch_tokens.shape[-1]) if all_patches else patch_tokens[masks]  # [M, D]
        with record_function("ibot.student_head"):
            cls_logits, patch_logits = self.head(torch.cat(cls_list, 0), picked)
        return {"cls": cls_logits, "patch": patch_logits, "patch_tokens": patch_tokens}


def teacher_embed(backbone: nn.Module, head: IBOTHead, global_crops: Tensor) -> dict[str, Tensor]:
    """Teacher [cls] logits and patch bottlenecks (no patch logits yet): one backbone forward.

    Returns:
        ``cls`` ``[G*B, K]``, ``patch_z`` ``[G*B, Np, bottleneck]`` (L2-normalised; ``head.patch_layer`` of it gives
        the patch logits, which is linear, so the mean of the logits is ``patch_layer`` of the mean).
    """
    p = int(getattr(backbone, "num_prefix_tokens", 1))
    tokens = backbone.forward_features(global_crops)  # [G*B, p+Np, D]
    n, np_, d = tokens.shape[0], tokens.shape[1] - p, tokens.shape[2]
    with record_function("ibot.teacher_head"):
        cls_logits, z = head.embed(tokens[:, 0], tokens[:, p:].reshape(-1, d))  # [G*B*Np, D] patches
    return {"cls": cls_logits, "patch_z": z.view(n, np_, -1)}


def teacher_forward(backbone: nn.Module, head: IBOTHead, global_crops: Tensor) -> dict[str, Tensor]:
    """Teacher outputs on the global crops: one backbone forward, head on [cls] and all patch tokens.

    Args:
        global_crops: ``[G*B, 3, S, S]``.

    Returns:
        ``cls`` ``[G*B, K]``, ``patch`` ``[G*B, Np, K]``.
    """
    out = teacher_embed(backbone, head, global_crops)
    out["patch"] = head.patch_layer(out.pop("patch_z"))  # [G*B, Np, bottleneck] -> [G*B, Np, K]
    return out
