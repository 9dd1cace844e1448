"""The iBOT objective (methods-spec §4.3): [cls] cross-view loss + masked-patch (MIM) loss, with both centres.

The centres ``c`` (cls) and ``c2`` (patch) are buffers, so they checkpoint with the module. A step uses the previous
centres; :meth:`IBOTLoss.update_center` runs after the loss with the teacher logits of the step (all-reduced when
``torch.distributed`` is initialised).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class IBOTLoss(nn.Module):
    """
    Args:
        out_dim: K, the head's output width (cls and patch share it: shared head or patch_out_dim = out_dim).
        num_global: G, number of global crops (the teacher sees only these).
        student_temp: student softmax temperature (0.1).
        lambda1: weight of the [cls] term.
        lambda2: weight of the patch term.
        center_momentum: EMA momentum of both centres (0.9).
    """

    def __init__(self, out_dim: int, num_global: int, student_temp: float = 0.1, lambda1: float = 1.0,
                 lambda2: float = 1.0, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.num_global = num_global
        self.student_temp = student_temp
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, out_dim))

    def forward(self, student_cls: Tensor, student_patch: Tensor, teacher_cls: Tensor, teacher_patch: Tensor,
                masks: Tensor, teacher_temp: float, teacher_patch_temp: float) -> dict[str, Tensor]:
        """Both loss terms for one step.

        Args:
            student_cls: ``[V*B, K]`` logits of all V = G + L crops, crop-major, the G global crops first.
            student_patch: ``[M, K]`` logits of the masked global patches in ``masks.nonzero()`` order, or
                ``[G*B*Np, K]`` logits of every global patch.
            teacher_cls: ``[G*B, K]``.
            teacher_patch: ``[G*B, Np, K]``, or ``[M, K]`` (the masked rows only, ``masks.nonzero()`` order).
            masks: bool ``[G*B, Np]`` (True = masked for the student).
            teacher_temp: τ_t of this epoch; ``teacher_patch_temp``: τ_p of this epoch.

        Returns:
            ``loss`` (= λ1·cls + λ2·patch), ``loss_cls``, ``loss_patch`` (both unweighted, scalars), and the
            collapse diagnostics of the teacher [cls] targets: ``teacher_entropy`` (mean per-image entropy) and
            ``teacher_kl_to_mean`` (mean KL to the batch-mean distribution; ≈ 0 when every image gets the same
            target, i.e. collapse, whether uniform or one-hot).
        """
        g = self.num_global
        n_img = teacher_cls.shape[0] // g  # B
        v = student_cls.shape[0] // n_img  # V = G + L
        # [cls]: cross-entropy of every (teacher global q, student crop v != q) pair, batch-mean, pair-mean.
        t_prob = F.softmax((teacher_cls.float() - self.center) / teacher_temp, dim=-1).view(g, n_img, -1)  # [G,B,K]
        s_logp = F.log_softmax(student_cls.float() / self.student_temp, dim=-1).view(v, n_img, -1)  # [V,B,K]
        pair_ce = -torch.einsum("qbk,vbk->qv", t_prob, s_logp) / n_img  # [G,V] batch-mean CE per pair
        same_view = torch.eye(g, v, dtype=torch.bool, device=pair_ce.device)  # q == v (globals come first)
        n_pairs = g * v - g
        loss_cls = pair_ce.masked_fill(same_view, 0.0).sum() / max(1, n_pairs)
        # patch: per image, sum of CE over its masked tokens / max(1, #masked); then mean over ALL G*B images
        # (an image with an all-zero mask contributes 0 and still counts in the mean).
        flat_mask = masks.reshape(-1)  # [G*B*Np]
        if student_patch.shape[0] == flat_mask.numel():
            student_patch = student_patch[flat_mask]  # [G*B*Np, K] -> [M, K]
        image_idx = masks.nonzero()[:, 0]  # [M] image (row of masks) of each masked token
        tp = teacher_patch.float()
        tp = tp[masks] if tp.dim() == 3 else tp  # [G*B, Np, K] -> [M, K]
        tp_prob = F.softmax((tp - self.center2[0]) / teacher_patch_temp, dim=-1)
        token_ce = -(tp_prob * F.log_softmax(student_patch.float() / self.student_temp, dim=-1)).sum(-1)  # [M]
        per_image = torch.zeros(masks.shape[0], device=token_ce.device, dtype=token_ce.dtype)
        per_image = per_image.index_add(0, image_idx, token_ce)  # [G*B] summed CE
        per_image = per_image / masks.sum(1).clamp(min=1).to(per_image.dtype)
        loss_patch = per_image.mean()
        total = self.lambda1 * loss_cls + self.lambda2 * loss_patch
        with torch.no_grad():  # collapse diagnostics (DINO §5.3): both -> 0 = one-hot collapse, both -> ln K = uniform
            log_p = t_prob.clamp_min(1e-12).log()  # [G,B,K]
            entropy = -(t_prob * log_p).sum(-1).mean()
            batch_log = t_prob.mean(dim=(0, 1)).clamp_min(1e-12).log()  # [G,B,K] -> [K]
            kl_to_mean = (t_prob * (log_p - batch_log)).sum(-1).mean()
        return {"loss": total, "loss_cls": loss_cls.detach(), "loss_patch": loss_patch.detach(),
                "teacher_entropy": entropy, "teacher_kl_to_mean": kl_to_mean}

    @torch.no_grad()
    def update_center(self, teacher_cls: Tensor, teacher_patch: Tensor) -> None:
        """EMA of the batch-mean teacher logits (all patch tokens, not only masked ones), over every rank.

        Args:
            teacher_cls: ``[G*B, K]``; teacher_patch: ``[G*B, Np, K]``, or its mean over the patches ``[G*B, K]``.
        """
        cls_sum = teacher_cls.float().sum(0, keepdim=True)  # [1, K]
        per_image = teacher_patch.float()
        per_image = per_image.mean(1) if per_image.dim() == 3 else per_image  # [G*B,Np,K] -> [G*B,K]
        patch_sum = per_image.sum(0, keepdim=True).unsqueeze(0)  # [G*B,K] -> [1,1,K]
        count = torch.tensor([float(teacher_cls.shape[0])], device=cls_sum.device)
        if dist.is_available() and dist.is_initialized():
            packed = torch.cat([cls_sum.flatten(), patch_sum.flatten(), count])
            dist.all_reduce(packed)
            k = cls_sum.numel()
            cls_sum, patch_sum, count = packed[:k].view_as(cls_sum), packed[k:2 * k].view_as(patch_sum), packed[-1:]
        m = self.center_momentum
        self.center.mul_(m).add_(cls_sum / count, alpha=1 - m)
        self.center2.mul_(m).add_(patch_sum / count, alpha=1 - m)
