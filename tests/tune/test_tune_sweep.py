"""Sweeps end to end on the session's 2-CPU Ray: MLflow parent/children, a failed trial, resuming an interruption."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import write_sweep
from mimlab.runtime.sweep_results import child_runs, results_table
from mimlab.runtime.tune import run_sweep


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_two_trial_sweep_end_to_end_logs_parent_and_children(ray_local, exp_dir, mlflow_uri, tmp_path):
    """The real trial (the one train function in the trial process + k-NN + linear probe) on the tiny profile; run_sweep starts the server."""
    lines: list[str] = []
    result = run_sweep(name="tiny-sweep", tracking_uri=mlflow_uri, storage_path=str(tmp_path / "runs"),
                       echo=lines.append)
    assert not result.interrupted and result.num_errors == 0
    assert any(line.startswith("[2/2]") for line in lines)          # progress line per finished trial

    client = _client(mlflow_uri)
    exp = client.get_experiment_by_name("tune-tiny-sweep")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(parents) == 1 and parents[0].info.run_id == result.parent_run_id
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.params["masking.strategy"] for c in children) == ["attmask-raw:layer=2", "block"]
    assert sorted(c.data.params["sweep.label"] for c in children) == ["Raw_2", "block"]
    for child in children:
        assert 0.0 <= child.data.metrics["knn_top1"] <= 100.0
        assert "knn_top1_k5" in child.data.metrics   # the tiny profile's evaluation ks = [5]
        assert "linear_top1" in child.data.metrics
        assert [m.step for m in client.get_metric_history(child.info.run_id, "loss")] == [0]   # per epoch
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"checkpoint", "trial_result.json"} <= names
        ckpt = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")}
        assert "checkpoint/backbone.json" in ckpt
    parent_files = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"results.md", "results.json", "results.png"} <= parent_files
    # the table equals the children's metrics (one seed: mean = the value)
    by_label = {c.data.params["sweep.label"]: c.data.metrics["knn_top1"] for c in children}
    for row in result.table.rows:
        assert row.stats["knn_top1"][0] == pytest.approx(by_label[row.label])

    from typer.testing import CliRunner

    from mimlab.cli import app

    out = CliRunner().invoke(app, ["runs", "compare", "tiny-sweep", "--tracking-uri", mlflow_uri])
    assert out.exit_code == 0, out.output
    assert "Raw_2" in out.output and "block" in out.output and "knn_top1" in out.output


def test_failed_trial_is_recorded_and_the_sweep_goes_on(ray_local, exp_dir, mlflow_server, tmp_path):
    write_sweep(exp_dir, "fail-sweep", ["block", "random", "attmask-high"])

    def body(cfg, run):
        if run.point.index == 1:
            raise RuntimeError("injected failure")
        run.report(0, {"loss": 1.0})
        return {"knn_top1": 10.0 * (run.point.index + 1), "linear_top1": 5.0}

    lines: list[str] = []
    result = run_sweep(name="fail-sweep", tracking_uri=mlflow_server, storage_path=str(tmp_path / "runs"),
                       body=body, echo=lines.append)
    assert result.num_errors == 1 and not result.interrupted
    assert any("FAILED" in line and "injected failure" in line for line in lines)
    status = {r.data.params["sweep.label"]: r.info.status for r in child_runs(mlflow_server, result.parent_run_id)}
    assert status == {"block": "FINISHED", "random": "FAILED", "attmask-high": "FINISHED"}
    assert result.table.finished == 2 and result.table.failed == 1
    rows = {r.label: r for r in result.table.rows}
    assert rows["random"].failed == 1 and rows["random"].stats["knn_top1"][0] is None
    assert rows["attmask-high"].stats["knn_top1"][0] == 30.0


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_local, exp_dir, mlflow_server, tmp_path):
    from ray import tune

    write_sweep(exp_dir, "resume-sweep", ["block", "random", "attmask-high"])
    log = tmp_path / "executions.txt"

    def body(cfg, run):
        with open(log, "a") as fh:
            fh.write(f"{run.point.index}\n")
        if run.point.index > 0:
            time.sleep(4)   # still running when the driver is interrupted
        return {"knn_top1": float(run.point.index), "linear_top1": 1.0}

    class InterruptAfterFirst(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            os.kill(os.getpid(), signal.SIGUSR1)   # Tune's own "stop and save state" signal, like Ctrl+C

    storage = str(tmp_path / "runs")
    first = run_sweep(name="resume-sweep", tracking_uri=mlflow_server, storage_path=storage, body=body,
                      max_concurrent=1, callbacks=[InterruptAfterFirst()], echo=lambda s: None)
    assert first.interrupted
    assert log.read_text().split().count("0") == 1

    second = run_sweep(name="resume-sweep", tracking_uri=mlflow_server, storage_path=storage, body=body,
                       max_concurrent=1, resume=True, echo=lambda s: None)
    assert not second.interrupted and second.parent_run_id == first.parent_run_id
    runs = log.read_text().split()
    assert runs.count("0") == 1                       # the finished trial was not re-run
    assert runs.count("1") >= 1 and runs.count("2") >= 1
    assert second.table.finished == 3
    assert [r.stats["knn_top1"][0] for r in second.table.rows] == [0.0, 1.0, 2.0]
    status = _client(mlflow_server).get_run(first.parent_run_id).info.status
    assert status == "FINISHED"
    assert json.loads((Path(second.sweep_dir) / "mimlab-sweep.json").read_text())["parent_run_id"] == \
        first.parent_run_id


def test_resume_with_nothing_to_resume_is_a_user_error(exp_dir, mlflow_server, tmp_path):
    from mimlab.errors import UserError

    with pytest.raises(UserError, match="nothing to resume"):
        run_sweep(name="tiny-sweep", tracking_uri=mlflow_server, storage_path=str(tmp_path / "none"), resume=True)


def test_results_table_mean_and_sample_std_over_seeds(mlflow_uri):
    """Golden: values 40 and 43 -> mean 41.5, sample std |43-40|/sqrt(2) = 2.1213 (hand computation)."""
    import mlflow

    client = _client(mlflow_uri)
    exp_id = client.create_experiment("tune-golden")
    parent = client.create_run(exp_id, run_name="parent").info.run_id
    for point, seed, value, status in [(0, 0, 40.0, "FINISHED"), (0, 1, 43.0, "FINISHED"),
                                       (1, 0, 50.0, "FINISHED"), (1, 1, 99.0, "FAILED")]:
        run = client.create_run(exp_id, tags={"mlflow.parentRunId": parent,
                                              "mimlab.trial_key": f"p{point}-s{seed}"}).info.run_id
        client.log_param(run, "sweep.point", point)
        client.log_param(run, "sweep.label", f"P{point}")
        client.log_metric(run, "knn_top1", value)
        client.set_terminated(run, status=status)
    del mlflow
    table = results_table(mlflow_uri, parent, metrics=["knn_top1"])
    (r0, r1) = table.rows
    assert r0.stats["knn_top1"][0] == pytest.approx(41.5)
    assert r0.stats["knn_top1"][1] == pytest.approx(2.1213203, abs=1e-6)
    assert r1.stats["knn_top1"] == (50.0, 0.0, 1) and r1.failed == 1
    assert table.finished == 3 and table.failed == 1
    assert "41.50 ± 2.12" in table.to_text() and "| P1 | 50.00 | 1 | 1 |" in table.to_markdown()
