"""``attmask-from:<explainer spec>`` — mask by any gradient-free attention-family explainer (beyond the thesis).

The explainer is built with :func:`mimlab.explain.build_explainer` and asked only for its per-patch ``score`` on
the teacher capture (``reads_capture`` explainers: raw, head, raw-star, raw-log, raw-pow, rollout, keys-norm,
raw-star-x-keys-norm, ...), never for the upsampled map and never for a forward of its own: the scores come from
the teacher forward that computed the targets. Selection is the thesis one (top ⌊r·N⌋, then prob).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

from torch import Tensor

from mimlab.errors import UserError
from mimlab.masking.attention_guided import AttentionGuidedMask, captured_tensor
from mimlab.masking.base import MASKING, MaskContext, MaskParams
from mimlab.spec import MethodSpec, parse_spec


def _loaded_stand_in(depth: int, model: Any) -> Any:
    """A :class:`~mimlab.models.loading.LoadedModel` for building an explainer from a spec.

    With no model, a stand-in that only knows the depth (enough for every explainer except those that inspect the
    blocks, e.g. ``head`` needs the number of heads: pass ``model=`` to ``build_masking`` for those).
    """
    from mimlab.models.loading import LoadedModel

    module = model if model is not None else SimpleNamespace(blocks=[None] * depth)
    return LoadedModel(module=module, kind="vit", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), img_size=0,
                       name="teacher")


@MASKING.register("attmask-from")
class ExplainerMask(AttentionGuidedMask):
    """Mask the patches an attention-family explainer scores highest: ``attmask-from:raw-star:layer=6``."""

    keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, spec: MethodSpec, params: MaskParams, depth: int) -> None:
        # Reached only through MASKING.get("attmask-from") with nothing after the colon.
        super().__init__(spec, params, depth)
        raise UserError("masking strategy 'attmask-from' needs an explainer spec, e.g. attmask-from:raw-star:layer=12")

    @classmethod
    def from_text(cls, text: str, params: MaskParams, depth: int, model: Any = None) -> ExplainerMask:
        """Build from the explainer spec (everything after ``attmask-from:``)."""
        from mimlab.explain import EXPLAINERS, build_explainer

        full = f"attmask-from:{text}"
        if not text.strip():
            raise UserError(f"masking strategy '{full}' needs an explainer spec, e.g. attmask-from:raw-star:layer=12")
        usable = sorted(
            n for n in EXPLAINERS.names()
            if EXPLAINERS.get(n).gradient_free and getattr(EXPLAINERS.get(n), "reads_capture", False)
        )
        name = parse_spec(text).name
        if name in EXPLAINERS and name not in usable:
            raise UserError(
                f"masking strategy '{full}': '{name}' is not a gradient-free attention-family explainer "
                f"(masks must come from the teacher forward); usable: {', '.join(usable)}"
            )
        try:
            explainer = build_explainer(text, _loaded_stand_in(depth, model))
        except UserError as err:
            raise UserError(f"masking strategy '{full}': {err}") from None
        except (AttributeError, TypeError, IndexError):
            raise UserError(
                f"masking strategy '{full}': this explainer inspects the model; pass the teacher as "
                f"build_masking(..., model=teacher)"
            ) from None
        if not (explainer.gradient_free and getattr(explainer, "reads_capture", False)):
            raise UserError(
                f"masking strategy '{full}': '{explainer.spec.name}' is not a gradient-free attention-family "
                f"explainer (masks must come from the teacher forward); usable: {', '.join(usable)}"
            )
        self = cls.__new__(cls)
        self.spec = MethodSpec("attmask-from", {}, full)
        self.params = params
        self.depth = depth
        self.explainer = explainer
        self.layers = tuple(sorted(int(l) for l in explainer.layers()))
        self.needs_logits = bool(getattr(explainer, "needs_logits", False))  # instance metadata shadows the class
        self.needs_keys = bool(getattr(explainer, "needs_keys", False))
        return self

    def score(self, ctx: MaskContext) -> Tensor:
        for layer in self.layers:  # shape checks against batch size and grid
            captured_tensor(ctx, "attn", layer)
        return self.explainer.score(ctx.captured).float()  # [B,Np]
