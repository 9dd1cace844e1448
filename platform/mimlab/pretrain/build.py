"""Assemble every trainable piece of an iBOT run from a :class:`~mimlab.config.pretrain.PretrainConfig`."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mimlab.models.ibot import IBOTHead, IBOTStudent
from mimlab.pretrain.loss import IBOTLoss
from mimlab.pretrain.optim import TeacherEMA, last_layer_params, param_groups

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def backbone_kwargs(cfg) -> dict[str, Any]:
    """Keyword arguments that rebuild the backbone (saved in ``backbone.json``): no classifier, any crop size."""
    kwargs = dict(cfg.model.kwargs)
    kwargs.setdefault("num_classes", 0)
    kwargs.setdefault("dynamic_img_size", True)
    return kwargs


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use a GradScaler)``: fp32 on CPU; ``auto`` = bf16 if supported else fp16+scaler."""
    if device.type != "cuda" or precision == "fp32":
        return None, False
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, False) if precision == "bf16" else (torch.float16, True)


@dataclass
class IBOTParts:
    """Everything one training process holds. ``student`` may be replaced by its DDP wrapper."""

    cfg: Any
    student: nn.Module
    teacher: nn.Module
    teacher_head: IBOTHead
    loss: IBOTLoss
    optimizer: torch.optim.Optimizer
    ema: TeacherEMA
    masking: Any
    contrastive: nn.Module | None
    device: torch.device
    amp_dtype: torch.dtype | None
    scaler: Any
    generator: torch.Generator
    patch_size: int
    last_layer: list[torch.Tensor] = field(default_factory=list)
    trainable: list[torch.Tensor] = field(default_factory=list)

    @property
    def raw_student(self) -> IBOTStudent:
        """The unwrapped student (DDP keeps it in ``.module``)."""
        return getattr(self.student, "module", self.student)


def _make_contrastive(cfg) -> nn.Module | None:
    if cfg.contrastive is None:
        return None
    from mimlab.pretrain.contrastive import DenseContrastive

    return DenseContrastive.from_config(cfg.contrastive)


def _init_source(cfg, with_heads: bool = True):
    """``(branch, description)`` of the checkpoint network ``model.init`` / ``model.init_from`` name."""
    from mimlab.models.checkpoints import read_checkpoint

    ckpt = read_checkpoint(cfg.model.init, with_heads=with_heads)
    student = cfg.model.init_from == "student"
    branch = ckpt.branch(student)
    which = ("student" if student else "teacher") if ckpt.student is not None else "network"
    return branch, f"{which} of '{ckpt.path}' ({ckpt.layout})"


def _fit_backbone(backbone: nn.Module, sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """The init state dict checked against ``backbone`` (classifier dropped, ``pos_embed`` resampled)."""
    from mimlab.models.loading import drop_classifier, fit_state_dict

    sd, _ = drop_classifier(backbone, sd)
    return fit_state_dict(backbone, sd, f"model.init '{cfg.model.init}'")


def fit_head(head: IBOTHead, sd: dict[str, torch.Tensor] | None) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The checkpoint's iBOT/DINO head as ``head``'s state dict, or ``(None, why it does not fit)``.

    A shared ``head`` ignores the file's ``last_layer2``; an unshared one copies ``last_layer`` when the file has
    no ``last_layer2`` (a shared head saved once).
    """
    if not sd:
        return None, "the checkpoint has no iBOT/DINO head"
    own = head.state_dict()
    sd = dict(sd)
    if not any(k.startswith("last_layer2.") for k in own):
        sd = {k: v for k, v in sd.items() if not k.startswith("last_layer2.")}
    elif not any(k.startswith("last_layer2.") for k in sd):
        shared = {k: v for k, v in sd.items() if k.startswith("last_layer.")}
        sd.update({k.replace("last_layer.", "last_layer2.", 1): v for k, v in shared.items()})
    for key, value in own.items():
        if key not in sd:
            return None, f"its head has no tensor '{key}'"
        if tuple(sd[key].shape) != tuple(value.shape):
            return None, (f"its head tensor '{key}' has shape {tuple(sd[key].shape)}, the config's head expects "
                          f"{tuple(value.shape)}")
    extra = [k for k in sd if k not in own]
    if extra:
        return None, f"its head has an unexpected tensor '{extra[0]}'"
    return sd, ""


def init_from_checkpoint(cfg, student: IBOTStudent, teacher: nn.Module, teacher_head: IBOTHead,
                         announce: bool = True) -> str:
    """Start student and teacher from the same weights of ``cfg.model.init`` (the teacher's unless
    ``model.init_from: student``): the backbone always (``pos_embed`` resampled to the model's grid), the
    iBOT/DINO head when the file has one of the config's shapes (else fresh), the student's mask token when present.

    Returns:
        the one line describing what was loaded (printed to stderr when ``announce``).

    Raises:
        UserError: unreadable checkpoint, no backbone, no such network, a backbone tensor that does not fit (named,
            with both shapes).
    """
    import sys

    branch, where = _init_source(cfg)
    backbone = student.encoder.backbone
    backbone.load_state_dict(_fit_backbone(backbone, branch.backbone, cfg), strict=True)
    token = student.encoder.mask_token
    if branch.mask_token is not None and branch.mask_token.shape == token.shape:
        with torch.no_grad():
            token.copy_(branch.mask_token)
    head_sd, why = fit_head(student.head, branch.head)
    if head_sd is not None:
        student.head.load_state_dict(head_sd, strict=True)
    teacher.load_state_dict(backbone.state_dict(), strict=True)
    teacher_head.load_state_dict(student.head.state_dict(), strict=True)
    line = (f"init: backbone and iBOT head from the {where}" if head_sd is not None else
            f"init: backbone from the {where}; the iBOT head starts fresh ({why})")
    if announce:
        print(line, file=sys.stderr, flush=True)
    return line


def build_parts(cfg, device: torch.device | str = "cpu", rank: int = 0) -> IBOTParts:
    """Student (masked ViT + head), EMA teacher initialised from it, loss with centres, AdamW, masking.

    With ``model.init`` both start from that checkpoint (:func:`init_from_checkpoint`).

    Raises:
        UserError: unknown timm model/kwargs, unknown masking strategy or key, layer beyond the depth.
    """
    from mimlab.masking import build_masking
    from mimlab.models.vit import create_backbone

    device = torch.device(device)
    torch.manual_seed(cfg.train.seed)
    kwargs = backbone_kwargs(cfg)
    # fused attention everywhere: the student's is never read, and the capture of a step makes only the teacher
    # blocks its masking strategy reads explicit, for that forward
    student_backbone = create_backbone(cfg.model.timm_name, drop_path_rate=cfg.model.drop_path,
                                       fused_attention=True, **kwargs)
    teacher = create_backbone(cfg.model.timm_name, drop_path_rate=0.0, fused_attention=True, **kwargs)
    teacher.load_state_dict(student_backbone.state_dict())
    h = cfg.head
    head = IBOTHead(student_backbone.embed_dim, h.out_dim, h.hidden_dim, h.bottleneck_dim, h.norm_last_layer, h.shared)
    teacher_head = copy.deepcopy(head)
    student = IBOTStudent(student_backbone, head).to(device).train()
    teacher = teacher.to(device).eval()
    teacher_head = teacher_head.to(device).eval()
    if cfg.model.init is not None:
        init_from_checkpoint(cfg, student, teacher, teacher_head, announce=rank == 0)
    for p in list(teacher.parameters()) + list(teacher_head.parameters()):
        p.requires_grad_(False)
    masking = build_masking(cfg.masking, num_global_crops=cfg.crops.global_crops, depth=len(teacher.blocks),
                            contrastive=cfg.contrastive is not None)
    loss = IBOTLoss(h.out_dim, cfg.crops.global_crops, cfg.loss.student_temp, cfg.loss.lambda1, cfg.loss.lambda2,
                    cfg.loss.center_momentum).to(device)
    optimizer = torch.optim.AdamW(param_groups(student), fused=True)  # one kernel per parameter, same update
    amp_dtype, use_scaler = resolve_precision(cfg.optim.precision, device)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    ema = TeacherEMA([(student.encoder.backbone, teacher), (student.head, teacher_head)])
    generator = torch.Generator(device="cpu")
    generator.manual_seed(cfg.train.seed * 1000 + rank)
    patch = student_backbone.patch_embed.patch_size
    patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    contrastive = _make_contrastive(cfg)
    return IBOTParts(cfg=cfg, student=student, teacher=teacher, teacher_head=teacher_head, loss=loss,
                     optimizer=optimizer, ema=ema, masking=masking, contrastive=contrastive, device=device,
                     amp_dtype=amp_dtype, scaler=scaler, generator=generator, patch_size=patch,
                     last_layer=last_layer_params(student),
                     trainable=[p for p in student.parameters() if p.requires_grad])


def preflight(cfg) -> None:
    """Check on the driver what would otherwise fail inside a Ray worker: the timm model and its kwargs, the
    masking strategies against the real depth, the contrastive section, the ``model.init`` checkpoint.

    Raises:
        UserError: one line naming the key (unknown strategy/key, layer beyond the depth, bad model kwargs), or the
            init checkpoint's problem (unreadable, no backbone, no such network, a tensor that does not fit).
    """
    from mimlab.masking import build_masking
    from mimlab.models.vit import create_backbone

    with torch.device("meta"):
        backbone = create_backbone(cfg.model.timm_name, **backbone_kwargs(cfg))
    depth = len(backbone.blocks)
    if cfg.model.init is not None:  # a missing file, no backbone or a wrong architecture fails here
        _fit_backbone(backbone, _init_source(cfg, with_heads=False)[0].backbone, cfg)
    build_masking(cfg.masking, num_global_crops=cfg.crops.global_crops, depth=depth,
                  contrastive=cfg.contrastive is not None)
    _make_contrastive(cfg)
