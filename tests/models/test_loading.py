"""load_model: timm names with local weights, pretrain checkpoints, custom callables, and clear errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import save_file

from mimlab.errors import UserError
from mimlab.models.loading import load_model
from mimlab.models.vit import create_backbone

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_timm_name_nested_dataparallel_pth(tmp_path):
    src = create_backbone("resnet18", num_classes=4)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    loaded = load_model("resnet18", path, img_size=64)
    assert loaded.kind == "cnn" and loaded.img_size == 64 and loaded.module.num_classes == 4
    assert _same_weights(loaded.module, src)


def test_timm_vit_safetensors_resamples_pos_embed(tmp_path):
    src = create_backbone("vit_tiny_patch16_224", img_size=64, num_classes=3)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    loaded = load_model("vit_tiny_patch16_224", path, img_size=32)
    assert loaded.kind == "vit" and loaded.img_size == 32
    assert loaded.module.pos_embed.shape == (1, 1 + 4, 192)  # 32/16 = 2x2 grid + cls
    torch.testing.assert_close(loaded.module.pos_embed[:, 0], src.pos_embed[:, 0])  # cls embedding kept
    out = loaded.module(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 3)


def test_random_weights_warn(capsys):
    loaded = load_model("resnet18", img_size=32, num_classes=2)
    assert "RANDOM weights" in capsys.readouterr().err
    assert loaded.mean == pytest.approx((0.485, 0.456, 0.406))


def _write_checkpoint(root, with_head=False):
    root.mkdir()
    teacher = create_backbone("vit_tiny_patch16_224", **TINY, num_classes=0)
    student = create_backbone("vit_tiny_patch16_224", **TINY, num_classes=0)
    save_file(teacher.state_dict(), str(root / "teacher_backbone.safetensors"))
    save_file(student.state_dict(), str(root / "student_backbone.safetensors"))
    meta = {"timm_name": "vit_tiny_patch16_224", "kwargs": {**TINY, "num_classes": 0}, "img_size": 32,
            "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "epoch": 3}
    (root / "backbone.json").write_text(json.dumps(meta))
    return teacher, student


def test_pretrain_checkpoint_teacher_student_and_file(tmp_path):
    teacher, student = _write_checkpoint(tmp_path / "ckpt")
    lt = load_model(str(tmp_path / "ckpt"))
    assert _same_weights(lt.module, teacher) and lt.mean == (0.1, 0.2, 0.3) and lt.img_size == 32
    ls = load_model(str(tmp_path / "ckpt"), student=True)
    assert _same_weights(ls.module, student)
    lf = load_model(str(tmp_path / "ckpt" / "student_backbone.safetensors"))
    assert _same_weights(lf.module, student)
    big = load_model(str(tmp_path / "ckpt"), img_size=48)
    assert big.module.pos_embed.shape == (1, 1 + 36, 32)
    with_head = load_model(str(tmp_path / "ckpt"), num_classes=5)
    assert with_head.module(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_custom_callable(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\n"
        "def small():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(4, 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_models", None)
    loaded = load_model("my_models:small", img_size=32)
    assert loaded.kind == "cnn" and loaded.img_size == 32
    path = tmp_path / "w.pt"
    torch.save(loaded.module.state_dict(), path)
    again = load_model("my_models:small", path, img_size=32)
    assert _same_weights(again.module, loaded.module)


@pytest.mark.parametrize(
    "args,match",
    [
        (("no_such_net_xyz",), "unknown timm model"),
        (("nonexistent_pkg_abc.models:net",), "cannot import module 'nonexistent_pkg_abc.models'"),
        (("resnet18", "/nonexistent/w.pth"), "does not exist"),
        (("/nonexistent/ckpt/teacher.safetensors",), "no such checkpoint"),
    ],
)
def test_bad_inputs_are_user_errors(args, match):
    with pytest.raises(UserError, match=match):
        load_model(*args)


def test_mismatched_weights_name_first_tensor(tmp_path):
    src = create_backbone("resnet18", num_classes=4)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    with pytest.raises(UserError, match=r"tensor 'layer1\.2\.conv1\.weight' is missing"):
        load_model("resnet34", path)
    with pytest.raises(UserError, match="is a weights file: name the architecture"):
        load_model(str(path))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="unreadable"):
        load_model("resnet18", junk)
