"""Several methods on one batch: every capture-reading (attention-family) method is served by ONE forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mimlab.explain.base import Explainer, build_explainer
from mimlab.models.capture import AttentionCapture
from mimlab.models.loading import LoadedModel


def explain_many(
    loaded: LoadedModel,
    images: Tensor,
    specs: Sequence[str | Explainer],
    targets: Tensor | None = None,
) -> dict[str, Tensor]:
    """Maps for every spec, keyed by the spec text exactly as given.

    Attention-family methods (``reads_capture``) share a single hooked forward capturing the union of their
    blocks (logits/keys only when one of them needs them); the others run one by one.

    Args:
        loaded: the model.
        images: [B,3,H,W] normalised.
        specs: method spec strings (or already built explainers).
        targets: LongTensor [B] or ``None`` (top-1).
    Returns:
        ``{spec: maps [B,H,W] float32 in [0,1]}`` in the order of ``specs``.
    """
    built: dict[str, Explainer] = {}
    for spec in specs:
        key = spec if isinstance(spec, str) else spec.text
        built[key] = build_explainer(spec, loaded) if isinstance(spec, str) else spec
    shared = {k: e for k, e in built.items() if e.reads_capture}
    out: dict[str, Tensor] = {}
    if shared:
        layers = sorted({l for e in shared.values() for l in e.layers()})
        keys = any(e.needs_keys for e in shared.values())
        logits = any(e.needs_logits for e in shared.values())
        size = tuple(images.shape[-2:])
        with torch.no_grad(), AttentionCapture(loaded.module, layers, keys=keys, logits=logits, detach=True) as cap:
            loaded.module(images)
        for k, e in shared.items():
            out[k] = e.from_capture(cap, size).float().clamp_(0.0, 1.0)
    for k, e in built.items():
        if k not in out:
            out[k] = e(images, targets if e.takes_target else None)
    return {k: out[k] for k in built}
