"""The one-epoch iBOT engine: pure torch, no Ray, no MLflow, no I/O.

One step = ONE teacher forward on the global crops (capturing the attention the masking strategies read), masks
per global crop, ONE student forward over every crop, the loss, a clipped AdamW step, the EMA teacher update and
the centre update.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.profiler import record_function

from mimlab.errors import UserError
from mimlab.models.ibot import teacher_embed, teacher_forward
from mimlab.pretrain.build import IBOTParts
from mimlab.pretrain.optim import cancel_gradients, clip_per_parameter, set_lr_wd
from mimlab.pretrain.schedules import Schedules


class DivergedLoss(UserError):
    """The loss became NaN/inf; the run stops and the last good checkpoint is left untouched."""


@dataclass
class Crops:
    """One multi-crop batch, normalised, crop-major.

    Attributes:
        global_crops: ``[G*B, 3, S, S]``.
        local_crops: ``[L*B, 3, s, s]`` or None.
        batch_size: B.
    """

    global_crops: Tensor
    local_crops: Tensor | None
    batch_size: int


def crops_from_columns(columns: dict[str, Any], num_global: int, num_local: int, mean, std,
                       device: torch.device | str = "cpu") -> Crops:
    """Stack ``global_i`` / ``local_i`` uint8 ``[B,S,S,3]`` columns (Ray Data or local loader) into :class:`Crops`.

    uint8 is moved to the device first and normalised there (4x less traffic than float). When the crop stage
    deferred the colour augmentations (``crops.device: gpu``: ``<name>_params`` columns), they run here, batched,
    on ``device``.
    """
    from mimlab.data.transforms import apply_deferred, standardise

    def stack(prefix: str, n: int) -> Tensor:
        parts = [apply_deferred(columns, f"{prefix}_{i}", device) for i in range(n)]  # n x [B,3,S,S] in [0,255]
        return standardise(torch.cat(parts, 0), mean, std)  # G x [B,3,S,S] -> [G*B,3,S,S]

    g = stack("global", num_global)
    local = stack("local", num_local) if num_local > 0 else None
    return Crops(g, local, g.shape[0] // num_global)


class _CropView:
    """The capture restricted to global crop ``q``'s images (rows ``q*B:(q+1)*B``) — what masking reads."""

    def __init__(self, cap: Any, q: int, b: int) -> None:
        rows = slice(q * b, (q + 1) * b)
        self.attn = {l: t[rows] for l, t in cap.attn.items()}  # [G*B,H,T,T] -> [B,H,T,T]
        self.logits = {l: t[rows] for l, t in cap.logits.items()}
        self.keys = {l: t[rows] for l, t in cap.keys.items()}  # [G*B,H,T,D] -> [B,H,T,D]
        self.num_prefix_tokens = cap.num_prefix_tokens
        self.grid = cap.grid


def _autocast(parts: IBOTParts):
    if parts.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=parts.device.type, dtype=parts.amp_dtype)


def teacher_and_masks(parts: IBOTParts, crops: Crops, *, all_patches: bool = True,
                      ) -> tuple[dict[str, Tensor], Tensor, list[_CropView] | None]:
    """The ONE teacher forward of the step (capturing attention when a strategy needs it) and the student masks.

    Args:
        all_patches: return the teacher's patch logits of every patch. ``False`` applies the head's last layer only
            where the loss reads it: at the masked positions, and to the per-image patch mean (the centre's input).

    Returns:
        teacher outputs (``cls`` ``[G*B,K]``, ``patch`` ``[G*B,Np,K]``, or with ``all_patches=False`` ``patch``
        ``[M,K]`` in ``masks.nonzero()`` order and ``patch_mean`` ``[G*B,K]``), masks bool ``[G*B, Np]``, views.
    """
    from mimlab.models.capture import AttentionCapture

    g, b = parts.cfg.crops.global_crops, crops.batch_size
    size = crops.global_crops.shape[-1]
    grid = (size // parts.patch_size, size // parts.patch_size)
    masking = parts.masking
    views = None
    forward = teacher_forward if all_patches else teacher_embed
    with torch.no_grad(), _autocast(parts):
        if masking.needs_attention:
            with AttentionCapture(parts.teacher, layers=masking.layers, keys=masking.needs_keys,
                                  logits=masking.needs_logits, detach=True) as cap:
                t_out = forward(parts.teacher, parts.teacher_head, crops.global_crops)
            views = [_CropView(cap, q, b) for q in range(g)]
        else:
            t_out = forward(parts.teacher, parts.teacher_head, crops.global_crops)
        masks = torch.cat([masking(q, b, grid, views[q] if views else None, parts.generator).to(parts.device)
                           for q in range(g)])  # G x [B,Np] -> [G*B,Np]
        if not all_patches:
            z = t_out.pop("patch_z")  # [G*B,Np,bottleneck]
            layer = parts.teacher_head.patch_layer
            t_out["patch"] = layer(z[masks])  # [M,bottleneck] -> [M,K]
            t_out["patch_mean"] = layer(z.mean(1))  # [G*B,K] = mean over Np of the logits (the layer is linear)
    return t_out, masks, views


def _all_finite(loss: Tensor) -> bool:
    flag = (~torch.isfinite(loss.detach())).float().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() == 0)


def train_step(parts: IBOTParts, crops: Crops, epoch: int, values: dict[str, float]) -> dict[str, Tensor]:
    """One optimisation step. ``values`` = this iteration's schedules (:meth:`Schedules.at`).

    Returns:
        detached scalar tensors: ``loss``, ``loss_cls``, ``loss_patch`` (+ ``loss_contrastive``),
        ``masked_fraction``.

    Raises:
        DivergedLoss: the loss is NaN/inf on any rank (checked before the update, so the weights stay finite).
    """
    cfg = parts.cfg
    set_lr_wd(parts.optimizer, values["lr"], values["wd"])
    contrastive = parts.contrastive
    teacher_all = contrastive is not None and contrastive.uses_teacher  # reads every teacher patch probability
    # the record_function regions name the step's phases in a torch.profiler trace (bench/pretrain.py
    # --step-profile); they cost nothing measurable when no profiler runs
    with record_function("ibot.teacher_and_masks"):
        t_out, masks, views = teacher_and_masks(parts, crops, all_patches=teacher_all)
    with _autocast(parts), record_function("ibot.student_forward"):
        all_patches = contrastive is not None and contrastive.source == "student_head" and not contrastive.uses_teacher
        s_out = parts.student(crops.global_crops, crops.local_crops, masks, all_patches=all_patches)
    with torch.autocast(device_type=parts.device.type, enabled=False), record_function("ibot.loss"):  # fp32
        losses = parts.loss(s_out["cls"], s_out["patch"], t_out["cls"], t_out["patch"], masks,
                            values["teacher_temp"], values["teacher_patch_temp"])
        total = losses["loss"]
        if contrastive is not None:
            extra = _contrastive_term(parts, s_out, t_out, masks, views, crops.batch_size, values)
            total = total + extra
            losses["loss_contrastive"] = extra.detach()
    if not _all_finite(total):
        raise DivergedLoss(f"the loss diverged (non-finite) at epoch {epoch}: "
                           f"cls={float(losses['loss_cls']):.4g}, patch={float(losses['loss_patch']):.4g}")
    opt = parts.optimizer
    opt.zero_grad(set_to_none=True)
    with record_function("ibot.backward"):
        if parts.scaler is not None:
            parts.scaler.scale(total).backward()
            parts.scaler.unscale_(opt)
        else:
            total.backward()
    with record_function("ibot.update"):  # clip, optimiser step, EMA teacher, centres
        clip_per_parameter(parts.trainable, cfg.optim.clip_grad)
        if epoch < cfg.optim.freeze_last_layer:
            cancel_gradients(parts.last_layer)
        if parts.scaler is not None:
            parts.scaler.step(opt)
            parts.scaler.update()
        else:
            opt.step()
        parts.ema.update(values["momentum"])
        parts.loss.update_center(t_out["cls"], t_out.get("patch_mean", t_out["patch"]))
    out = {k: v.detach() for k, v in losses.items()}
    out["loss"] = total.detach()
    out["masked_fraction"] = masks.float().mean()
    return out


def _contrastive_term(parts: IBOTParts, s_out, t_out, masks, views, b: int, values) -> Tensor:
    """Dense contrastive third term (methods-spec §6); pairs picked from the same captured teacher attention."""
    from mimlab.pretrain.contrastive import stack_pair_scores

    g, n = parts.cfg.crops.global_crops, masks.shape[1]
    term = parts.contrastive
    scores = stack_pair_scores(parts.masking, views)  # [G,B,Np]
    if term.source == "student_tokens":
        student = s_out["patch_tokens"].reshape(g, b, n, -1)  # [G*B,Np,D] -> [G,B,Np,D]
    else:
        student = s_out["patch"].view(g, b, n, -1)  # [G*B*Np,K] -> [G,B,Np,K]
    teacher_probs = None
    if term.uses_teacher:
        centred = (t_out["patch"].float() - parts.loss.center2) / values["teacher_patch_temp"]
        teacher_probs = torch.softmax(centred, dim=-1).view(g, b, n, -1)  # [G*B,Np,K] -> [G,B,Np,K]
    return term(student, teacher_probs, scores)


def train_one_epoch(parts: IBOTParts, batches: Iterable[Crops], epoch: int, schedules: Schedules, *,
                    max_steps: int | None = None,
                    on_step: Callable[[int, dict[str, float]], None] | None = None,
                    log_every: int = 10) -> dict[str, float]:
    """Run one epoch over ``batches`` (at most ``max_steps``; default ``schedules.steps_per_epoch``).

    ``on_step(global_step, metrics)`` is called every ``log_every`` steps with floats (loss terms, lr, wd,
    momentum, teacher temperatures, masked fraction, images/s).

    Returns:
        epoch means of the loss terms and the masked fraction, ``images_per_s``, ``steps``, the last schedule
        values.
    """
    max_steps = max_steps or schedules.steps_per_epoch
    parts.student.train()
    sums: dict[str, Tensor] = {}
    images, steps = 0, 0
    values: dict[str, float] = {}
    start = tick = time.perf_counter()
    window = 0
    for step, crops in enumerate(batches):
        if step >= max_steps:
            break
        values = schedules.at(epoch, step)
        out = train_step(parts, crops, epoch, values)
        for k, v in out.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        n = crops.global_crops.shape[0] // parts.cfg.crops.global_crops
        images += n
        window += n
        steps += 1
        if on_step is not None and (step + 1) % log_every == 0:
            now = time.perf_counter()
            metrics = {k: float(v) for k, v in out.items()}
            metrics.update(values)
            metrics["images_per_s"] = window / max(now - tick, 1e-9)
            tick, window = now, 0
            on_step(epoch * schedules.steps_per_epoch + step, metrics)
    elapsed = time.perf_counter() - start
    result = {k: float(v) / max(1, steps) for k, v in sums.items()}
    result.update(values)
    result["images_per_s"] = images / max(elapsed, 1e-9)
    result["steps"] = steps
    return result
