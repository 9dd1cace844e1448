"""Optimiser plumbing: weight-decay groups, per-parameter clipping, freezing the last layer, EMA teacher."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def param_groups(module: nn.Module) -> list[dict]:
    """Group 0: parameters with >= 2 dims (decayed by the schedule); group 1: biases and 1-D parameters (wd 0).

    ``pos_embed``, ``cls_token`` and ``mask_token`` are >= 2-D and so decayed (inherited DINO behaviour).
    """
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "no_decay": True}]


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    """Apply this iteration's lr to every group and wd to the decayed group only."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if not group.get("no_decay", False):
            group["weight_decay"] = wd


@torch.no_grad()
def clip_per_parameter(params: list[Tensor], max_norm: float) -> Tensor | None:
    """Scale each parameter's gradient to norm <= ``max_norm`` independently (iBOT ``clip_gradients``).

    Vectorised with ``torch._foreach_*``; no host sync. Returns the pre-clip norms ``[P]`` (or None).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or max_norm <= 0:
        return None
    norms = torch._foreach_norm(grads)
    coefs = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, coefs)
    return torch.stack(norms)


def last_layer_params(module: nn.Module) -> list[Tensor]:
    """Parameters named ``*last_layer*`` (the head's prototypes) — frozen during the first epoch(s)."""
    return [p for n, p in module.named_parameters() if "last_layer" in n]


def cancel_gradients(params: Iterable[Tensor]) -> None:
    """Drop the gradients of ``params`` (iBOT ``cancel_gradients_last_layer``)."""
    for p in params:
        p.grad = None


class TeacherEMA:
    """``teacher <- m * teacher + (1 - m) * student`` over the parameter names the two share.

    The parameter lists are collected once at construction (methods-spec §4.1 performance note).

    Args:
        pairs: ``(student_module, teacher_module)`` pairs matched by ``named_parameters`` names.
    """

    def __init__(self, pairs: Iterable[tuple[nn.Module, nn.Module]]) -> None:
        self.student: list[Tensor] = []
        self.teacher: list[Tensor] = []
        for s_mod, t_mod in pairs:
            t_params = dict(t_mod.named_parameters())
            for name, p in s_mod.named_parameters():
                if name in t_params:
                    self.student.append(p)
                    self.teacher.append(t_params[name])
        if not self.teacher:
            raise ValueError("EMA found no parameter shared by student and teacher")

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        torch._foreach_mul_(self.teacher, momentum)
        torch._foreach_add_(self.teacher, [p.detach() for p in self.student], alpha=1.0 - momentum)
