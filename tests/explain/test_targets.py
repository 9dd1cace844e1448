"""``--target gt|predicted|<index>``: which class a map explains, resolved once and recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from mimlab.cli import app
from mimlab.errors import UserError
from mimlab.explain.base import parse_target, resolve_targets
from mimlab.explain.run import image_label
from mimlab.models.loading import load_model
from mimlab.models.vit import create_backbone

KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=10)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("target-ckpt")
    torch.manual_seed(0)
    model = create_backbone("vit_tiny_patch16_224", **KW)
    for name in ("teacher_backbone.safetensors", "student_backbone.safetensors"):
        save_file(model.state_dict(), str(root / name))
    (root / "backbone.json").write_text(json.dumps({"timm_name": "vit_tiny_patch16_224", "kwargs": KW,
                                                    "img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
                                                    "epoch": 1}))
    return root


def _pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def _normalised(pixels: np.ndarray) -> torch.Tensor:
    """The model input computed by hand: [0,1] then (x - 0.5) / 0.5 (the checkpoint's statistics)."""
    return (torch.from_numpy(pixels).float().div(255).permute(2, 0, 1)[None] - 0.5) / 0.5


def test_parse_and_resolve_targets():
    assert parse_target("gt") == "gt" and parse_target(" predicted") == "predicted" and parse_target("7") == 7
    with pytest.raises(UserError, match="gt, predicted or a class index, got 'gtt'.*did you mean 'gt'"):
        parse_target("gtt")
    with pytest.raises(UserError, match=">= 0"):
        parse_target("-1")
    pred, labels = torch.tensor([1, 2]), torch.tensor([3, 4])
    assert resolve_targets("gt", pred, labels).tolist() == [3, 4]
    assert resolve_targets("predicted", pred, labels).tolist() == [1, 2]
    assert resolve_targets(5, pred, None).tolist() == [5, 5]
    with pytest.raises(UserError, match="--target gt needs labels"):
        resolve_targets("gt", pred, None)


def test_image_label_reads_imagefolder_and_wnid_names(tmp_path):
    for c in ("b", "a", "c"):
        (tmp_path / "tree" / c).mkdir(parents=True)
    Image.fromarray(_pixels()).save(tmp_path / "tree" / "c" / "x.png")
    assert image_label(tmp_path / "tree" / "c" / "x.png", tmp_path / "tree") == 2  # sorted class folders a, b, c
    assert image_label(tmp_path / "tree" / "c" / "x.png") is None  # a folder of folders is only a tree when named
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("n02000000_1.JPEG", "n01000000_9.JPEG"):
        Image.fromarray(_pixels()).save(flat / name, format="JPEG")
    assert image_label(flat / "n02000000_1.JPEG") == 1
    Image.fromarray(_pixels()).save(tmp_path / "loose.png")  # beside files, not in a class folder
    assert image_label(tmp_path / "loose.png") is None


def test_gt_and_predicted_give_different_cams_and_gt_equals_grad_cams_own_map(ckpt, tmp_path):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    pixels = _pixels(3)
    model = load_model(str(ckpt)).module
    with torch.no_grad():
        predicted = int(model(_normalised(pixels)).argmax())
    label = (predicted + 3) % 10  # the image sits in the folder of a class the model does not predict
    tree = tmp_path / "tree"
    for c in range(10):
        (tree / f"c{c}").mkdir(parents=True)
    image = tree / f"c{label}" / "img.png"
    Image.fromarray(pixels).save(image)

    maps = {}
    for target in ("gt", "predicted"):
        npz = tmp_path / f"{target}.npz"
        res = CliRunner().invoke(app, ["explain", str(image), "--model", str(ckpt), "--method", "gradcam",
                                       "--target", target, "--class-root", str(tree),
                                       "--out", str(tmp_path / target), "--save-maps", str(npz)])
        assert res.exit_code == 0, res.output
        assert f"target ({target}): explaining class {label if target == 'gt' else predicted}" in res.output
        maps[target] = np.load(npz)["gradcam"][0]
    assert np.abs(maps["gt"] - maps["predicted"]).max() > 0.1

    def tokens_to_grid(t):  # [B,1+16,C] -> [B,C,4,4], written here independently of mimlab's reshape
        return t[:, 1:, :].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    with GradCAM(model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=tokens_to_grid) as cam:
        theirs = cam(input_tensor=_normalised(pixels), targets=[ClassifierOutputTarget(label)])[0]
    np.testing.assert_allclose(maps["gt"], theirs, atol=1e-5)


def test_gt_without_a_known_label_is_one_error_line(ckpt, tmp_path, cli_error):
    Image.fromarray(_pixels()).save(tmp_path / "loose.png")
    cli_error(["explain", str(tmp_path / "loose.png"), "--model", str(ckpt), "--target", "gt",
               "--out", str(tmp_path / "o")], "--target gt", "no label is known", "loose.png")
