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


def build_parts(cfg, device: torch.device | str = "cpu", rank: int = 0) -> IBOTParts:
    """Student (masked ViT + head), EMA teacher initialised from it, loss with centres, AdamW, masking.

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
    masking strategies against the real depth, the contrastive section.

    Raises:
        UserError: one line naming the key (unknown strategy/key, layer beyond the depth, bad model kwargs).
    """
    from mimlab.masking import build_masking
    from mimlab.models.vit import create_backbone

    with torch.device("meta"):
        backbone = create_backbone(cfg.model.timm_name, **backbone_kwargs(cfg))
    depth = len(backbone.blocks)
    build_masking(cfg.masking, num_global_crops=cfg.crops.global_crops, depth=depth,
                  contrastive=cfg.contrastive is not None)
    _make_contrastive(cfg)
