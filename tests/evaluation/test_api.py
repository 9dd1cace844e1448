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


@pytest.fixture()
def unlabelled_shards(tmp_path):
    """A shard folder whose label column is null (valid shards, no labels)."""
    from mimlab.data.fs import resolve
    from mimlab.data.schema import records_table
    from mimlab.data.shards import shard_name, write_shard
    from mimlab.data.sources import encode_png

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    imgs = [encode_png(np.full((32, 32, 3), i * 40, dtype=np.uint8)) for i in range(4)]
    fs, path = resolve(str(folder))
    write_shard(fs, f"{path}/{shard_name(0)}", records_table(imgs, [None] * 4, [f"x{i}.png" for i in range(4)]))
    return str(folder)


def test_missing_labels_is_a_user_error_in_process(tiny_checkpoint, unlabelled_shards):
    from mimlab.errors import UserError

    with pytest.raises(UserError, match="without labels"):
        run_knn(str(tiny_checkpoint), train=unlabelled_shards, val=unlabelled_shards, ks=(2,), workers=0,
                log_mlflow=False)


def test_missing_labels_is_a_user_error_on_ray_path(tiny_checkpoint, unlabelled_shards, ray_local):
    from mimlab.errors import UserError

    with pytest.raises(UserError, match="without labels"):
        run_knn(str(tiny_checkpoint), train=unlabelled_shards, val=unlabelled_shards, ks=(2,), workers=1,
                log_mlflow=False)


def test_callable_inside_a_ray_task_like_a_tune_trial(tiny_checkpoint, ray_local):
    """A Tune trial is a Ray worker: run_linear/run_knn must work there and reuse (not start) a runtime."""
    ray = ray_local

    @ray.remote(num_cpus=1)
    def trial(ckpt):
        import ray as r

        from mimlab.evaluation.api import run_knn, run_linear

        job = r.get_runtime_context().get_job_id()
        knn = run_knn(ckpt, ks=(5,), limit=40, workers=0, log_mlflow=False)
        lin = run_linear(ckpt, epochs=2, cached_features=True, limit=40, workers=0, log_mlflow=False)
        return job, knn["results"], lin["curve"]

    job, knn, curve = ray.get(trial.remote(str(tiny_checkpoint)))
    assert job == ray.get_runtime_context().get_job_id()
    assert knn == run_knn(str(tiny_checkpoint), ks=(5,), limit=40, workers=0, log_mlflow=False)["results"]
    assert len(curve) == 2
