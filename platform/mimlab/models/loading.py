"""Load a model for explanation/evaluation: a timm name (+ local weights), a ``platform pretrain`` checkpoint, or a
``package.module:callable``. Never touches the network.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mimlab.errors import UserError
from mimlab.models.checkpoints import read_checkpoint
from mimlab.models.vit import create_backbone, disable_fused_attention, is_vit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".pth", ".pt", ".th", ".safetensors", ".bin")


@dataclass
class LoadedModel:
    """A model ready for inference: eval mode, fused attention off, with its own preprocessing statistics.

    Attributes:
        module: the ``nn.Module`` (images ``[B,3,H,W]`` normalised → logits ``[B,K]`` or features).
        kind: ``"vit"`` (timm-style blocks with attention) or ``"cnn"`` (anything else).
        mean, std: per-channel normalisation the model expects (ImageNet when unknown).
        img_size: the input side length in pixels.
        name: a human-readable name (timm name, checkpoint path or callable path).
    """

    module: nn.Module
    kind: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    img_size: int
    name: str

    @property
    def depth(self) -> int:
        """Number of transformer blocks (ViTs only)."""
        if self.kind != "vit":
            raise UserError(f"model '{self.name}' is a CNN: it has no transformer blocks")
        return len(self.module.blocks)


# -- state dicts ---------------------------------------------------------------------------------------------------
def read_state_dict(path: str | Path, student: bool = False) -> dict[str, torch.Tensor]:
    """The backbone state dict (timm names) of a checkpoint in any layout of :mod:`mimlab.models.checkpoints`:
    the teacher (or the only network), or the student with ``student=True``.

    Raises:
        UserError: unreadable file, no backbone, ``student`` on a checkpoint without one.
    """
    return read_checkpoint(path, with_heads=False).branch(student).backbone


def _resample_pos_embed(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resample ``pos_embed`` to the model's patch grid when the checkpoint was trained at another image size.

    Left as it is when the widths differ or the file's grid is not square (the shape check then names it).
    """
    pe = sd.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if pe is None or target is None or pe.shape == target.shape or pe.ndim != 3 or pe.shape[-1] != target.shape[-1]:
        return sd
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    side = int(round((pe.shape[1] - prefix) ** 0.5))
    if side * side != pe.shape[1] - prefix:
        return sd
    grid = tuple(model.patch_embed.grid_size)
    sd = dict(sd)
    sd["pos_embed"] = resample_abs_pos_embed(pe, new_size=list(grid), old_size=[side, side],
                                             num_prefix_tokens=prefix, verbose=False)
    return sd


def drop_classifier(model: nn.Module, sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove the file's classifier tensors (``head.*``, ``head_dist.*``) that ``model`` has no place for
    (a backbone built with ``num_classes=0``). Returns the state dict and the dropped names."""
    own = model.state_dict()
    dropped = [k for k in sd if k not in own and k.split(".", 1)[0] in ("head", "head_dist")]
    return {k: v for k, v in sd.items() if k not in dropped}, dropped


def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load ``sd`` strictly (``pos_embed`` resampled to the model's grid); on any mismatch name the first
    mismatched tensor and both shapes in one line."""
    model.load_state_dict(fit_state_dict(model, sd, source), strict=True)


def fit_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``sd`` with ``pos_embed`` resampled to ``model``'s grid, after checking every tensor's name and shape
    (works on a ``meta``-device model: only shapes are read).

    Raises:
        UserError: the first missing, mismatched or unexpected tensor, with both shapes.
    """
    sd = _resample_pos_embed(sd, model)
    own = model.state_dict()
    for key, value in own.items():
        if key not in sd:
            raise UserError(f"weights '{source}' do not fit the model: tensor '{key}' is missing from the file")
        if tuple(sd[key].shape) != tuple(value.shape):
            raise UserError(
                f"weights '{source}' do not fit the model: tensor '{key}' has shape {tuple(sd[key].shape)}, "
                f"the model expects {tuple(value.shape)}"
            )
    extra = [k for k in sd if k not in own]
    if extra:
        raise UserError(f"weights '{source}' do not fit the model: unexpected tensor '{extra[0]}' in the file")
    return sd


# -- model kinds ---------------------------------------------------------------------------------------------------
def _stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(x) for x in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(x) for x in cfg.get("std", IMAGENET_STD))
    return mean, std


def _native_size(model: nn.Module) -> int:
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if size is not None:
        return int(size[0] if isinstance(size, (tuple, list)) else size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return int(cfg.get("input_size", (3, 224, 224))[-1])


def _classifier_classes(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> int | None:
    """Number of classes of the checkpoint's classifier head (``None`` when the file has no head)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier", "head")
    head = heads[0] if isinstance(heads, (tuple, list)) else heads
    weight = sd.get(f"{head}.weight")
    if weight is None:
        return 0
    return int(weight.shape[0])


def _build_timm(name: str, img_size: int | None, num_classes: int | None, extra: dict[str, Any]) -> nn.Module:
    kwargs = dict(extra)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        try:
            return create_backbone(name, **{**kwargs, "img_size": img_size})
        except UserError:
            pass  # CNNs take any size and reject the img_size argument
    return create_backbone(name, **kwargs)


def _load_timm(name: str, weights: str | None, img_size: int | None, num_classes: int | None,
               student: bool) -> LoadedModel:
    model = _build_timm(name, img_size, num_classes, {})
    if weights is None:
        if student:
            raise UserError(f"--student needs --weights (a checkpoint with a student) for timm model '{name}'")
        print(f"warning: no --weights for timm model '{name}': using RANDOM weights (nothing is downloaded)",
              file=sys.stderr)
    else:
        sd = read_state_dict(weights, student)
        classes = _classifier_classes(model, sd)
        if num_classes is None and classes is not None and classes != getattr(model, "num_classes", classes):
            model = _build_timm(name, img_size, classes, {})
        load_weights(model, sd, str(weights))
    return _finish(model, name, img_size)


def _finish(model: nn.Module, name: str, img_size: int | None, mean=None, std=None) -> LoadedModel:
    disable_fused_attention(model)
    model.eval()
    m, s = _stats(model)
    return LoadedModel(
        module=model,
        kind="vit" if is_vit(model) else "cnn",
        mean=tuple(mean) if mean is not None else m,
        std=tuple(std) if std is not None else s,
        img_size=int(img_size) if img_size is not None else _native_size(model),
        name=name,
    )


def _pretrain_backbone(path: Path, student: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """``(backbone.json, backbone state dict, source name)`` of a pretrain checkpoint folder (teacher or student)
    or of one of its .safetensors files."""
    if path.is_dir():
        ckpt = read_checkpoint(path, with_heads=False)
        return dict(ckpt.meta or {}), ckpt.branch(student).backbone, ckpt.path
    meta_path = path.parent / "backbone.json"
    if not meta_path.is_file():
        raise UserError(f"'{path}' is not a pretrain checkpoint: '{meta_path}' is missing")
    try:
        meta = json.loads(meta_path.read_text())
        meta["timm_name"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"'{meta_path}' is not a valid backbone.json (needs 'timm_name'): {err}") from None
    return meta, read_state_dict(path), str(path)


def _load_checkpoint(path: Path, img_size: int | None, num_classes: int | None, student: bool) -> LoadedModel:
    meta, sd, weights = _pretrain_backbone(path, student)
    timm_name = meta["timm_name"]
    kwargs = dict(meta.get("kwargs") or {})
    native = kwargs.get("img_size", meta.get("img_size"))
    patch = kwargs.get("patch_size")
    if img_size is not None and isinstance(patch, int) and img_size < patch:
        raise UserError(f"--img-size {img_size} is smaller than one patch of '{path}' (patch size {patch})")
    if img_size is not None:
        kwargs["img_size"] = img_size
    elif native is not None:
        kwargs["img_size"] = native
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    else:
        probe = create_backbone(timm_name, **{**kwargs, "num_classes": 0})
        heads = _classifier_classes(probe, sd)
        kwargs["num_classes"] = heads or 0
    model = create_backbone(timm_name, **kwargs)
    if num_classes:
        own = model.state_dict()
        sd = {**{k: v for k, v in own.items() if k not in sd}, **sd}  # fresh head when the backbone has none
    load_weights(model, sd, str(weights))
    return _finish(model, str(path), img_size or kwargs.get("img_size"), meta.get("mean"), meta.get("std"))


def _load_callable(target: str, weights: str | None, img_size: int | None, student: bool) -> LoadedModel:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is a bad --model
        raise UserError(f"custom model '{target}': cannot import module '{module_name}' ({type(err).__name__}: "
                        f"{err})") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UserError(f"custom model '{target}': module '{module_name}' has no attribute '{attr}'")
    if not callable(factory):
        raise UserError(f"custom model '{target}': '{attr}' is not callable")
    model = factory()
    if not isinstance(model, nn.Module):
        raise UserError(f"custom model '{target}' returned {type(model).__name__}, expected a torch.nn.Module")
    if weights is not None:
        load_weights(model, read_state_dict(weights, student), str(weights))
    elif student:
        raise UserError(f"--student needs --weights (a checkpoint with a student) for custom model '{target}'")
    return _finish(model, target, img_size)


def load_model(
    model: str,
    weights: str | Path | None = None,
    *,
    img_size: int | None = None,
    num_classes: int | None = None,
    student: bool = False,
) -> LoadedModel:
    """Resolve ``model`` into a :class:`LoadedModel`.

    Args:
        model: (a) a timm model name; (b) a ``platform pretrain`` checkpoint directory (``backbone.json`` +
            ``teacher_backbone.safetensors``) or a ``.safetensors`` file beside a ``backbone.json``; (c)
            ``package.module:callable`` returning an ``nn.Module``.
        weights: local weights for (a) and (c), in any layout of :mod:`mimlab.models.checkpoints`: DINO/iBOT
            training checkpoints, released backbones, DeiT/MAE ``{'model': ...}``, timm state dicts, a
            ``platform pretrain`` folder; read with ``weights_only=True``. ``pos_embed`` is resampled to the
            model's patch grid. A timm name without weights gets random weights and a warning.
        img_size: input side in pixels (default: the model's own).
        num_classes: classifier size (default: the checkpoint's head, else timm's default).
        student: load the checkpoint's student instead of its teacher (an error when it has none).
    """
    weights = str(weights) if weights is not None else None
    path = Path(model)
    if path.exists() and (path.is_dir() or path.suffix == ".safetensors"):
        if weights is not None:
            raise UserError(f"--weights is not used with a pretrain checkpoint ('{model}' already holds weights)")
        return _load_checkpoint(path, img_size, num_classes, student)
    if ":" in model and not path.exists():
        return _load_callable(model, weights, img_size, student)
    if path.is_file() and path.suffix in WEIGHT_SUFFIXES:
        raise UserError(f"--model '{model}' is a weights file: name the architecture in --model (a timm name or "
                        f"package.module:callable) and pass the file with --weights")
    if path.suffix in WEIGHT_SUFFIXES or "/" in model:
        raise UserError(f"--model '{model}': no such checkpoint (expected a timm name, a pretrain checkpoint "
                        f"directory, or package.module:callable)")
    return _load_timm(model, weights, img_size, num_classes, student)
