"""Attention-family explainers (methods-spec §2.2/§2.3): gradient-free maps read from one captured forward.

Each is a thin subclass naming the blocks and tensors it needs and one score function from
:mod:`mimlab.explain.scores`. Maps: min-max over the patch scores, reshape to the patch grid, bilinear upsampling
with ``align_corners=True`` (thesis post-processing, methods-spec §1).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mimlab.errors import UserError
from mimlab.explain import scores
from mimlab.explain.base import EXPLAINERS, Explainer, patch_scores_to_map
from mimlab.models.capture import AttentionCapture


class AttentionExplainer(Explainer):
    """Base of the attention family. Subclasses set ``needs_logits``/``needs_keys``, :meth:`layers`, :meth:`score`."""

    vit_only = True
    gradient_free = True
    reads_capture = True
    takes_target = False
    needs_logits: ClassVar[bool] = False
    needs_keys: ClassVar[bool] = False
    keys = frozenset({"layer"})

    def configure(self) -> None:
        self.layer = self.layer_param("layer")

    def layers(self) -> list[int]:
        """0-based blocks whose internals :meth:`score` reads."""
        return [self.layer]

    def score(self, cap: AttentionCapture) -> Tensor:
        """Per-patch scores [B,Np] from a capture holding (at least) :meth:`layers`."""
        raise NotImplementedError

    def from_capture(self, cap: AttentionCapture, size: tuple[int, int]) -> Tensor:
        """Maps [B,H,W] in [0,1] from an existing capture (used by ``explain_many``)."""
        assert cap.grid is not None
        return patch_scores_to_map(self.score(cap), cap.grid, size, align_corners=True)

    def explain(self, images: Tensor, targets: Tensor | None) -> Tensor:
        with torch.no_grad(), AttentionCapture(
            self.model, self.layers(), keys=self.needs_keys, logits=self.needs_logits, detach=True
        ) as cap:
            self.model(images)
        return self.from_capture(cap, tuple(images.shape[-2:]))


@EXPLAINERS.register("raw")
class RawAttention(AttentionExplainer):
    """Raw_l: head-mean cls attention of block l."""

    def score(self, cap: AttentionCapture) -> Tensor:
        return scores.raw(cap.attn[self.layer], cap.num_prefix_tokens)


@EXPLAINERS.register("head")
class HeadAttention(AttentionExplainer):
    """One head's cls attention: ``head:layer=L,head=H`` (both 1-based; default head 1)."""

    keys = frozenset({"layer", "head"})

    def configure(self) -> None:
        super().configure()
        heads = int(self.model.blocks[self.layer].attn.num_heads)
        h = self.spec.get_int("head", 1)
        if not 1 <= h <= heads:
            raise UserError(f"method '{self.text}': head {h} is outside 1..{heads} (heads are 1-based)")
        self.head = h - 1

    def score(self, cap: AttentionCapture) -> Tensor:
        return scores.head(cap.attn[self.layer], self.head, cap.num_prefix_tokens)


@EXPLAINERS.register("raw-star")
class RawStar(AttentionExplainer):
    """Raw*: head-mean of pre-softmax cls logits (no softmax)."""

    needs_logits = True

    def score(self, cap: AttentionCapture) -> Tensor:
        return scores.raw_star(cap.logits[self.layer], cap.num_prefix_tokens)


@EXPLAINERS.register("raw-log")
class RawLog(AttentionExplainer):
    """Raw-Log: head-mean of log-attention (computed from logits; ≡ Raw* after min-max)."""

    needs_logits = True

    def score(self, cap: AttentionCapture) -> Tensor:
        return scores.raw_log(cap.logits[self.layer], cap.num_prefix_tokens)


@EXPLAINERS.register("raw-pow")
class RawPow(AttentionExplainer):
    """Raw-Pow(p): head-mean of cls attention to the power p (default 0.05, the thesis hint for DeiT)."""

    keys = frozenset({"layer", "p"})

    def configure(self) -> None:
        super().configure()
        self.p = self.spec.get_float("p", 0.05)
        if not self.p > 0:
            raise UserError(f"method '{self.text}': p must be > 0, got {self.p}")

    def score(self, cap: AttentionCapture) -> Tensor:
        return scores.raw_pow(cap.attn[self.layer], self.p, cap.num_prefix_tokens)


@EXPLAINERS.register("rollout")
class Rollout(AttentionExplainer):
    """Rollout_{a-b}: ``rollout:layers=A-B,order=descending|ascending`` (1-based, inclusive; default all, desc)."""

    keys = frozenset({"layers", "order"})

    def configure(self) -> None:
        from mimlab.spec import check_layer

        depth = self.loaded.depth
        a, b = self.spec.get_range("layers", (1, depth))
        self.first = check_layer(a, depth, what=f"method '{self.text}': layers start")
        self.last = check_layer(b, depth, what=f"method '{self.text}': layers end")
        self.order = self.choice_param("order", scores.ROLLOUT_ORDERS, "descending")

    def layers(self) -> list[int]:
        return list(range(self.first, self.last + 1))

    def score(self, cap: AttentionCapture) -> Tensor:
        return scores.rollout([cap.attn[l] for l in self.layers()], self.order, cap.num_prefix_tokens)


@EXPLAINERS.register("keys-norm")
class KeysNorm(AttentionExplainer):
    """Keys_norm: L2 norm of the head-averaged key (``variant=mean-key|concat|mean-norm``)."""

    keys = frozenset({"layer", "variant"})
    needs_keys = True

    def configure(self) -> None:
        super().configure()
        self.variant = self.choice_param("variant", scores.KEYS_NORM_VARIANTS, "mean-key")

    def score(self, cap: AttentionCapture) -> Tensor:
        return scores.keys_norm(cap.keys[self.layer], self.variant, cap.num_prefix_tokens)


@EXPLAINERS.register("raw-star-x-keys-norm")
class RawStarTimesKeysNorm(AttentionExplainer):
    """Raw* × Keys_norm (default: min-max each factor, multiply; ``mode=raw`` multiplies the raw values)."""

    keys = frozenset({"layer", "variant", "mode"})
    needs_keys = True
    needs_logits = True

    def configure(self) -> None:
        super().configure()
        self.variant = self.choice_param("variant", scores.KEYS_NORM_VARIANTS, "mean-key")
        self.mode = self.choice_param("mode", scores.PRODUCT_MODES, "minmax")

    def score(self, cap: AttentionCapture) -> Tensor:
        return scores.raw_star_x_keys_norm(
            cap.logits[self.layer], cap.keys[self.layer], self.mode, self.variant, cap.num_prefix_tokens
        )
