"""The one train function on Ray Train: local mode + MLflow, 2-worker DDP on gloo, injected worker failure, a diverged
run ending FAILED, resume by name refusing another config, unmet resources, bad input."""

from pathlib import Path

import pytest

from mimlab.errors import UserError
from mimlab.runtime.train import run_pretrain

from .helpers import micro_cfg

FAST = ("eval.knn_every=0", "eval.probe_images=0", "train.steps_per_epoch=2", "train.log_every=1")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from mimlab.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("ray-shards")
    write_synthetic(str(root), num_images=48, size=16, classes=4, seed=2, split_val=0.25)
    return str(root)


def test_local_mode_logs_to_mlflow_and_resumes_by_name(ray_local, tiny_data, tmp_path, mlflow_uri):
    import mlflow

    cfg = micro_cfg("eval.knn_every=1", "eval.knn_train_limit=36", "eval.knn_val_limit=12", "eval.knn_k=5",
                    "eval.probe_images=2", "train.steps_per_epoch=2", "train.log_every=1", "optim.epochs=1")
    result = run_pretrain(cfg, data=tiny_data, name="local", storage_path=str(tmp_path / "runs"), workers=0)
    assert Path(result.checkpoint_dir, "teacher_backbone.safetensors").is_file()
    assert "knn_top1" in result.metrics and "knn_top1_init" in result.metrics
    # 4 interleaved classes, batches of 4: between 1 and 4 distinct labels per batch
    assert 1.0 <= result.metrics["batch_classes"] <= 4.0
    runs = mlflow.search_runs(experiment_names=["pretrain"])
    assert len(runs) == 1
    run_id = runs.run_id[0]
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).data.params["optim.epochs"] == "1"
    for key in ("step/loss_cls", "step/loss_patch", "step/lr", "step/wd", "step/momentum", "step/teacher_temp",
                "step/masked_fraction", "step/images_per_s", "knn_top1", "loss", "batch_classes"):
        assert client.get_metric_history(run_id, key), key
    artifacts = [a.path for a in client.list_artifacts(run_id)]
    assert "images" in artifacts  # the per-epoch [cls] attention of the probe images
    # same name, more epochs: resumes epoch 1 only, in the same MLflow run
    again = run_pretrain(cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": 2})}),
                         data=tiny_data, name="local", storage_path=str(tmp_path / "runs"), workers=0)
    assert again.metrics["epoch"] == 1 and again.checkpoint_dir.endswith("checkpoint-0001")
    assert len(mlflow.search_runs(experiment_names=["pretrain"])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    starts = [m.value for m in client.get_metric_history(run_id, "start_epoch")]
    assert sorted(starts) == [0.0, 1.0]   # launched at epoch 0, resumed at epoch 1 (never from 0 again)
    artifact_uri = client.get_run(run_id).info.artifact_uri
    assert artifact_uri.startswith((tmp_path / "mlruns").as_uri())   # beside the store, not in a Ray temp folder
    # same name, another masking strategy: refused before any work, the keys named
    with pytest.raises(UserError, match=r"run 'local' .* another config \(differs in: masking.strategy\)"):
        run_pretrain(micro_cfg("eval.knn_every=1", "eval.knn_train_limit=36", "eval.knn_val_limit=12",
                               "eval.knn_k=5", "eval.probe_images=2", "train.steps_per_epoch=2", "train.log_every=1",
                               "optim.epochs=2", strategy="random"),
                     data=tiny_data, name="local", storage_path=str(tmp_path / "runs"), workers=0)


def test_two_workers_on_gloo_keep_teacher_identical(ray_local, tiny_data, tmp_path, mlflow_uri):
    cfg = micro_cfg(*FAST, "optim.epochs=1", "optim.batch_size_per_worker=4")
    result = run_pretrain(cfg, data=tiny_data, name="ddp", storage_path=str(tmp_path / "runs"), workers=2)
    assert result.metrics["teacher_rank_spread"] == 0.0
    assert result.metrics["steps"] == 2
    assert Path(result.checkpoint_dir, "state.pt").is_file()


def test_injected_worker_failure_costs_at_most_the_current_epoch(ray_local, tiny_data, tmp_path, mlflow_uri):
    events = tmp_path / "events.txt"
    cfg = micro_cfg(*FAST, "optim.epochs=3", "train.max_failures=1")
    result = run_pretrain(cfg, data=tiny_data, name="fail", storage_path=str(tmp_path / "runs"), workers=1,
                          inject_failure={"epoch": 1, "marker": str(tmp_path / "failed"), "events": str(events)})
    lines = events.read_text().split()
    log = list(zip(lines[::2], map(int, lines[1::2])))
    assert log == [("start", 0), ("done", 0), ("start", 1), ("start", 1), ("done", 1), ("start", 2), ("done", 2)]
    assert result.metrics["epoch"] == 2


def test_bad_input_is_one_clear_line(ray_local, tiny_data, tmp_path, mlflow_uri):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="storage path .* is not writable"):
        run_pretrain(micro_cfg(*FAST), data=tiny_data, name="x", storage_path=str(blocker / "runs"), workers=0)
    with pytest.raises(UserError, match="unknown masking strategy 'attmask-hgh'"):
        run_pretrain(micro_cfg(*FAST, strategy="attmask-hgh"), data=tiny_data, name="y",
                     storage_path=str(tmp_path / "r"), workers=0)
    with pytest.raises(UserError, match="outside 1..2"):
        run_pretrain(micro_cfg(*FAST, strategy="attmask-raw:layer=5"), data=tiny_data, name="z",
                     storage_path=str(tmp_path / "r"), workers=0)


def test_a_diverged_run_ends_failed_with_the_reason_and_keeps_its_checkpoint(ray_local, tiny_data, tmp_path,
                                                                             mlflow_uri, monkeypatch):
    import mlflow
    import torch

    from mimlab.pretrain import engine

    original = engine.train_one_epoch

    def poisoned(parts, batches, epoch, *args, **kwargs):
        if epoch == 1:
            raise engine.DivergedLoss("the loss diverged (non-finite) at epoch 1: cls=nan, patch=nan")
        return original(parts, batches, epoch, *args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", poisoned)   # local mode runs in this process
    with pytest.raises(UserError, match=r"diverged .* last good checkpoint: .*checkpoint-0000"):
        run_pretrain(micro_cfg(*FAST, "optim.epochs=3"), data=tiny_data, name="nan",
                     storage_path=str(tmp_path / "runs"), workers=0)
    (run,) = mlflow.search_runs(experiment_names=["pretrain"], output_format="list")
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags["mimlab.error"]
    state = torch.load(tmp_path / "runs" / "nan" / "checkpoint-0000" / "state.pt", weights_only=False)
    assert state["epoch"] == 0


def test_unmet_resources_fail_before_any_work_naming_ask_and_cluster(ray_local, tiny_data, tmp_path, mlflow_uri):
    cpus = int(ray_local.cluster_resources()["CPU"])
    with pytest.raises(UserError, match=rf"asked for {cpus + 3} training worker\(s\) .*the Ray cluster has "
                                        rf"{cpus} CPU"):
        run_pretrain(micro_cfg(*FAST), data=tiny_data, name="cpu", storage_path=str(tmp_path / "r"),
                     workers=cpus + 3)
    with pytest.raises(UserError, match=r"asked for 2 worker\(s\) x 1 GPU = 2 GPU\(s\).*the Ray cluster has 0 GPU"):
        run_pretrain(micro_cfg(*FAST), data=tiny_data, name="gpu", storage_path=str(tmp_path / "r"), workers=2,
                     gpus_per_worker=1)
    assert not (tmp_path / "r" / "cpu").exists() and not (tmp_path / "r" / "gpu").exists()
