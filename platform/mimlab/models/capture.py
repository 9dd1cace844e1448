"""Read a ViT's attention internals from one forward pass with hooks (no forks, no monkey-patching).

Per requested block ``l`` (0-based) the capture records

* ``attn[l]``   post-softmax attention probabilities ``[B, H, N, N]`` (the very tensor the block multiplies with
  ``V``, so gradients w.r.t. it can be taken when the forward ran with grad enabled),
* ``logits[l]`` pre-softmax, post-scale logits ``q k^T / sqrt(d)`` ``[B, H, N, N]`` (optional, ``logits=True``),
* ``keys[l]``   keys after ``k_norm`` ``[B, H, N, D]`` (optional, ``keys=True``),

plus ``num_prefix_tokens`` (cls + distillation/register tokens) and the patch ``grid`` ``(h, w)`` of the last
forward. Logits and keys are recomputed from the ``qkv`` projection output inside a hook, which costs one extra
``q k^T`` per captured block and only when asked for. Only the requested blocks are hooked, and only their
attention is switched to the unfused path for the duration of the context: a model built with fused attention
(``create_backbone(..., fused_attention=True)``, as pretraining does) runs every other block through
``F.scaled_dot_product_attention``, so the explicit kernel runs exactly where this forward reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch.nn as nn
from torch import Tensor


class CaptureError(RuntimeError):
    """A requested block produced nothing (fused attention, a non-timm attention module, or no forward)."""


class _Records(dict):
    """``dict`` of block index → tensor that names the missing block instead of raising a bare KeyError."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def __missing__(self, key: int) -> Tensor:
        raise CaptureError(f"no {self.what} captured for block {key} (0-based); captured: {sorted(self)}")


class AttentionCapture:
    """Context manager recording attention probabilities, logits and keys of a timm ViT.

    Example::

        with torch.no_grad(), AttentionCapture(teacher, layers=[11], keys=False, logits=False) as cap:
            teacher(images)
        cls_attn = cap.attn[11][:, :, 0, cap.num_prefix_tokens:].mean(1)  # [B,H,N,N] -> [B,Np]

    Args:
        model: a timm ``VisionTransformer`` (or anything with ``blocks[i].attn.{qkv,attn_drop,num_heads}``).
        layers: 0-based block indices to capture; ``None`` = all blocks. Negative indices count from the end.
        keys: also record keys ``[B,H,N,D]``.
        logits: also record pre-softmax logits ``[B,H,N,N]``.
        detach: store detached tensors (default ``False``: under ``torch.no_grad`` nothing is tracked anyway, and
            gradient-based explainers need the graph tensors).

    Every forward inside the context overwrites the records of the previous one. When the context exits (or on
    :meth:`check`) a :class:`CaptureError` is raised if any requested block stayed silent during the last forward.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Iterable[int] | None = None,
        keys: bool = True,
        logits: bool = True,
        detach: bool = False,
    ) -> None:
        blocks = getattr(model, "blocks", None)
        if blocks is None:
            raise CaptureError(f"{type(model).__name__} has no 'blocks': attention capture needs a ViT")
        self.model = model
        self.blocks = list(blocks)
        depth = len(self.blocks)
        if layers is None:
            idx = list(range(depth))
        else:
            idx = []
            for layer in layers:
                layer = int(layer)
                if not -depth <= layer < depth:
                    raise CaptureError(f"block index {layer} is outside 0..{depth - 1}")
                idx.append(layer % depth)
        self.layers = sorted(set(idx))
        for l in self.layers:
            attn = getattr(self.blocks[l], "attn", None)
            for name in ("qkv", "attn_drop", "num_heads"):
                if attn is None or not hasattr(attn, name):
                    raise CaptureError(f"block {l} has no attn.{name}: not a timm-style attention module")
        self.want_keys = keys
        self.want_logits = logits
        self.detach = detach
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        self.attn: dict[int, Tensor] = _Records("attention")
        self.logits: dict[int, Tensor] = _Records("logits")
        self.keys: dict[int, Tensor] = _Records("keys")
        self.grid: tuple[int, int] | None = None
        self.forwards = 0
        self._handles: list[Any] = []
        self._fused: dict[int, Any] = {}

    # -- hooks ---------------------------------------------------------------------------------------------------
    def _keep(self, t: Tensor) -> Tensor:
        return t.detach() if self.detach else t

    def _on_start(self, module: nn.Module, args: tuple) -> None:
        """Runs at the start of every model forward (patch embedding): forget the previous forward."""
        self.attn.clear()
        self.logits.clear()
        self.keys.clear()
        self.forwards += 1
        x = args[0]
        patch = getattr(module, "patch_size", None)
        if patch is not None and x.dim() == 4:
            ph, pw = (patch, patch) if isinstance(patch, int) else patch
            self.grid = (x.shape[-2] // ph, x.shape[-1] // pw)

    def _on_probs(self, l: int):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            self.attn[l] = self._keep(out)  # [B,H,N,N]

        return hook

    def _on_qkv(self, l: int):
        attn_mod = self.blocks[l].attn

        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            b, n, _ = out.shape
            heads = attn_mod.num_heads
            qkv = out.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)  # [B,N,3HD] -> [3,B,H,N,D]
            q, k = qkv[0], qkv[1]
            k = attn_mod.k_norm(k) if hasattr(attn_mod, "k_norm") else k
            if self.want_keys:
                self.keys[l] = self._keep(k)  # [B,H,N,D]
            if self.want_logits:
                q = attn_mod.q_norm(q) if hasattr(attn_mod, "q_norm") else q
                scale = getattr(attn_mod, "scale", q.shape[-1] ** -0.5)
                self.logits[l] = self._keep((q * scale) @ k.transpose(-2, -1))  # [B,H,N,D] x [B,H,D,N] -> [B,H,N,N]

        return hook

    # -- context -------------------------------------------------------------------------------------------------
    def __enter__(self) -> AttentionCapture:
        patch_embed = getattr(self.model, "patch_embed", None)
        if patch_embed is not None:
            self._handles.append(patch_embed.register_forward_pre_hook(self._on_start))
        else:
            self._handles.append(self.blocks[0].register_forward_pre_hook(lambda m, a: self._on_start(m, a)))
        for l in self.layers:
            attn_mod = self.blocks[l].attn
            if hasattr(attn_mod, "fused_attn"):
                self._fused[l] = attn_mod.fused_attn
                attn_mod.fused_attn = False
            self._handles.append(attn_mod.attn_drop.register_forward_hook(self._on_probs(l)))
            if self.want_keys or self.want_logits:
                self._handles.append(attn_mod.qkv.register_forward_hook(self._on_qkv(l)))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for l, fused in self._fused.items():
            self.blocks[l].attn.fused_attn = fused
        self._fused.clear()
        if exc_type is None:
            self.check()

    def check(self) -> None:
        """Raise :class:`CaptureError` if a requested block recorded nothing in the last forward."""
        if self.forwards == 0:
            raise CaptureError("attention capture saw no forward pass of the model")
        for store, wanted, what in (
            (self.attn, True, "attention"),
            (self.logits, self.want_logits, "logits"),
            (self.keys, self.want_keys, "keys"),
        ):
            silent = [l for l in self.layers if wanted and l not in store]
            if silent:
                raise CaptureError(
                    f"blocks {silent} (0-based) recorded no {what}: the attention ran a fused or non-timm path"
                )

    @property
    def num_patches(self) -> int:
        """Number of patch tokens ``Np = N - num_prefix_tokens`` of the last forward."""
        any_attn = self.attn[self.layers[0]]
        return any_attn.shape[-1] - self.num_prefix_tokens
