"""Dense contrastive third term (methods-spec §6; thesis ``contrastive_3rd_term_main_ibot.py``), done as intended.

Per image, the top-k teacher-attended patches of every global crop are positives of each other (P = G·k of them,
across locations and views) and the bottom-k patches of every crop are the negatives. Each ordered pair of distinct
positives (t, l) gives an InfoNCE term

    −log( exp(s⁺_tl/τ) / (exp(s⁺_tl/τ) + Σ_j exp(s⁻_tj/τ)) ),   s = cosine similarity,

averaged over the P·(P−1)·B pairs and scaled by ``weight``. Embeddings come from the student (its patch-head
outputs by default, or its backbone patch tokens), so the term trains the student — in the published code it
does not (bug B5a, zero gradient: ``legacy_teacher_nograd``) and its formula drops exp and /τ on the positive
inside the log and divides by P·B (bug B5b: ``legacy_formula``).

Masked tokens: the student's outputs at masked positions are used as they are (the student forward already ran
with the masks; no second pass). The top-k positives are exactly the patches attention-guided masking hides, so the
term asks the student's *predictions* of the most salient patches to agree across locations and views.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mimlab.errors import UserError

SOURCES = ("student_head", "student_tokens", "teacher_probs")


def select_pairs(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices of the top-k (positives) and bottom-k (negatives) patches of each crop image.

    Ties break towards the lower patch index (stable sort, methods-spec B7).

    Args:
        scores: teacher attention scores ``[G, B, N]`` (higher = more attended).
        k: how many of each.

    Returns:
        ``(pos, neg)``, int64 ``[G, B, k]`` each.
    """
    n = scores.shape[-1]
    if 2 * k > n:
        raise UserError(f"contrastive.k={k} needs at least 2k={2 * k} patches per crop, the crop has {n}")
    desc = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # [G,B,N]
    asc = torch.sort(scores, dim=-1, descending=False, stable=True).indices  # [G,B,N]
    return desc[..., :k], asc[..., :k]


def _gather_views(z: Tensor, idx: Tensor) -> Tensor:
    """Gather ``z`` [G,B,N,D] at ``idx`` [G,B,k] and put the crops side by side: -> [B, G·k, D]."""
    g, b, k = idx.shape
    picked = z.gather(2, idx[..., None].expand(g, b, k, z.shape[-1]))  # [G,B,N,D] -> [G,B,k,D]
    return picked.permute(1, 0, 2, 3).reshape(b, g * k, z.shape[-1])  # [G,B,k,D] -> [B,G*k,D]


class DenseContrastive(nn.Module):
    """InfoNCE between the most-attended patches of all global crops of an image, against the least-attended ones.

    Args:
        k: positives (and negatives) per crop (thesis ``k_anchors`` 3).
        tau: temperature τ (thesis 0.2).
        weight: λ₃ (thesis 1.0).
        source: what the caller passes as ``student_patch``: ``student_head`` (student patch-head outputs, default),
            ``student_tokens`` (student backbone patch tokens); ``teacher_probs`` embeds the teacher probabilities
            instead (no gradient, like ``legacy_teacher_nograd``).
        legacy_formula: bug B5b — ``−s⁺/τ + log(s⁺ + Σ_j exp(s⁻/τ))`` summed and divided by P·B.
        legacy_teacher_nograd: bug B5a — embed the detached teacher probabilities (the term has zero gradient).
    """

    def __init__(
        self,
        k: int = 3,
        tau: float = 0.2,
        weight: float = 1.0,
        source: str = "student_head",
        legacy_formula: bool = False,
        legacy_teacher_nograd: bool = False,
    ) -> None:
        super().__init__()
        if int(k) < 1:
            raise UserError(f"contrastive.k must be >= 1, got {k}")
        if not float(tau) > 0:
            raise UserError(f"contrastive.tau must be > 0, got {tau}")
        if source not in SOURCES:
            raise UserError(f"contrastive.source must be one of {', '.join(SOURCES)}, got '{source}'")
        self.k = int(k)
        self.tau = float(tau)
        self.weight = float(weight)
        self.source = source
        self.legacy_formula = bool(legacy_formula)
        self.legacy_teacher_nograd = bool(legacy_teacher_nograd)

    @classmethod
    def from_config(cls, cfg: Any) -> DenseContrastive:
        """Build from the ``contrastive`` config section (pydantic model or dict)."""
        section = dict(cfg.model_dump()) if hasattr(cfg, "model_dump") else dict(cfg)
        allowed = {"k", "tau", "weight", "source", "legacy_formula", "legacy_teacher_nograd"}
        for key in section:
            if key not in allowed:
                raise UserError(f"contrastive: unknown key '{key}'; valid keys: {', '.join(sorted(allowed))}")
        return cls(**section)

    @property
    def uses_teacher(self) -> bool:
        """True when the embeddings are the (detached) teacher probabilities, i.e. the term has no gradient."""
        return self.legacy_teacher_nograd or self.source == "teacher_probs"

    def forward(self, student_patch: Tensor, teacher_patch_probs: Tensor, scores: Tensor) -> Tensor:
        """The weighted term, a scalar.

        Args:
            student_patch: ``[G, B, N, D]`` student patch embeddings of the global crops (see ``source``).
            teacher_patch_probs: ``[G, B, N, K]`` centred, sharpened teacher patch probabilities (used only by the
                legacy / ``teacher_probs`` source; may be None otherwise).
            scores: ``[G, B, N]`` teacher attention scores per crop (``CropMasking.pair_scores``), used to pick the
                positives (top-k) and negatives (bottom-k).
        """
        z = teacher_patch_probs.detach() if self.uses_teacher else student_patch
        if z is None:
            raise ValueError("DenseContrastive: the embeddings for this source were not passed")
        if z.shape[:3] != scores.shape:
            raise ValueError(f"scores {tuple(scores.shape)} do not match embeddings {tuple(z.shape)} ([G,B,N])")
        pos_idx, neg_idx = select_pairs(scores.detach(), self.k)  # [G,B,k] each
        z = z.float()
        pos = F.normalize(_gather_views(z, pos_idx), dim=-1)  # [B,P,D], P = G·k
        neg = F.normalize(_gather_views(z, neg_idx), dim=-1)  # [B,P,D]
        s_pos = pos @ pos.transpose(1, 2) / self.tau  # [B,P,D] x [B,D,P] -> [B,P,P]  (already / τ)
        s_neg = pos @ neg.transpose(1, 2) / self.tau  # [B,P,P]: anchor t vs negative j
        b, p = s_pos.shape[:2]
        off_diag = ~torch.eye(p, dtype=torch.bool, device=s_pos.device)  # pairs (t, l), l ≠ t
        neg_lse = torch.logsumexp(s_neg, dim=-1, keepdim=True)  # [B,P,1] log Σ_j exp(s⁻_tj/τ)
        if self.legacy_formula:
            # B5b: log( s⁺ + Σ_j exp(s⁻/τ) ) with the raw cosine s⁺ (no exp, no /τ), normalised by P·B.
            cos_pos = s_pos * self.tau
            terms = -s_pos + torch.log(cos_pos + neg_lse.exp())  # [B,P,P]
            loss = terms.masked_select(off_diag.expand(b, p, p)).sum() / (p * b)
        else:
            terms = torch.logaddexp(s_pos, neg_lse) - s_pos  # [B,P,P] −log softmax of the positive
            loss = terms.masked_select(off_diag.expand(b, p, p)).mean()
        return self.weight * loss


def stack_pair_scores(masking: Any, captures: Sequence[Any], grid: tuple[int, int] | None = None) -> Tensor:
    """Teacher scores for every global crop, ``[G, B, N]``: ``masking.pair_scores(i, captures[i])`` stacked.

    Each crop's own strategy score (Raw_l, Pow, Log, rollout, ...), or the last block's raw [cls] attention when
    the crop's strategy has none (block / random) — build the masking with ``contrastive=True`` so that block is
    captured.
    """
    return torch.stack([masking.pair_scores(i, cap, grid) for i, cap in enumerate(captures)])  # G x [B,N] -> [G,B,N]


__all__ = ["DenseContrastive", "SOURCES", "select_pairs", "stack_pair_scores"]
