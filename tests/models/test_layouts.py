"""Every checkpoint layout people have (tests/models/layouts.py writes each with its project's key structure) loads
with the right tensors into explain, k-NN and pretraining; bad checkpoints give one error line."""

from __future__ import annotations

import fractions

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import layouts
import tiny_vit
from mimlab.errors import UserError
from mimlab.models.checkpoints import read_checkpoint
from mimlab.models.loading import load_model
from mimlab.pretrain.build import build_parts

LIMIT = 40


def _equal(state: dict, want: dict) -> None:
    assert state.keys() == want.keys()
    for k, v in want.items():
        assert torch.equal(state[k], v), k


def _source_model(tensors: dict, classifier: bool = False):
    """Independent reference: the micro ViT with the source tensors put in by torch itself."""
    model = tiny_vit.classifier() if classifier else tiny_vit.backbone()
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def _model_arg(w: layouts.Written) -> tuple[str, str | None]:
    return w.callable, str(w.path)


@pytest.mark.parametrize("layout", sorted(layouts.ALL))
def test_load_model_takes_the_teacher_by_default_and_the_student_on_request(layout, tmp_path):
    w = layouts.ALL[layout](tmp_path)
    model, weights = _model_arg(w)
    _equal(load_model(model, weights).module.state_dict(), w.teacher)
    if w.student is not None:
        _equal(load_model(model, weights, student=True).module.state_dict(), w.student)
    else:
        with pytest.raises(UserError, match="has no student"):
            load_model(model, weights, student=True)


def test_platform_checkpoint_folder_and_run_folder_need_no_architecture(tmp_path):
    w = layouts.platform(tmp_path)
    _equal(load_model(str(w.path)).module.state_dict(), w.teacher)
    _equal(load_model(str(w.extra["run"]), student=True).module.state_dict(), w.student)  # follows 'latest'


def test_training_checkpoints_keep_heads_and_mask_token_apart_from_the_backbone(tmp_path):
    for make in (layouts.dino, layouts.ibot, layouts.platform):
        (tmp_path / make.__name__).mkdir()
        w = make(tmp_path / make.__name__)
        ckpt = read_checkpoint(w.path)
        shared = lambda head: {k: v for k, v in head.items() if not k.startswith("last_layer2.")}  # noqa: E731
        _equal(shared(ckpt.teacher.head), w.teacher_head)
        _equal(shared(ckpt.student.head), w.student_head)
        if w.mask_token is not None:
            assert torch.equal(ckpt.student.mask_token, w.mask_token)
    mae = read_checkpoint(layouts.mae(tmp_path).path)
    assert mae.teacher.head is None and mae.teacher.mask_token is None  # MAE's decoder token is not the encoder's


@pytest.mark.parametrize("layout", sorted(layouts.ALL))
def test_explain_cli_maps_equal_the_source_networks_maps(layout, tmp_path):
    from typer.testing import CliRunner

    from mimlab.cli import app
    from mimlab.explain import build_explainer
    from mimlab.explain.many import explain_many
    from mimlab.explain.run import preprocess
    from mimlab.models.loading import _finish

    w = layouts.ALL[layout](tmp_path)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    model, weights = _model_arg(w)
    roles = [("teacher", w.teacher)] + ([("student", w.student)] if w.student is not None else [])
    maps = {}
    for role, tensors in roles:
        args = ["explain", str(tmp_path / "img.png"), "--model", model, "--weights", weights, "--method", "raw",
                "--img-size", "32", "--out", str(tmp_path / role), "--save-maps", str(tmp_path / f"{role}.npz")]
        res = CliRunner().invoke(app, args + (["--student"] if role == "student" else []))
        assert res.exit_code == 0, res.output
        got = np.load(tmp_path / f"{role}.npz")["raw"]
        ref = _finish(_source_model(tensors, classifier=layout == "deit"), "ref", 32)
        _, batch = preprocess([image], 32, ref.mean, ref.std)
        want = explain_many(ref, batch, [build_explainer("raw", ref)], None)["raw"].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        maps[role] = got
    if "student" in maps:
        assert not np.allclose(maps["teacher"], maps["student"])  # the two networks really differ


@pytest.mark.parametrize("layout", sorted(layouts.ALL))
def test_knn_of_each_layout_equals_knn_of_its_source_tensors(layout, tmp_path, synthetic_shards):
    from mimlab.data.sources import decode_rgb, load_records
    from mimlab.data.transforms import eval_transform
    from mimlab.evaluation.api import run_knn
    from mimlab.evaluation.features import extract
    from mimlab.evaluation.knn import knn_classify

    w = layouts.ALL[layout](tmp_path)
    model, weights = _model_arg(w)
    student = w.student is not None
    res = run_knn(model, weights=weights, student=student, train=synthetic_shards, val=synthetic_shards, ks=(5,), limit=LIMIT,
                  log_mlflow=False, workers=0)
    # independent path: torch's load_state_dict of the source tensors + extract + knn_classify
    src = _source_model(w.student if student else w.teacher, classifier=layout == "deit")
    feats = {}
    for split in ("train", "val"):
        recs = load_records(synthetic_shards, split=split, limit=LIMIT)
        imgs = np.stack([eval_transform(decode_rgb(r.image), 32) for r in recs])
        feats[split] = extract(src, [(imgs, [r.label for r in recs])], mean=src.pretrained_cfg["mean"],
                               std=src.pretrained_cfg["std"])
    want = knn_classify(*feats["train"], *feats["val"], ks=(5,))
    assert res["results"] == {str(k): v for k, v in want.items()}
    assert res["backbone"] == ("student" if student else "teacher")


@pytest.mark.parametrize("layout", sorted(layouts.ALL))
def test_pretraining_starts_student_and_teacher_from_the_teacher_by_default(layout, tmp_path, capsys):
    w = layouts.ALL[layout](tmp_path)
    parts = build_parts(layouts.pretrain_cfg(f"model.init={w.path}"))
    want = {k: v for k, v in w.teacher.items() if not k.startswith("head.")}  # DeiT's classifier is not used
    _equal(parts.raw_student.encoder.backbone.state_dict(), want)
    _equal(parts.teacher.state_dict(), want)
    line = capsys.readouterr().err
    if w.teacher_head is not None:
        _equal(parts.raw_student.head.state_dict(), w.teacher_head)
        _equal(parts.teacher_head.state_dict(), w.teacher_head)
        assert "backbone and iBOT head from the teacher" in line
    else:
        _equal(parts.raw_student.head.state_dict(), parts.teacher_head.state_dict())
        assert line.count("\n") == 1 and "the iBOT head starts fresh (the checkpoint has no iBOT/DINO head)" in line


@pytest.mark.parametrize("layout", sorted(layouts.TEACHER_STUDENT))
def test_pretraining_init_from_student_takes_the_students_backbone_head_and_mask_token(layout, tmp_path):
    w = layouts.TEACHER_STUDENT[layout](tmp_path)
    parts = build_parts(layouts.pretrain_cfg(f"model.init={w.path}", "model.init_from=student"))
    _equal(parts.raw_student.encoder.backbone.state_dict(), w.student)
    _equal(parts.teacher.state_dict(), w.student)
    _equal(parts.raw_student.head.state_dict(), w.student_head)
    _equal(parts.teacher_head.state_dict(), w.student_head)
    if w.mask_token is not None:
        assert torch.equal(parts.raw_student.encoder.mask_token.detach(), w.mask_token)


def test_pos_embed_is_resampled_to_the_crop_grid(tmp_path):
    from mimlab.models.vit import create_backbone

    torch.manual_seed(0)
    big = create_backbone(tiny_vit.TIMM, **{**tiny_vit.ARCH, "img_size": 48}, num_classes=0)  # 6x6 grid
    sd = {k: v.detach().clone() for k, v in big.state_dict().items()}
    sd["pos_embed"] = torch.randn_like(sd["pos_embed"])
    torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()}}, tmp_path / "c.pth")
    parts = build_parts(layouts.pretrain_cfg(f"model.init={tmp_path / 'c.pth'}"))  # 32 px crops: 4x4 grid
    got = parts.raw_student.encoder.backbone.pos_embed.detach()
    # independent: torch's bicubic (antialiased) resize of the 6x6 grid to 4x4, cls position kept
    grid = sd["pos_embed"][:, 1:].reshape(1, 6, 6, 32).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(4, 4), mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, 16, 32)
    assert got.shape == (1, 17, 32)
    torch.testing.assert_close(got[:, :1], sd["pos_embed"][:, :1])
    torch.testing.assert_close(got[:, 1:], want)
    torch.testing.assert_close(parts.teacher.pos_embed, got)


def test_a_head_of_other_shapes_starts_fresh_and_says_which_tensor(tmp_path, capsys):
    w = layouts.dino(tmp_path)
    parts = build_parts(layouts.pretrain_cfg(f"model.init={w.path}", "head.out_dim=128"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "the iBOT head starts fresh" in err[0] and "'last_layer.weight_v' has shape (64, 16)" in err[0]
    assert "(128, 16)" in err[0]
    _equal(parts.teacher.state_dict(), w.teacher)  # the backbone still came from the file
    _equal(parts.teacher_head.state_dict(), parts.raw_student.head.state_dict())


def test_an_unshared_head_takes_the_shared_last_layer_twice(tmp_path):
    w = layouts.dino(tmp_path)
    parts = build_parts(layouts.pretrain_cfg(f"model.init={w.path}", "head.shared=false"))
    head = parts.raw_student.head.state_dict()
    assert torch.equal(head["last_layer2.weight_v"], w.teacher_head["last_layer.weight_v"])
    assert torch.equal(head["last_layer.weight_g"], w.teacher_head["last_layer.weight_g"])


# -- bad input: one line each -------------------------------------------------------------------------------------
@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(path)
    return path


def test_unreadable_checkpoint_is_one_line(tmp_path, image, cli_error):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    cli_error(["explain", image, "--model", "tiny_vit:backbone", "--weights", junk, "--out", tmp_path / "o"],
              f"checkpoint '{junk}' is unreadable", protect=[junk])


def test_a_pickled_python_object_is_refused_not_run(tmp_path, image, cli_error):
    evil = tmp_path / "evil.pth"
    torch.save({"model": layouts._net(0), "args": fractions.Fraction(1, 3)}, evil)
    cli_error(["explain", image, "--model", "tiny_vit:backbone", "--weights", evil, "--out", tmp_path / "o"],
              "fractions.Fraction", "never unpickled", protect=[evil])


def test_checkpoint_without_backbone_is_one_line(tmp_path, cli_error):
    empty = tmp_path / "optim_only.pth"
    torch.save({"optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, empty)
    cli_error(["eval", "knn", "tiny_vit:backbone", "--weights", empty, "--workers", "0", "--no-mlflow"],
              f"checkpoint '{empty}' holds no backbone", protect=[empty])


def test_wrong_architecture_names_the_tensor_and_both_shapes(tmp_path, cli_error):
    w = layouts.dino(tmp_path)
    cli_error(["eval", "knn", "vit_small_patch16_224", "--weights", w.path, "--workers", "0", "--no-mlflow"],
              "tensor 'cls_token' has shape (1, 1, 32), the model expects (1, 1, 384)", protect=[w.path])


def test_student_on_a_checkpoint_without_one_is_one_line(tmp_path, image, cli_error):
    w = layouts.deit(tmp_path)
    cli_error(["explain", image, "--model", w.callable, "--weights", w.path, "--student", "--out", tmp_path / "o"],
              f"checkpoint '{w.path}'", "has no student", protect=[w.path])


def test_pretrain_init_errors_come_before_any_training(tmp_path, cli_error):
    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(layouts.pretrain_cfg().resolved()))
    w = layouts.dino(tmp_path)
    cli_error(["pretrain", cfg, "--init", w.path, "--set", "model.kwargs.embed_dim=64", "--workers", "0",
               "--storage-path", tmp_path / "runs"],
              f"model.init '{w.path}'", "tensor 'cls_token' has shape (1, 1, 32), the model expects (1, 1, 64)",
              protect=[w.path, cfg])
    released = layouts.released(tmp_path)
    cli_error(["pretrain", cfg, "--init", released.path, "--set", "model.init_from=student", "--workers", "0",
               "--storage-path", tmp_path / "runs"], "has no student", protect=[released.path])
    cli_error(["pretrain", cfg, "--init", tmp_path / "missing.pth", "--workers", "0",
               "--storage-path", tmp_path / "runs"], f"checkpoint '{tmp_path / 'missing.pth'}' does not exist")
    assert not (tmp_path / "runs").exists()
