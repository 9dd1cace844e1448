"""Model-parameter randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018): pure core.

A saliency method that explains the *model* must change its maps when the model's weights are destroyed.
The model is cut into blocks, listed from the output down to the input (:func:`randomisation_blocks`):

* **cascading** — step k re-initialises blocks 1..k (the head first, then each block below it, cumulatively);
* **independent** — step k re-initialises block k alone, every other block keeping its trained weights.

Re-initialisation (:func:`reinitialise`) uses each module's own ``reset_parameters`` (PyTorch's default
initialisers; BatchNorm running statistics reset too) and ``N(0, 0.02²)`` for parameters no module resets
(timm's cls/position embeddings, LayerScale). Block k is always drawn from the generator seeded ``seed + k``, so
its random weights are the same in both modes, on every worker, for every batch. The maps of each step are
compared with the original maps per image by Spearman rank correlation and SSIM (:mod:`mimlab.metrics.similarity`).
Everything here works on an in-memory model; nothing is written to a weights file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from mimlab.metrics.similarity import spearman, ssim

MODES = ("cascading", "independent")
FLAG_SPEARMAN = 0.5


@dataclass(frozen=True)
class Block:
    """A unit of randomisation: a display name, the modules and the loose parameters it owns."""

    name: str
    modules: tuple[nn.Module, ...]
    params: tuple[nn.Parameter, ...] = ()


def randomisation_blocks(model: nn.Module) -> list[Block]:
    """The model's blocks from the output down to the input.

    Top-level children that own parameters, in definition order, with a ``blocks`` (or ``layers``) container
    expanded into its members (``blocks.11`` … ``blocks.0``); parameters held directly by the root (cls token,
    position embedding) join the input-most block. For a timm ViT: ``head, norm, blocks.L-1 … blocks.0,
    patch_embed``; for a timm ResNet: ``fc, layer4 … layer1, bn1, conv1``.
    """
    items: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if name in ("blocks", "layers") and len(list(child.children())) > 1:
            items.extend((f"{name}.{n}", c) for n, c in child.named_children()
                         if any(True for _ in c.parameters()))
        else:
            items.append((name, child))
    loose = tuple(p for _, p in model.named_parameters(recurse=False))
    if not items:
        raise ValueError("the model has no sub-module with parameters to randomise")
    blocks = [Block(n, (m,)) for n, m in items]
    if loose:
        blocks[0] = Block(blocks[0].name, blocks[0].modules, loose)
    return list(reversed(blocks))


@torch.no_grad()
def reinitialise(block: Block, seed: int) -> None:
    """Re-draw every parameter of ``block`` in place from the generator seeded ``seed`` (see module docstring)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        done: set[int] = set()
        for module in block.modules:
            for sub in module.modules():
                if hasattr(sub, "reset_parameters") and callable(sub.reset_parameters):
                    sub.reset_parameters()
                    done.update(id(p) for p in sub.parameters(recurse=False))
                if hasattr(sub, "reset_running_stats"):
                    sub.reset_running_stats()
            for p in module.parameters():
                if id(p) not in done:
                    p.normal_(0.0, 0.02)
        for p in block.params:
            p.normal_(0.0, 0.02)


@dataclass
class SanityBatch:
    """Per-image similarities of one batch: ``{mode: {method: {"spearman"|"ssim": float64 [steps, B]}}}``."""

    values: dict[str, dict[str, dict[str, np.ndarray]]]
    steps: list[str]


def sanity_batch(
    model: nn.Module,
    explainers: Mapping[str, object],
    images: Tensor,
    targets: Tensor | None,
    *,
    seed: int = 0,
    modes: Sequence[str] = MODES,
) -> SanityBatch:
    """Explain ``images`` with the trained model and after each randomisation step; compare the maps.

    Args:
        model: the module every explainer in ``explainers`` wraps (randomised in place, restored on return).
        explainers: ``{spec: explainer}``; each is called as ``explainer(images, targets)`` (``None`` for methods
            whose ``takes_target`` is false).
        images: [B,3,H,W] normalised.
        targets: LongTensor [B], the classes explained at every step (resolved once on the trained model).
        seed: block k is re-drawn from ``seed + k``.
        modes: any of ``cascading``, ``independent``.
    Returns:
        :class:`SanityBatch` with ``steps`` = block names, output first.
    """
    blocks = randomisation_blocks(model)
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def maps() -> dict[str, Tensor]:
        out = {}
        for spec, e in explainers.items():
            t = targets if getattr(e, "takes_target", True) else None
            out[spec] = e(images, t).detach().float().cpu()  # [B,H,W]
        return out

    values: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    try:
        original = maps()
        for mode in modes:
            if mode not in MODES:
                raise ValueError(f"sanity mode must be one of {MODES}, got {mode!r}")
            per = {s: {"spearman": [], "ssim": []} for s in explainers}
            model.load_state_dict(trained)
            for k, block in enumerate(blocks):
                if mode == "independent":
                    model.load_state_dict(trained)
                reinitialise(block, seed + k)
                now = maps()
                for s in explainers:
                    per[s]["spearman"].append(spearman(original[s], now[s]))
                    per[s]["ssim"].append(ssim(original[s], now[s]))
            values[mode] = {s: {k: np.stack(v) for k, v in d.items()} for s, d in per.items()}  # [steps,B]
    finally:
        model.load_state_dict(trained)
    return SanityBatch(values=values, steps=[b.name for b in blocks])
