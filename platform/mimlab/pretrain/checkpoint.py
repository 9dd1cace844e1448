"""The pretraining checkpoint format of docs/architecture.md, written to a local folder.

``backbone.json`` (``timm_name``, ``kwargs``, ``img_size``, ``mean``, ``std``, ``epoch``), ``teacher_backbone.safetensors``,
``student_backbone.safetensors`` (timm state-dict names, loadable by ``mimlab.models.loading.load_model``) and
``state.pt`` (full training state: student, teacher, heads, optimiser, scaler, centres, epoch, resolved config,
mask generator, metric history). Ray Train uploads the folder to ``storage_path``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable
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


_VERIFIED: dict[str, dict[str, Any]] = {}  # the one state LocalCheckpoints.latest() just loaded, by folder
_WARNED: set[str] = set()  # fallbacks already announced by this process


def load_state(folder: str | os.PathLike, fs: Any = None) -> dict[str, Any]:
    """The training state of a checkpoint folder, loaded with ``weights_only=True``: tensors and plain containers
    only, never arbitrary pickled objects (a storage path may be a shared bucket).

    Args:
        folder: the checkpoint folder (a local path, or a path on ``fs``).
        fs: an fsspec filesystem holding ``folder`` (``None`` = local).

    Raises:
        UserError: no ``state.pt``, or one that is truncated, corrupt or holds anything but weights and plain data.
    """
    cached = _VERIFIED.pop(str(folder), None)
    if cached is not None:
        return cached
    if fs is None:
        path: Any = Path(folder) / "state.pt"
        present = path.is_file()
    else:
        path = f"{str(folder).rstrip('/')}/state.pt"
        present = fs.isfile(path)
    if not present:
        raise UserError(f"checkpoint '{folder}' has no state.pt (not a complete pretraining checkpoint)")
    try:
        if fs is None:
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            with fs.open(path, "rb") as fh:
                state = torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError/UnpicklingError/EOFError/... for bad bytes
        raise UserError(f"checkpoint '{path}' is unreadable ({err.__class__.__name__}: "
                        f"{' '.join(str(err).split())[:160]})") from None
    if not isinstance(state, dict) or "epoch" not in state:
        raise UserError(f"checkpoint '{path}' is not a pretraining state (expected a dict with 'epoch')")
    return state


def first_readable(candidates: Iterable[tuple[str, Callable[[], dict[str, Any]]]], where: str,
                   announce: bool = True) -> tuple[dict[str, Any], str] | None:
    """The state of the first candidate checkpoint that loads, newest first: the one resume rule of every mode.

    A corrupt or truncated newest checkpoint falls back to the previous one kept, with one line on stderr
    (once per process and checkpoint; ``announce=False`` on the ranks and processes that must stay quiet).

    Args:
        candidates: ``(label, load)`` pairs, newest first; ``load()`` returns the state or raises ``UserError``.
        where: the run folder, named in the error.

    Returns:
        ``(state, label)`` of the first readable candidate; ``None`` when there are no candidates.

    Raises:
        UserError: candidates exist but none of them is readable (one line naming each failure).
    """
    failures: list[str] = []
    for label, load in candidates:
        try:
            state = load()
        except UserError as err:
            failures.append(str(err))
            continue
        if failures and announce and label not in _WARNED:
            _WARNED.add(label)
            print(f"warning: {'; '.join(failures)}; resuming from the previous checkpoint '{label}' "
                  f"(epoch {state['epoch']})", file=sys.stderr, flush=True)
        return state, label
    if failures:
        raise UserError(f"no readable checkpoint left in '{where}' ({'; '.join(failures)}); "
                        "use a new --name or remove the folder to start over")
    return None


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

    def pointed(self) -> Path | None:
        """The folder the ``latest`` pointer names (the last one written), without reading it."""
        pointer = self.root / "latest"
        return self.root / pointer.read_text().strip() if pointer.is_file() else None

    def latest(self) -> Path | None:
        """The newest checkpoint folder whose ``state.pt`` loads (:func:`first_readable`: a corrupt newest one
        falls back to the previous one kept, with one line), or ``None`` when there is none yet.

        Raises:
            UserError: checkpoints exist but none of them is readable.
        """
        named = self.pointed()
        if named is None:
            return None
        kept = sorted((p for p in self.root.glob("checkpoint-*") if p.is_dir() and p != named), reverse=True)
        found = first_readable(((str(f), lambda f=f: load_state(f)) for f in (named, *kept)), str(self.root))
        if found is None:
            return None
        state, folder = found
        _VERIFIED.clear()
        _VERIFIED[folder] = state  # the training function loads it next: read the bytes once
        return Path(folder)

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
