"""The pretraining checkpoint format of docs/architecture.md, written to a local folder.

``backbone.json`` (``timm_name``, ``kwargs``, ``img_size``, ``mean``, ``std``, ``epoch``), ``teacher_backbone.safetensors``,
``student_backbone.safetensors`` (timm state-dict names, loadable by ``mimlab.models.loading.load_model``) and
``state.pt`` (full training state: student, teacher, heads, optimiser, scaler, centres, epoch, resolved config,
mask generator, metric history). Ray Train uploads the folder to ``storage_path``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from mimlab.errors import UserError
from mimlab.pretrain.build import IMAGENET_MEAN, IMAGENET_STD, IBOTParts, backbone_kwargs

ARCH_SECTIONS = ("model", "head")


def _save_safetensors(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(path))


def save_checkpoint(folder: str | os.PathLike, parts: IBOTParts, epoch: int, history: dict[str, Any]) -> str:
    """Write the checkpoint of a finished ``epoch`` (0-based) into ``folder`` (created). Returns the folder."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cfg = parts.cfg
    student = parts.raw_student
    meta = {"timm_name": cfg.model.timm_name, "kwargs": backbone_kwargs(cfg), "img_size": cfg.crops.global_size,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "epoch": epoch}
    _save_safetensors(parts.teacher, out / "teacher_backbone.safetensors")
    _save_safetensors(student.encoder.backbone, out / "student_backbone.safetensors")
    state = {
        "epoch": epoch,
        "config": cfg.resolved(),
        "student": student.state_dict(),
        "teacher": parts.teacher.state_dict(),
        "teacher_head": parts.teacher_head.state_dict(),
        "loss": parts.loss.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
        "generator": parts.generator.get_state(),
        "history": history,
    }
    torch.save(state, out / "state.pt.tmp")
    os.replace(out / "state.pt.tmp", out / "state.pt")
    (out / "backbone.json").write_text(json.dumps(meta, indent=2))
    return str(out)


def load_state(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / "state.pt"
    if not path.is_file():
        raise UserError(f"checkpoint '{folder}' has no state.pt (not a complete pretraining checkpoint)")
    return torch.load(path, map_location="cpu", weights_only=False)


def _diff(a: Any, b: Any, prefix: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            d = _diff(a.get(key), b.get(key), f"{prefix}.{key}")
            if d:
                return d
        return None
    return None if a == b else f"{prefix}: {a!r} in the checkpoint vs {b!r} in the config"


def check_compatible(state: dict[str, Any], cfg, where: str) -> None:
    """Refuse to resume a checkpoint of another architecture (model or head), naming the first difference."""
    saved = state.get("config", {})
    now = cfg.resolved()
    for section in ARCH_SECTIONS:
        d = _diff(saved.get(section), now[section], section)
        if d:
            raise UserError(f"cannot resume from '{where}': it holds a different architecture ({d}); "
                            f"use a new run name / output folder or the same model")


def restore(parts: IBOTParts, state: dict[str, Any], where: str) -> int:
    """Load ``state`` into ``parts``; returns the next epoch to run."""
    check_compatible(state, parts.cfg, where)
    parts.raw_student.load_state_dict(state["student"])
    parts.teacher.load_state_dict(state["teacher"])
    parts.teacher_head.load_state_dict(state["teacher_head"])
    parts.loss.load_state_dict(state["loss"])
    parts.optimizer.load_state_dict(state["optimizer"])
    if parts.scaler is not None and state.get("scaler"):
        parts.scaler.load_state_dict(state["scaler"])
    if state.get("generator") is not None:
        parts.generator.set_state(state["generator"])
    return int(state["epoch"]) + 1


class LocalCheckpoints:
    """``out_dir/checkpoint-EEEE`` folders plus a ``latest`` pointer written last (a crash never leaves a
    pointer to a half-written folder). Keeps the newest ``keep`` folders."""

    def __init__(self, out_dir: str | os.PathLike, keep: int = 2) -> None:
        self.root = Path(out_dir)
        self.keep = keep

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        folder = self.root / pointer.read_text().strip()
        return folder if (folder / "state.pt").is_file() else None

    def save(self, parts: IBOTParts, epoch: int, history: dict[str, Any]) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"checkpoint-{epoch:04d}"
        folder = self.root / name
        if folder.exists():
            shutil.rmtree(folder)
        save_checkpoint(folder, parts, epoch, history)
        tmp = self.root / "latest.tmp"
        tmp.write_text(name)
        os.replace(tmp, self.root / "latest")
        olds = sorted(p for p in self.root.glob("checkpoint-*") if p.is_dir() and p.name != name)
        for old in olds[: max(0, len(olds) - (self.keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
        return str(folder)
