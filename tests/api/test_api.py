"""The Python API (``mimlab.explain/evaluate_saliency/pretrain/knn/linear_probe``) at tiny sizes.

One tiny pretraining run (module fixture) provides the checkpoint the other functions use. The API must return
what the CLI path computes and print nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mimlab

TINY = {
    "model": {"timm_name": "vit_tiny_patch16_224",
              "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
              "drop_path": 0.0},
    "head": {"out_dim": 64, "hidden_dim": 48, "bottleneck_dim": 16},
    "crops": {"global_crops": 2, "global_size": 16, "local_crops": 1, "local_size": 8},
    "loss": {"warmup_teacher_temp_epochs": 0},
    "optim": {"epochs": 1, "batch_size_per_worker": 8, "warmup_epochs": 0, "freeze_last_layer": 0,
              "precision": "fp32"},
    "train": {"steps_per_epoch": 2, "log_every": 1},
    "eval": {"knn_every": 1, "knn_k": 5, "knn_train_limit": 36, "knn_val_limit": 12, "probe_images": 0},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mimlab.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("api-data")
    write_synthetic(str(root), num_images=48, size=16, classes=4, seed=5, split_val=0.25)
    return str(root)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("api-runs")
    return mimlab.pretrain(TINY, overrides=["masking.strategy=attmask-high"], data=data, name="api",
                           storage_path=str(folder / "runs"), workers=0)


def test_import_mimlab_stays_light_and_both_callable_subpackages_still_import():
    code = ("import sys, mimlab; light = 'torch' not in sys.modules; import mimlab.pretrain.loop, "
            "mimlab.explain.scores; print(light, callable(mimlab.pretrain), callable(mimlab.explain), "
            "mimlab.explain.scores.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True", "True", "True", "mimlab.explain.scores"]


def test_pretrain_returns_the_checkpoint_and_the_untrained_and_final_knn(run):
    ckpt = Path(run.checkpoint_dir)
    assert (ckpt / "teacher_backbone.safetensors").is_file() and ckpt.parent.name == "api"
    for key in ("knn_top1", "knn_top1_init"):
        assert 0.0 <= run.metrics[key] <= 100.0


def test_pretrain_rejects_an_unknown_override_key_before_training(tmp_path):
    from mimlab.errors import UserError

    with pytest.raises(UserError, match="masking.strategi"):
        mimlab.pretrain(TINY, overrides=["masking.strategi=block"], storage_path=str(tmp_path))


def test_explain_returns_the_maps_the_cli_writes_and_prints_nothing(run, tmp_path, capsys):
    from PIL import Image

    from mimlab.explain.run import explain_images

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2)]
    paths = []
    for i, a in enumerate(arrays):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(a).save(paths[-1])
    methods = ["raw", "rollout", "gradcam"]
    capsys.readouterr()
    ex = mimlab.explain(arrays, run.checkpoint_dir, methods=methods)
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""
    assert ex.methods == methods and ex.images.shape == (2, 16, 16, 3) and len(ex.top5) == 2
    explain_images(images=paths, model=run.checkpoint_dir, methods=methods, out=tmp_path / "cli",
                   save_maps=tmp_path / "maps.npz", echo=lambda _line: None, progress=False)
    cli = np.load(tmp_path / "maps.npz")
    for m in methods:
        assert ex.maps[m].shape == (2, 16, 16) and ex.maps[m].dtype == np.float32
        assert 0.0 <= ex.maps[m].min() and ex.maps[m].max() <= 1.0
        np.testing.assert_allclose(ex.maps[m], cli[m], atol=1e-6)


def test_explain_rejects_a_non_rgb_array_with_a_user_error(run):
    from mimlab.errors import UserError

    with pytest.raises(UserError, match=r"\[H, W, 3\]"):
        mimlab.explain(np.zeros((16, 16), dtype=np.uint8), run.checkpoint_dir, methods=["raw"])


def test_knn_equals_the_eval_function_and_prints_nothing(run, data, capsys):
    from mimlab.evaluation.api import run_knn

    capsys.readouterr()
    got = mimlab.knn(run.checkpoint_dir, train=data, val=data, ks=(5,))
    assert capsys.readouterr().out == ""
    ref = run_knn(run.checkpoint_dir, train=data, val=data, ks=(5,), log_mlflow=False, workers=0)
    assert got["n_val"] == 12 and got["n_train"] == 36                  # 48 images, split_val 0.25
    assert got["results"]["5"]["top1"] == pytest.approx(ref["results"]["5"]["top1"])
    assert 0.0 <= got["results"]["5"]["top1"] <= 100.0


def test_linear_probe_reports_the_best_epoch_of_its_curve(run, data, capsys):
    capsys.readouterr()
    res = mimlab.linear_probe(run.checkpoint_dir, train=data, val=data, epochs=3, cached_features=True,
                              batch_size=16)
    assert capsys.readouterr().out == ""
    assert len(res["curve"]) == 3
    assert res["best_top1"] == pytest.approx(max(res["curve"]))
    assert res["curve"][res["best_epoch"] - 1] == pytest.approx(res["best_top1"])


def test_evaluate_saliency_scores_every_method_and_metric_per_image(run, data, tmp_path):
    res = mimlab.evaluate_saliency(run.checkpoint_dir, methods=["raw", "rollout"], data=data, split="val",
                                   limit=4, metrics=["deletion", "pointing", "energy"], out=tmp_path / "sal",
                                   batch_size=4)
    assert set(res.table) == {"raw", "rollout"}
    assert set(res.table["raw"]) == {"deletion", "pointing", "energy"}
    assert len(res.rows) == 2 * 4
    for row in res.rows:
        assert row["pointing"] in (0.0, 1.0) or np.isnan(row["pointing"])
        assert 0.0 <= row["energy"] <= 1.0 or np.isnan(row["energy"])
    means = np.nanmean([r["energy"] for r in res.rows if r["method"] == "raw"])
    assert res.table["raw"]["energy"] == pytest.approx(means)
    assert (tmp_path / "sal" / "results.json").is_file()
