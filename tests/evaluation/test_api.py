"""run_knn / run_linear end to end on the embedded dataset with a tiny checkpoint (in-process and Ray paths)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mimlab.data.sources import decode_rgb, load_records
from mimlab.data.transforms import eval_transform
from mimlab.evaluation.api import run_knn, run_linear
from mimlab.evaluation.features import extract
from mimlab.evaluation.knn import knn_classify
from mimlab.models.loading import load_model

LIMIT = 120


def _direct_features(ckpt, split, student=False):
    """Independent path: load_records + eval_transform + extract(), no evaluation.api code."""
    loaded = load_model(str(ckpt), student=student)
    recs = load_records(None, split=split, limit=LIMIT)
    imgs = np.stack([eval_transform(decode_rgb(r.image), 32) for r in recs])
    return extract(loaded.module, [(imgs, [r.label for r in recs])], mean=loaded.mean, std=loaded.std)


def test_run_knn_in_process_matches_direct_computation(tiny_checkpoint, tmp_path):
    res = run_knn(str(tiny_checkpoint), ks=(5, 20), limit=LIMIT, out=tmp_path, log_mlflow=False, workers=0)
    tr, tr_y = _direct_features(tiny_checkpoint, "train")
    va, va_y = _direct_features(tiny_checkpoint, "val")
    want = knn_classify(tr, tr_y, va, va_y, ks=(5, 20))
    assert res["results"] == {str(k): v for k, v in want.items()}
    assert res["metrics"]["knn_top1_k20"] == want[20]["top1"]
    assert (res["n_train"], res["n_val"], res["feature_dim"], res["backbone"]) == (LIMIT, LIMIT, 32, "teacher")
    assert json.loads((tmp_path / "knn.json").read_text())["results"] == res["results"]
    student = run_knn(str(tiny_checkpoint), ks=(5,), limit=LIMIT, log_mlflow=False, workers=0, student=True)
    s_tr, _ = _direct_features(tiny_checkpoint, "train", student=True)
    assert student["backbone"] == "student" and not torch.allclose(s_tr, tr)


def test_run_knn_ray_actor_pool_equals_in_process(tiny_checkpoint, ray_local):
    local = run_knn(str(tiny_checkpoint), ks=(5, 20), limit=LIMIT, log_mlflow=False, workers=0)
    remote = run_knn(str(tiny_checkpoint), ks=(5, 20), limit=LIMIT, log_mlflow=False, workers=1, batch_size=32)
    assert remote["results"] == local["results"]
    assert remote["n_train"] == LIMIT and remote["n_val"] == LIMIT


def test_run_knn_logs_to_mlflow(tiny_checkpoint, mlflow_uri):
    import mlflow

    res = run_knn(str(tiny_checkpoint), ks=(10,), limit=60, workers=0)
    runs = mlflow.search_runs(experiment_names=["mimlab"])
    assert len(runs) == 1
    assert runs["metrics.knn_top1_k10"].iloc[0] == pytest.approx(res["metrics"]["knn_top1_k10"])
    assert runs["params.backbone"].iloc[0] == "teacher"


def test_run_linear_cached_curve_and_mlflow_history(tiny_checkpoint, mlflow_uri, tmp_path):
    import mlflow

    res = run_linear(str(tiny_checkpoint), epochs=6, reach=0.0, cached_features=True, limit=LIMIT, out=tmp_path,
                     workers=0, batch_size=64)
    assert len(res["curve"]) == 6 and res["reach_epoch"] == 1
    assert res["best_top1"] == max(res["curve"]) == res["curve"][res["best_epoch"] - 1]
    assert "cached" in res["mode"] and res["feature_dim"] == 4 * 32
    assert res["lr"] == pytest.approx(0.003 * 64 / 256)
    assert (tmp_path / "linear_curve.png").stat().st_size > 0
    run = mlflow.search_runs(experiment_names=["mimlab"]).iloc[0]
    assert run["params.mode"].startswith("cached-features")
    hist = mlflow.MlflowClient().get_metric_history(run["run_id"], "linear_top1")
    assert [m.step for m in hist] == [1, 2, 3, 4, 5, 6]
    assert [m.value for m in hist] == pytest.approx(res["curve"])


def test_run_linear_augmented_reextracts_every_epoch(tiny_checkpoint):
    res = run_linear(str(tiny_checkpoint), epochs=2, limit=40, log_mlflow=False, workers=0, batch_size=16)
    assert "augmented" in res["mode"] and not res["cached_features"]
    assert len(res["curve"]) == 2 and res["n_train"] == 40 and res["batch_size"] == 16
