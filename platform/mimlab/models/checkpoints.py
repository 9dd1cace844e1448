"""Read a local checkpoint in any layout people have and split it into backbone / projection head / mask token.

Layouts understood (all read with ``torch.load(weights_only=True)``, ``argparse.Namespace`` allow-listed; nothing
is downloaded and no other Python object is ever unpickled):

* **DINO / iBOT training checkpoints** ``{'student', 'teacher', 'optimizer', 'epoch', 'args': Namespace, ...}``:
  student keys ``module.backbone.*`` / ``module.head.*``, teacher keys ``backbone.*`` / ``head.*``. iBOT's
  ``backbone.masked_embed`` is the student's mask token.
* **Released backbone-only weights** (DINO ``dino_deitsmall16_pretrain.pth``, iBOT ``checkpoint_teacher.pth``):
  a bare state dict, or one nested under ``state_dict`` / ``model`` / ``module``.
* **DeiT and MAE** ``{'model': ..., 'optimizer': ..., 'args': Namespace}``: DeiT's classifier ``head.*`` stays
  with the backbone (the timm classifier); MAE's decoder (``decoder_*``) and its decoder ``mask_token`` are dropped.
* **timm state dicts** (bare, ``module.`` prefixes stripped).
* **``platform pretrain`` checkpoints**: a ``checkpoint-EEEE`` folder (``backbone.json``, ``teacher_backbone`` /
  ``student_backbone.safetensors``, heads from ``state.pt``), the run folder with its ``latest`` pointer, or
  one ``*.safetensors`` file.

Head tensors are returned in :class:`mimlab.models.ibot.IBOTHead` names (``mlp.0.weight`` ...,
``last_layer.weight_g`` / ``weight_v``); the parametrised weight norm of newer torch
(``parametrizations.weight.original0/1``) and a plain ``last_layer.weight`` are converted.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mimlab.errors import UserError

SAFE_GLOBALS = [argparse.Namespace]
_NESTED_KEYS = ("state_dict", "model", "module")
_HEAD_PREFIXES = ("head.mlp.", "head.last_layer")  # a DINO/iBOT projection head in an unprefixed state dict


@dataclass
class Branch:
    """One network of a checkpoint (teacher, student, or the only one).

    Attributes:
        backbone: timm state-dict names -> tensors (a classifier ``head.*`` included when the file has one).
        head: iBOT/DINO projection head in :class:`~mimlab.models.ibot.IBOTHead` names, or ``None``.
        mask_token: the student's mask token ``[1, 1, D]`` (iBOT ``masked_embed``), or ``None``.
    """

    backbone: dict[str, Tensor]
    head: dict[str, Tensor] | None = None
    mask_token: Tensor | None = None


@dataclass
class Checkpoint:
    """A parsed checkpoint: its layout (for messages) and its teacher / student branches.

    A file holding one network (released backbone, DeiT, MAE, timm) has it as ``teacher`` and no ``student``.
    ``meta`` is the ``backbone.json`` of a ``platform pretrain`` checkpoint (``None`` otherwise).
    """

    path: str
    layout: str
    teacher: Branch | None
    student: Branch | None
    meta: dict[str, Any] | None = None

    def branch(self, student: bool = False) -> Branch:
        """The student (``student=True``) or the teacher / only network.

        Raises:
            UserError: the checkpoint has no such network.
        """
        if student:
            if self.student is None:
                raise UserError(f"checkpoint '{self.path}' ({self.layout}) has no student: it holds one network; "
                                f"drop --student / model.init_from: student")
            return self.student
        if self.teacher is None:
            raise UserError(f"checkpoint '{self.path}' ({self.layout}) has no teacher: use --student "
                            f"(or model.init_from: student)")
        return self.teacher


# -- reading -------------------------------------------------------------------------------------------------------
def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    missing = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if missing:
        return (f"it holds a Python object of type {missing.group(1)}, which is never unpickled (only tensors, "
                f"plain data and argparse.Namespace are)")
    return text.splitlines()[0] if text else type(err).__name__


def safe_load(path: str | Path) -> Any:
    """``torch.load`` a .pth/.pt/.th/.bin file with ``weights_only=True`` and ``argparse.Namespace`` allowed, or
    read a ``.safetensors`` file.

    Raises:
        UserError: the file is missing or cannot be read safely (one line naming it and why).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decode failure is the user's file
        raise UserError(f"checkpoint '{path}' is unreadable: {_first_line(err)}") from None


def _tensors(obj: Any) -> dict[str, Tensor]:
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)} if isinstance(obj, Mapping) else {}


def _unwrap(obj: Any) -> Any:
    """Descend ``state_dict`` / ``model`` / ``module`` nesting while the level holds no tensors itself."""
    for _ in range(3):
        if not isinstance(obj, Mapping) or _tensors(obj):
            break
        nested = next((k for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = obj[nested]
    return obj


# -- splitting -----------------------------------------------------------------------------------------------------
def head_names(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """DINO/iBOT head tensors in :class:`IBOTHead` names (weight norm as ``weight_g`` / ``weight_v``)."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.endswith(".parametrizations.weight.original0"):
            key = key.replace(".parametrizations.weight.original0", ".weight_g")
        elif key.endswith(".parametrizations.weight.original1"):
            key = key.replace(".parametrizations.weight.original1", ".weight_v")
        elif re.fullmatch(r"last_layer2?\.weight", key) and value.ndim == 2:  # plain Linear: g = ||W|| per row
            out[key + "_v"] = value
            out[key + "_g"] = value.norm(dim=1, keepdim=True)
            continue
        out[key] = value
    return out


def split_network(sd: Mapping[str, Tensor]) -> Branch:
    """Split one network's state dict into backbone / projection head / mask token (see the module docstring)."""
    sd = {k.removeprefix("module."): v for k, v in _tensors(sd).items()}
    if any(k.startswith("encoder.backbone.") for k in sd):  # platform IBOTStudent
        backbone = {k.removeprefix("encoder.backbone."): v for k, v in sd.items() if k.startswith("encoder.backbone.")}
        head = {k.removeprefix("head."): v for k, v in sd.items() if k.startswith("head.")}
        mask = sd.get("encoder.mask_token")
    elif any(k.startswith("backbone.") for k in sd):  # DINO / iBOT MultiCropWrapper
        backbone = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
        head = {k.removeprefix("head."): v for k, v in sd.items() if k.startswith("head.")}
        mask = None
    else:  # one bare network; a DINO head may sit beside it, a classifier 'head.weight' belongs to it
        head = {k.removeprefix("head."): v for k, v in sd.items() if k.startswith(_HEAD_PREFIXES)}
        backbone = {k: v for k, v in sd.items() if not k.startswith(_HEAD_PREFIXES)}
        mask = None
    if any(k.startswith("decoder") for k in backbone):  # MAE: the decoder and its (decoder-width) mask token
        backbone = {k: v for k, v in backbone.items() if not k.startswith("decoder") and k != "mask_token"}
    for name in ("masked_embed", "mask_token"):  # iBOT / DINOv2: the encoder's mask token
        if name in backbone:
            token = backbone.pop(name)
            mask = token if mask is None else mask
    if mask is not None:
        mask = mask.reshape(1, 1, -1)
    return Branch(backbone=backbone, head=head_names(head) or None, mask_token=mask)


def _platform_folder(path: Path, with_heads: bool) -> Checkpoint:
    latest = path / "latest"
    if not (path / "backbone.json").is_file() and latest.is_file():
        target = path / latest.read_text().strip()
        if target.is_dir():
            path = target
    meta_path = path / "backbone.json"
    if not meta_path.is_file():
        raise UserError(f"folder '{path}' is not a pretrain checkpoint: it has no backbone.json (give a checkpoint "
                        f"file, or a `platform pretrain` checkpoint-EEEE folder)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"'{meta_path}' is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or "timm_name" not in meta:
        raise UserError(f"'{meta_path}' is not a valid backbone.json (needs 'timm_name')")
    state: dict[str, Any] = {}
    if with_heads and (path / "state.pt").is_file():  # the full training state: read only when heads are wanted
        try:
            loaded = safe_load(path / "state.pt")
            state = loaded if isinstance(loaded, Mapping) else {}
        except UserError:
            state = {}  # heads are optional: the backbones below are what every consumer needs
    branches: dict[str, Branch | None] = {}
    for role in ("teacher", "student"):
        file = path / f"{role}_backbone.safetensors"
        branches[role] = Branch(backbone=_tensors(safe_load(file))) if file.is_file() else None
    if branches["teacher"] is None and branches["student"] is None:
        raise UserError(f"`platform pretrain` checkpoint '{path}' holds no backbone: "
                        f"teacher_backbone.safetensors and student_backbone.safetensors are missing")
    if branches["student"] is not None and isinstance(state.get("student"), Mapping):
        full = split_network(state["student"])
        branches["student"].head, branches["student"].mask_token = full.head, full.mask_token
    if branches["teacher"] is not None and isinstance(state.get("teacher_head"), Mapping):
        branches["teacher"].head = head_names(_tensors(state["teacher_head"])) or None
    return Checkpoint(str(path), "platform pretrain checkpoint", branches["teacher"], branches["student"], meta)


def read_checkpoint(path: str | Path, with_heads: bool = True) -> Checkpoint:
    """Parse a local checkpoint file or ``platform pretrain`` folder into its teacher / student branches.

    ``with_heads=False`` skips a ``platform pretrain`` folder's ``state.pt`` (heads, optimiser: only pretraining
    init needs them).

    Raises:
        UserError: missing or unreadable file, a file holding no backbone tensors (one line each).
    """
    path = Path(path)
    if path.is_dir():
        return _platform_folder(path, with_heads)
    obj = safe_load(path)
    if not isinstance(obj, Mapping):
        raise UserError(f"checkpoint '{path}' holds a {type(obj).__name__}, not a state dict")
    roles = {r: obj[r] for r in ("teacher", "student") if _tensors(obj.get(r))}
    if roles:
        ours = "teacher_head" in obj and "config" in obj
        layout = "platform pretrain state.pt" if ours else "DINO/iBOT training checkpoint"
        teacher = split_network(roles["teacher"]) if "teacher" in roles else None
        student = split_network(roles["student"]) if "student" in roles else None
        if teacher is not None and teacher.head is None and _tensors(obj.get("teacher_head")):
            teacher.head = head_names(_tensors(obj["teacher_head"]))
        checkpoint = Checkpoint(str(path), layout, teacher, student)
    else:
        inner = _unwrap(obj)
        if not _tensors(inner):
            keys = ", ".join(map(str, list(obj)[:6]))
            raise UserError(f"checkpoint '{path}' holds no backbone: no tensors at the top level or under "
                            f"'student'/'teacher'/'state_dict'/'model' (its keys: {keys})")
        layout = "DeiT/MAE {'model': ...} checkpoint" if inner is obj.get("model") else "state dict"
        checkpoint = Checkpoint(str(path), layout, split_network(inner), None)
    for role in ("teacher", "student"):
        branch = getattr(checkpoint, role)
        if branch is not None and not branch.backbone:
            raise UserError(f"checkpoint '{path}' ({checkpoint.layout}) holds no backbone: its {role} has only "
                            f"head tensors")
    return checkpoint
