"""Write tiny checkpoints in the key structure each project saves (DINO, iBOT, released backbones, DeiT, MAE, timm,
``platform pretrain``), with distinct teacher and student weights, and return the source tensors to compare with.

Key structures, as the projects' own save code writes them:
* DINO ``main_dino.py``: ``{'student': DDP(MultiCropWrapper).state_dict() -> 'module.backbone.*', 'module.head.*';
  'teacher': MultiCropWrapper.state_dict() -> 'backbone.*', 'head.*'; 'optimizer', 'epoch', 'args': Namespace,
  'dino_loss': {'center'}, 'fp16_scaler'}``; the head's weight-normed ``last_layer.weight_g`` / ``weight_v``.
* iBOT ``main_ibot.py``: the same plus ``backbone.masked_embed`` ``[1, D]``, a shared ``last_layer2`` saved again
  under its own name, ``'ibot_loss': {'center', 'center2'}``.
* released backbones: a bare backbone state dict (DINO), or one under ``'state_dict'`` (iBOT's teacher release).
* DeiT ``main.py``: ``{'model': sd with classifier 'head.*', 'optimizer', 'lr_scheduler', 'epoch', 'model_ema',
  'scaler', 'args'}``; MAE ``main_pretrain.py``: ``{'model': encoder + 'mask_token' + 'decoder_*', 'optimizer',
  'epoch', 'scaler', 'args'}``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

import tiny_vit
from mimlab.models.ibot import IBOTHead

HEAD = dict(out_dim=64, hidden_dim=48, bottleneck_dim=16)


@dataclass
class Written:
    """A checkpoint on disk and what it holds: backbone and head tensors per network (timm / IBOTHead names)."""

    path: Path
    teacher: dict[str, torch.Tensor]
    student: dict[str, torch.Tensor] | None
    teacher_head: dict[str, torch.Tensor] | None = None
    student_head: dict[str, torch.Tensor] | None = None
    mask_token: torch.Tensor | None = None
    callable: str = "tiny_vit:backbone"
    extra: dict = field(default_factory=dict)


def _net(seed: int, classifier: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = tiny_vit.classifier() if classifier else tiny_vit.backbone()
    with torch.no_grad():  # timm zero-inits cls_token/biases: make every tensor distinct per seed
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _head(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    head = IBOTHead(tiny_vit.ARCH["embed_dim"], **HEAD)
    with torch.no_grad():
        head.last_layer.weight_g.mul_(1.0 + seed)  # distinct gains per network
    return {k: v.detach().clone() for k, v in head.state_dict().items()}


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(arch="vit_tiny", patch_size=8, out_dim=HEAD["out_dim"], lr=0.0005, epochs=100,
                              output_dir="/tmp/out", use_fp16=True, global_crops_scale=(0.4, 1.0), **kw)


def _optimizer(sd: dict[str, torch.Tensor]) -> dict:
    state = {i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(v)} for i, v in enumerate(sd.values())}
    group = {"lr": 0.001, "betas": (0.9, 0.999), "weight_decay": 0.04, "params": list(range(len(sd)))}
    return {"state": state, "param_groups": [group]}


def dino(tmp: Path) -> Written:
    t, s, th, sh = _net(0), _net(1), _head(10), _head(11)
    ckpt = {
        "student": {**{f"module.backbone.{k}": v for k, v in s.items()},
                    **{f"module.head.{k}": v for k, v in sh.items()}},
        "teacher": {**{f"backbone.{k}": v for k, v in t.items()}, **{f"head.{k}": v for k, v in th.items()}},
        "optimizer": _optimizer(s), "epoch": 101, "args": _args(), "dino_loss": {"center": torch.zeros(1, 64)},
        "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 10},
    }
    path = tmp / "dino_checkpoint.pth"
    torch.save(ckpt, path)
    return Written(path, t, s, th, sh)


def ibot(tmp: Path) -> Written:
    """iBOT, with torch's newer parametrised weight norm on the student head (``parametrizations.weight.*``)."""
    t, s, th, sh = _net(2), _net(3), _head(12), _head(13)
    token = torch.randn(1, tiny_vit.ARCH["embed_dim"])

    def param_norm(head):
        out = {}
        for k, v in head.items():
            k = k.replace("last_layer.weight_g", "last_layer.parametrizations.weight.original0")
            out[k.replace("last_layer.weight_v", "last_layer.parametrizations.weight.original1")] = v
        return out

    def shared_twice(head):  # iBOT registers the shared last layer under both names
        again = {k.replace("last_layer.", "last_layer2.", 1): v for k, v in head.items() if "last_layer." in k}
        return {**head, **again}

    ckpt = {
        "student": {**{f"module.backbone.{k}": v for k, v in s.items()}, "module.backbone.masked_embed": token,
                    **{f"module.head.{k}": v for k, v in shared_twice(param_norm(sh)).items()}},
        "teacher": {**{f"backbone.{k}": v for k, v in t.items()}, "backbone.masked_embed": token.clone(),
                    **{f"head.{k}": v for k, v in shared_twice(th).items()}},
        "optimizer": _optimizer(s), "epoch": 800, "args": _args(shared_head=True, pred_ratio=[0.0, 0.3]),
        "ibot_loss": {"center": torch.zeros(1, 64), "center2": torch.zeros(1, 1, 64)},
    }
    path = tmp / "ibot_checkpoint.pth"
    torch.save(ckpt, path)
    return Written(path, t, s, th, sh, mask_token=token.reshape(1, 1, -1))


def released(tmp: Path) -> Written:
    t = _net(4)
    path = tmp / "dino_vittiny8_pretrain.pth"
    torch.save(t, path)
    return Written(path, t, None)


def released_nested(tmp: Path) -> Written:
    t = _net(5)
    path = tmp / "checkpoint_teacher.pth"
    torch.save({"state_dict": t}, path)
    return Written(path, t, None)


def deit(tmp: Path) -> Written:
    t = _net(6, classifier=True)
    ckpt = {"model": t, "optimizer": _optimizer(t), "lr_scheduler": {"last_epoch": 299}, "epoch": 299,
            "model_ema": {k: v + 1 for k, v in t.items()}, "scaler": {"scale": 1024.0},
            "args": _args(model="deit_tiny_patch16_224", drop_path=0.1)}
    path = tmp / "deit_tiny_patch16_224.pth"
    torch.save(ckpt, path)
    return Written(path, t, None, callable="tiny_vit:classifier")


def mae(tmp: Path) -> Written:
    t = _net(7)
    decoder = {"mask_token": torch.randn(1, 1, 24), "decoder_embed.weight": torch.randn(24, 32),
               "decoder_embed.bias": torch.randn(24), "decoder_pos_embed": torch.randn(1, 17, 24),
               "decoder_blocks.0.norm1.weight": torch.randn(24), "decoder_norm.weight": torch.randn(24),
               "decoder_pred.weight": torch.randn(192, 24)}
    ckpt = {"model": {**t, **decoder}, "optimizer": _optimizer(t), "epoch": 799, "scaler": {"scale": 1024.0},
            "args": _args(model="mae_vit_tiny", mask_ratio=0.75, norm_pix_loss=True)}
    path = tmp / "mae_pretrain_checkpoint.pth"
    torch.save(ckpt, path)
    return Written(path, t, None)


def timm_sd(tmp: Path) -> Written:
    t = _net(8)
    path = tmp / "timm_model.safetensors"
    save_file(t, str(path))
    return Written(path, t, None)


def timm_dataparallel(tmp: Path) -> Written:
    t = _net(9)
    path = tmp / "timm_model_dp.pth"
    torch.save({f"module.{k}": v for k, v in t.items()}, path)
    return Written(path, t, None)


def platform(tmp: Path) -> Written:
    """A real ``platform pretrain`` checkpoint folder (save_checkpoint of built parts), teacher != student."""
    from mimlab.pretrain.build import build_parts
    from mimlab.pretrain.checkpoint import save_checkpoint

    cfg = pretrain_cfg()
    parts = build_parts(cfg)
    with torch.no_grad():
        for p in parts.raw_student.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for p in list(parts.teacher.parameters()) + list(parts.teacher_head.parameters()):
            p.sub_(torch.randn_like(p) * 0.02)
    folder = save_checkpoint(tmp / "platform-run" / "checkpoint-0000", parts, 0, {})
    (tmp / "platform-run" / "latest").write_text("checkpoint-0000")
    st = parts.raw_student
    clone = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa: E731
    return Written(Path(folder), clone(parts.teacher), clone(st.encoder.backbone), clone(parts.teacher_head),
                   clone(st.head), mask_token=st.encoder.mask_token.detach().clone(),
                   extra={"run": tmp / "platform-run"})


TEACHER_STUDENT = {"dino": dino, "ibot": ibot, "platform": platform}
SINGLE = {"released": released, "released_nested": released_nested, "deit": deit, "mae": mae, "timm": timm_sd,
          "timm_dataparallel": timm_dataparallel}
ALL = {**TEACHER_STUDENT, **SINGLE}


def pretrain_cfg(*overrides: str):
    """A micro pretraining config whose backbone is :mod:`tiny_vit` and whose head matches :data:`HEAD`."""
    from mimlab.config.pretrain import load_pretrain_config

    tree = {
        "model": {"timm_name": tiny_vit.TIMM, "kwargs": dict(tiny_vit.ARCH), "drop_path": 0.0},
        "head": dict(HEAD),
        "crops": {"global_crops": 2, "global_size": 32, "local_crops": 2, "local_size": 16},
        "masking": {"strategy": "block"},
        "loss": {"warmup_teacher_temp_epochs": 0},
        "optim": {"epochs": 1, "batch_size_per_worker": 8, "warmup_epochs": 0, "lr": 0.001},
        "train": {"steps_per_epoch": 1, "log_every": 1, "storage_path": "unused"},
        "eval": {"knn_every": 0, "probe_images": 0, "knn_k": 5},
    }
    return load_pretrain_config(tree, list(overrides))
