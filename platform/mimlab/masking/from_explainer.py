"""``attmask-from:<explainer spec>`` — mask by any gradient-free attention-family explainer (beyond the thesis)."""

from __future__ import annotations

from mimlab.errors import UserError
from mimlab.masking.base import MaskParams
from mimlab.masking.attention_guided import AttentionGuidedMask


class ExplainerMask(AttentionGuidedMask):
    """Placeholder until the explainers land."""

    @classmethod
    def from_text(cls, text: str, params: MaskParams, depth: int) -> "ExplainerMask":
        raise UserError(f"masking strategy 'attmask-from:{text}': explainers are not available yet")
