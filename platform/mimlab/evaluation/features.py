"""Frozen-backbone features for k-NN and linear probing (pure torch; no Ray, no I/O).

Two feature kinds come out of **one** forward of a ViT:

* ``knn``: the [cls] token after the final norm, L2-normalised — ``[B, D]`` (DINO ``eval_knn``);
* ``linear``: the [cls] tokens of the last ``n_last_blocks`` blocks, each through the final norm, concatenated in
  block order — ``[B, n·D]`` (DINO ``eval_linear``, ``n_last_blocks=4``). Its last ``D`` columns are the
  un-normalised ``knn`` feature.

For CNNs (no [cls] token, no blocks) both kinds come from the globally pooled pre-logits features
(``forward_head(forward_features(x), pre_logits=True)``); ``knn`` is L2-normalised, ``linear`` is not.

For the pretraining loop's online k-NN use :func:`extract`::

    feats, labels = extract(teacher_backbone, loader, mean=cfg.mean, std=cfg.std)   # [N, D] L2-normalised
    knn_classify(bank_feats, bank_labels, feats, labels, ks=(20,))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimlab.errors import UserError


def _is_vit(module: nn.Module) -> bool:
    from mimlab.models.vit import is_vit

    return is_vit(module)


def to_input(images: Tensor | np.ndarray, mean: Sequence[float] | None, std: Sequence[float] | None,
             device: torch.device | str | None = None) -> Tensor:
    """Model input ``float [B, 3, H, W]`` from a uint8 batch (``[B,H,W,3]`` or ``[B,3,H,W]``) or a float batch.

    uint8 batches are scaled to [0, 1] and normalised with ``mean``/``std``; float batches are taken as already
    normalised model input.
    """
    x = torch.as_tensor(images)
    if x.ndim != 4:
        raise UserError(f"image batch must be 4-D, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)  # [B,H,W,3] -> [B,3,H,W]
        if mean is None or std is None:
            raise UserError("uint8 images need the model's mean/std to be normalised")
        x = x.to(device).float().div_(255.0)
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - m) / s
    return x.to(device).float()


@torch.no_grad()
def vit_block_cls(module: nn.Module, x: Tensor, n_last_blocks: int = 4) -> Tensor:
    """[cls] of the last ``n_last_blocks`` blocks of a timm-style ViT, each through the final norm.

    Args:
        module: ViT with ``blocks`` and ``norm`` (timm layout; [cls] at token 0).
        x: normalised input ``[B, 3, H, W]``.
        n_last_blocks: how many trailing blocks.

    Returns:
        ``[B, n_last_blocks, D]`` in block order (the last entry is the final block).
    """
    blocks = list(module.blocks)
    if not 1 <= n_last_blocks <= len(blocks):
        raise UserError(f"n_last_blocks must be in 1..{len(blocks)} for this {len(blocks)}-block ViT")
    if getattr(module, "cls_token", None) is None:
        raise UserError("this ViT has no [cls] token (class_token=False); k-NN/linear features need one")
    outputs: dict[int, Tensor] = {}
    handles = [
        blk.register_forward_hook(lambda _m, _i, out, i=i: outputs.__setitem__(i, out[:, 0]))  # [B,N,D] -> [B,D]
        for i, blk in enumerate(blocks[-n_last_blocks:])
    ]
    try:
        forward = getattr(module, "forward_features", module.forward)
        forward(x)
    finally:
        for h in handles:
            h.remove()
    if len(outputs) != n_last_blocks:
        raise RuntimeError(f"only {len(outputs)} of the last {n_last_blocks} blocks ran a forward")
    norm = getattr(module, "norm", None) or nn.Identity()
    return torch.stack([norm(outputs[i]) for i in range(n_last_blocks)], dim=1)  # n×[B,D] -> [B,n,D]


@torch.no_grad()
def pooled_features(module: nn.Module, x: Tensor) -> Tensor:
    """Globally pooled pre-logits features ``[B, C]`` of a CNN (timm API), else the flattened output."""
    if hasattr(module, "forward_features") and hasattr(module, "forward_head"):
        return module.forward_head(module.forward_features(x), pre_logits=True).flatten(1)  # [B,C,h,w] -> [B,C]
    return module(x).flatten(1)


@torch.no_grad()
def batch_features(module: nn.Module, x: Tensor, n_last_blocks: int = 4) -> dict[str, Tensor]:
    """Both feature kinds for one normalised batch ``x [B, 3, H, W]``.

    Returns:
        ``{"knn": [B, D] L2-normalised, "linear": [B, n_last_blocks·D]}`` (CNN: ``[B, C]`` for both).
    """
    if _is_vit(module):
        tokens = vit_block_cls(module, x, n_last_blocks)  # [B,n,D]
        return {"knn": F.normalize(tokens[:, -1], dim=1), "linear": tokens.flatten(1)}  # [B,n,D] -> [B,n·D]
    pooled = pooled_features(module, x)
    return {"knn": F.normalize(pooled, dim=1), "linear": pooled}


def extract(
    module: nn.Module,
    batches: Iterable[Tensor | np.ndarray | tuple],
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    kind: str = "knn",
    n_last_blocks: int = 4,
    device: torch.device | str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Features of every image in ``batches`` (the helper for online k-NN during pretraining).

    The module is put in eval mode for the call and restored afterwards; nothing is differentiated.

    Args:
        module: a ViT backbone (timm layout) or a CNN.
        batches: iterable of image batches — uint8 ``[B,H,W,3]``/``[B,3,H,W]`` (normalised here with
            ``mean``/``std``) or float ``[B,3,H,W]`` already normalised — or of ``(images, labels)`` tuples.
        mean, std: per-channel normalisation for uint8 input.
        kind: ``"knn"`` (L2-normalised final [cls], ``[N, D]``) or ``"linear"`` (last-``n_last_blocks`` [cls]
            concatenation, ``[N, n·D]``).
        n_last_blocks: blocks concatenated for ``kind="linear"``.
        device: where to run; default = the module's device.

    Returns:
        ``features [N, ·]`` on the CPU, or ``(features, labels [N])`` when the batches carry labels.
    """
    if kind not in ("knn", "linear"):
        raise UserError(f"unknown feature kind '{kind}'; valid: knn, linear")
    if device is None:
        param = next(module.parameters(), None)
        device = param.device if param is not None else "cpu"
    was_training = module.training
    module.eval()
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    try:
        for batch in batches:
            images = batch
            if isinstance(batch, (tuple, list)):
                images, y = batch[0], batch[1]
                labels.append(torch.as_tensor(y).long().cpu())
            x = to_input(images, mean, std, device)
            n = n_last_blocks if kind == "linear" else 1
            feats.append(batch_features(module, x, n)[kind].float().cpu())
    finally:
        module.train(was_training)
    out = torch.cat(feats) if feats else torch.empty(0, 0)
    return (out, torch.cat(labels)) if labels else out
