"""``platform explain`` end to end on real photographs (shipped with scikit-image) with a tiny ViT checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mimlab.cli import app
from mimlab.models.vit import create_backbone


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import skimage.data

    root = tmp_path_factory.mktemp("explain-cli")
    Image.fromarray(skimage.data.chelsea()).save(root / "chelsea.png")
    Image.fromarray(skimage.data.astronaut()).save(root / "astronaut.jpg")
    return root


def _run(*args):
    return CliRunner().invoke(app, ["explain", *map(str, args)])


def test_explain_writes_overlays_grid_and_npz(files, tiny_checkpoint, tmp_path):
    methods = ["raw:layer=2", "rollout:layers=1-3,order=ascending", "gradcam"]
    out = tmp_path / "out"
    npz = tmp_path / "maps.npz"
    args = [files / "chelsea.png", files / "astronaut.jpg", "--model", tiny_checkpoint, "--out", out,
            "--save-maps", npz]
    for m in methods:
        args += ["--method", m]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    lines = [l for l in result.stdout.splitlines() if l.startswith(("chelsea.png:", "astronaut.jpg:"))]
    assert len(lines) == 2 and all(l.count("(") == 5 for l in lines)  # top-5 per image
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "grid.png" in pngs and len(pngs) == 2 * len(methods) + 1
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[1] > grid.shape[0]  # 4 columns x 2 rows
    with np.load(npz) as data:
        assert list(data.keys()) == methods  # spec text exactly as given, in order
        for m in methods:
            arr = data[m]
            assert arr.dtype == np.float32 and arr.shape == (2, 32, 32)
            assert arr.min() >= 0 and arr.max() <= 1 and np.isfinite(arr).all()
        assert not np.allclose(data[methods[0]][0], data[methods[0]][1])  # two different photographs


def test_all_methods_and_img_size(files, tiny_checkpoint, tmp_path):
    npz = tmp_path / "all.npz"
    result = _run(files / "chelsea.png", "--model", tiny_checkpoint, "--all", "--img-size", 48, "--target", 3,
                  "--mean", 0.4, 0.4, 0.4, "--std", 0.2, 0.2, 0.2, "--out", tmp_path / "o", "--save-maps", npz)
    assert result.exit_code == 0, result.output
    from mimlab.explain import EXPLAINERS
    from mimlab.explain.base import fits

    with np.load(npz) as data:
        assert sorted(data.keys()) == [n for n in EXPLAINERS.names() if fits(EXPLAINERS.get(n), "vit")]
        assert "fullgrad" not in data.keys() and "eigencam" in data.keys()
        assert all(data[k].shape == (1, 48, 48) for k in data.keys())


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--method", "rolout"], "did you mean 'rollout'"),
        (["--method", "raw:layer=7"], "layer 7 is outside 1..4"),
        (["--target", "99"], "--target 99 is outside 0..9"),
        (["--std", "0", "1", "1"], "--std values must be > 0"),
    ],
)
def test_bad_options_exit_2_one_line(files, tiny_checkpoint, tmp_path, extra, match, cli_error):
    cli_error(["explain", files / "chelsea.png", "--model", tiny_checkpoint, "--out", tmp_path, *extra], match,
              protect=[tiny_checkpoint])


def test_missing_image_is_one_error_line(files, tiny_checkpoint, tmp_path, cli_error):
    cli_error(["explain", tmp_path / "nope.jpg", "--model", tiny_checkpoint], "nope.jpg", "does not exist")


def test_unreadable_image_is_one_error_line(files, tiny_checkpoint, tmp_path, cli_error):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    cli_error(["explain", tmp_path / "bad.png", "--model", tiny_checkpoint], "bad.png", "unreadable",
              protect=[tmp_path / "bad.png"])


def test_unimportable_model_callable_is_one_error_line(files, cli_error):
    cli_error(["explain", files / "chelsea.png", "--model", "no_such_pkg_q.models:build"],
              "cannot import module 'no_such_pkg_q.models'")


def test_weights_of_another_architecture_name_the_first_mismatched_tensor(files, tmp_path, cli_error):
    w = tmp_path / "w.pth"
    torch.save(create_backbone("resnet18", num_classes=3).state_dict(), w)
    cli_error(["explain", files / "chelsea.png", "--model", "resnet34", "--weights", w, "--img-size", 32],
              "tensor 'layer1.2.conv1.weight'", protect=[w])
