"""Pictures of what pretraining does, for fixed probe images: the [cls] attention, a PCA of the patch features
(first 3 components as RGB, the DINO/DINOv2 figure) and the masks the strategy chose.

The grid builders are pure functions of tensors/arrays (no model, no I/O); :func:`probe_pictures` runs the one
teacher forward that feeds all three and returns ``{name: uint8 [H, W, 3]}`` for the caller to log. Every grid has
the probe images on the top row and the picture below, one column per probe image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

MASK_SHADE = np.array([128, 128, 128], dtype=np.float32)


def _upsample(cells: Tensor, grid: tuple[int, int], size: int) -> Tensor:
    """``[P, h*w, C]`` per-patch values -> ``[P, size, size, C]`` (nearest: one block per patch)."""
    p, _, c = cells.shape
    x = cells.reshape(p, grid[0], grid[1], c).permute(0, 3, 1, 2).float()  # [P,h*w,C] -> [P,C,h,w]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="nearest")
    return x.permute(0, 2, 3, 1)  # [P,C,S,S] -> [P,S,S,C]


def _two_rows(probes: np.ndarray, pictures: np.ndarray) -> np.ndarray:
    """Probe images over their pictures: ``[P,S,S,3]`` twice -> ``uint8 [2S, P*S, 3]``."""
    top = np.concatenate(list(probes), axis=1)
    bottom = np.concatenate(list(pictures), axis=1)
    return np.concatenate([top, bottom], axis=0).astype(np.uint8)


def _check(probes: np.ndarray, values: Tensor, grid: tuple[int, int]) -> None:
    if probes.ndim != 4 or probes.shape[-1] != 3 or probes.shape[1] != probes.shape[2]:
        raise ValueError(f"probes must be uint8 [P, S, S, 3], got {list(probes.shape)}")
    if values.shape[0] != probes.shape[0] or values.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"expected [{probes.shape[0]}, {grid[0] * grid[1]}, ...] per-patch values, "
                         f"got {list(values.shape)}")


def attention_grid(probes: np.ndarray, scores: Tensor, grid: tuple[int, int], cmap: str = "inferno") -> np.ndarray:
    """The [cls] attention of each probe image, min-maxed per image, as a colour map.

    Args:
        probes: ``uint8 [P, S, S, 3]``.
        scores: ``[P, h*w]`` per-patch scores (e.g. ``explain.scores.raw`` of the last block).
        grid: ``(h, w)`` patch grid.

    Returns:
        ``uint8 [2S, P*S, 3]``.
    """
    import matplotlib

    _check(probes, scores, grid)
    s = scores.detach().float().cpu()
    lo, hi = s.min(1, keepdim=True).values, s.max(1, keepdim=True).values
    s = (s - lo) / (hi - lo).clamp(min=1e-12)  # [P,Np] in [0,1]
    maps = _upsample(s.unsqueeze(-1), grid, probes.shape[1])[..., 0].numpy()  # [P,S,S]
    heat = (matplotlib.colormaps[cmap](maps)[..., :3] * 255).round()
    return _two_rows(probes, heat)


def pca_rgb(tokens: Tensor) -> Tensor:
    """First three principal components of the patch features of all probe images, jointly, as RGB in [0, 1].

    The PCA is fitted on the ``P * Np`` patch vectors together (so colours are comparable across images); each
    component's sign is fixed so that its largest-magnitude loading is positive (deterministic), and each component
    is min-maxed over all patches. Fewer than 3 feature dimensions leave the missing channels at 0.

    Args:
        tokens: ``[P, Np, D]`` patch features (prefix tokens removed).

    Returns:
        ``float32 [P, Np, 3]``.
    """
    p, n, d = tokens.shape
    x = tokens.detach().double().reshape(p * n, d)
    x = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # rows of vh: principal directions, by variance
    k = min(3, vh.shape[0])
    comps = vh[:k]  # [k, D]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).clamp(min=0) * 2 - 1
    proj = x @ (comps * signs).T  # [P*Np, k]
    lo, hi = proj.min(0, keepdim=True).values, proj.max(0, keepdim=True).values
    proj = (proj - lo) / (hi - lo).clamp(min=1e-12)
    out = torch.zeros(p * n, 3, dtype=torch.float64)
    out[:, :k] = proj
    return out.reshape(p, n, 3).float()


def pca_grid(probes: np.ndarray, tokens: Tensor, grid: tuple[int, int]) -> np.ndarray:
    """:func:`pca_rgb` of the patch features as a picture per probe image: ``uint8 [2S, P*S, 3]``."""
    _check(probes, tokens, grid)
    rgb = _upsample(pca_rgb(tokens), grid, probes.shape[1]).numpy()  # [P,S,S,3]
    return _two_rows(probes, (rgb * 255).round())


def mask_grid(probes: np.ndarray, masks: Tensor, grid: tuple[int, int]) -> np.ndarray:
    """The probe images with the patches the strategy masked painted grey.

    Args:
        probes: ``uint8 [P, S, S, 3]``; masks: ``bool [P, h*w]`` (True = masked); grid: ``(h, w)``.

    Returns:
        ``uint8 [2S, P*S, 3]``.
    """
    _check(probes, masks, grid)
    cover = _upsample(masks.detach().cpu().float().unsqueeze(-1), grid, probes.shape[1]).numpy()  # [P,S,S,1]
    painted = probes.astype(np.float32) * (1 - cover) + MASK_SHADE * cover
    return _two_rows(probes, painted.round())


@torch.no_grad()
def probe_pictures(backbone: torch.nn.Module, probes: np.ndarray, masking: Any = None,
                   generator: torch.Generator | None = None, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """The three pictures of one teacher forward on the probe images.

    Args:
        backbone: the teacher ViT (timm layout; put in eval mode for the forward, restored after).
        probes: ``uint8 [P, S, S, 3]`` fixed probe images (e.g. ``OnlineMonitor.probes``).
        masking: the run's :class:`mimlab.masking.CropMasking` (masks of global crop 1 are drawn); ``None``
            leaves out ``masks``.
        generator: randomness for the masks (a fixed seed gives the same draw every epoch).
        mean, std: input normalisation (default ImageNet).

    Returns:
        ``{"cls_attention": ..., "patch_pca": ..., "masks": ...}``, each ``uint8 [2S, P*S, 3]``.
    """
    from mimlab.data.transforms import normalise
    from mimlab.explain import scores
    from mimlab.models.capture import AttentionCapture
    from mimlab.pretrain.build import IMAGENET_MEAN, IMAGENET_STD

    device = next(backbone.parameters()).device
    x = normalise(torch.as_tensor(probes), mean or IMAGENET_MEAN, std or IMAGENET_STD).to(device)
    last = len(backbone.blocks) - 1
    layers = sorted({last, *(masking.layers if masking is not None and masking.needs_attention else ())})
    keys = bool(masking is not None and masking.needs_keys)
    logits = bool(masking is not None and masking.needs_logits)
    was_training = backbone.training
    backbone.eval()
    try:
        with AttentionCapture(backbone, layers=layers, keys=keys, logits=logits, detach=True) as cap:
            tokens = backbone.forward_features(x)  # [P, T, D] after the final norm
    finally:
        backbone.train(was_training)
    grid = tuple(cap.grid)
    prefix = cap.num_prefix_tokens
    out = {"cls_attention": attention_grid(probes, scores.raw(cap.attn[last], prefix), grid),
           "patch_pca": pca_grid(probes, tokens[:, prefix:].cpu(), grid)}
    if masking is not None:
        gen = generator or torch.Generator().manual_seed(0)
        masks = masking(0, probes.shape[0], grid, cap if masking.needs_attention else None, gen)
        out["masks"] = mask_grid(probes, masks.cpu(), grid)
    return out
