"""Sweeps end to end on the session's 2-CPU Ray: MLflow parent/children, a failed trial, resuming an interruption."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from sweeps import HERE, write_sweep
from mimlab.runtime.sweep_results import child_runs, results_table
from mimlab.runtime.tune import run_sweep


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# The tiny profile's evaluation (tests/tune/experiments/profiles.yaml; a profile's evaluation overrides the
# experiment's, so tiny-sweep's knn_ks [5, 10] become [5]) and EvaluationSpec's defaults for what it leaves out.
TINY_EVAL = {"ks": (5,), "temperature": 0.07, "limit": 48, "batch_size": 16, "linear_epochs": 3}


@pytest.fixture(scope="module")
def tiny_sweep(ray_local, tmp_path_factory):
    """``platform tune tiny-sweep`` for real, once for this module: 2 points x 1 seed of the real trial (the one
    train function in the trial process, k-NN, linear probe, the untrained row) on the tiny profile."""
    import mlflow
    from typer.testing import CliRunner

    from mimlab.cli import app

    root = tmp_path_factory.mktemp("tiny-sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        shutil.copytree(HERE / "experiments", root / "experiments")
        mp.setenv("MIMLAB_EXPERIMENTS_DIR", str(root / "experiments"))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        mlflow.set_tracking_uri(uri)
        out = CliRunner().invoke(app, ["tune", "tiny-sweep", "--seeds", "1", "--tracking-uri", uri,
                                       "--storage-path", str(root / "runs")])
    assert out.exit_code == 0, out.output
    client = _client(uri)
    exp = client.get_experiment_by_name("tune-tiny-sweep")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return SimpleNamespace(output=out.output, uri=uri, root=root, parent=parents[0], children=children)


def test_tune_cli_sweep_logs_one_finished_parent_and_a_child_per_point(tiny_sweep):
    client = _client(tiny_sweep.uri)
    parent, children = tiny_sweep.parent, tiny_sweep.children
    assert parent.info.status == "FINISHED"
    assert parent.data.params["seeds"] == "1" and parent.data.params["points"] == "2"
    assert "[2/2]" in tiny_sweep.output                                 # progress line per finished trial
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.params["masking.strategy"] for c in children) == ["attmask-raw:layer=2", "block"]
    assert sorted(c.data.params["sweep.label"] for c in children) == ["Raw_2", "block"]
    for child in children:
        assert "knn_top1_k5" in child.data.metrics and "knn_top1_k10" not in child.data.metrics
        assert [m.step for m in client.get_metric_history(child.info.run_id, "loss")] == [0, 1]   # per epoch
        # the online monitor's k-NN per epoch (bank 16, 8 queries), then the trial's evaluation after the last epoch
        online = sorted(client.get_metric_history(child.info.run_id, "knn_top1"), key=lambda m: m.step)
        assert [m.step for m in online] == [-1, 0, 1, 2]
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"checkpoint", "trial_result.json"} <= names
        ckpt = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")}
        assert {"checkpoint/backbone.json", "checkpoint/teacher_backbone.safetensors"} <= ckpt
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.md", "results.json", "results.png"} <= parent_files


def test_trial_knn_top1_equals_run_knn_on_the_trials_logged_checkpoint(tiny_sweep, tmp_path):
    """Independent computation: ``run_knn`` on the checkpoint the child run logged, with the sweep's settings."""
    from mimlab.evaluation.api import run_knn

    client = _client(tiny_sweep.uri)
    for child in tiny_sweep.children:
        folder = client.download_artifacts(child.info.run_id, "checkpoint", str(tmp_path / child.info.run_id))
        again = run_knn(folder, ks=TINY_EVAL["ks"], temperature=TINY_EVAL["temperature"],
                        limit=TINY_EVAL["limit"], batch_size=TINY_EVAL["batch_size"], workers=0, log_mlflow=False)
        assert child.data.metrics["knn_top1"] == pytest.approx(again["metrics"]["knn_top1_k5"], abs=1e-9)
        assert child.data.metrics["knn_top5_k5"] == pytest.approx(again["metrics"]["knn_top5_k5"], abs=1e-9)
        assert child.data.metrics["eval.num_val"] == again["n_val"]


def test_trial_linear_top1_is_the_best_point_of_its_logged_curve(tiny_sweep):
    client = _client(tiny_sweep.uri)
    for child in tiny_sweep.children:
        curve = sorted(client.get_metric_history(child.info.run_id, "linear_curve_top1"), key=lambda m: m.step)
        assert [m.step for m in curve] == list(range(TINY_EVAL["linear_epochs"]))
        assert child.data.metrics["linear_top1"] == max(m.value for m in curve)


Z95 = 1.959963984540054   # the two-sided 95 % normal quantile


def _wald(value: float, n: int) -> tuple[float, float]:
    """The 95 % Wald interval of an accuracy (in %) measured on ``n`` images, value ± z·100·sqrt(q(1-q)/n)."""
    q = value / 100.0
    half = Z95 * 100.0 * math.sqrt(q * (1.0 - q) / n)
    return value - half, value + half


def _cell(value: float, n: int, block: float | None = None) -> str:
    """A one-seed cell recomputed here: the value, its interval, and `` ~`` when that interval overlaps the block
    baseline's (``block``; None for the block row itself)."""
    lo, hi = _wald(value, n)
    text = f"{value:.2f} [{lo:.2f}, {hi:.2f}]"
    if block is not None:
        blo, bhi = _wald(block, n)
        text += " ~" if lo <= bhi and blo <= hi else ""
    return text


def _delta(value: float, block: float, n: int) -> str:
    """A one-seed paired cell recomputed here: row - block and z·100·sqrt(var_row + var_block), the two treated as
    independent binomials over the same ``n`` images; higher/lower when the interval excludes 0, else no."""
    d = value - block
    half = Z95 * 100.0 * math.sqrt(sum((v / 100) * (1 - v / 100) / n for v in (value, block)))
    holds = "higher" if d - half > 0 else "lower" if d + half < 0 else "no"
    return f"{d:+.2f} [{d - half:+.2f}, {d + half:+.2f}] {holds}"


def test_tune_prints_the_table_of_every_point_and_the_untrained_row_with_intervals(tiny_sweep):
    lines = tiny_sweep.output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("point "))
    assert re.split(r"\s{2,}", lines[head]) == ["point", "knn_top1", "linear_top1", "seeds", "failed",
                                                 "Δknn_top1 vs block (paired)", "Δlinear_top1 vs block (paired)"]
    assert set(lines[head + 1].replace(" ", "")) == {"-"}
    rows = {}
    for line in lines[head + 2:head + 5]:
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    assert list(rows) == ["untrained", "block", "Raw_2"]
    by_label = {c.data.params["sweep.label"]: c.data.metrics for c in tiny_sweep.children}
    n = int(by_label["block"]["eval.num_val"])
    block = {m: by_label["block"][m] for m in ("knn_top1", "linear_top1")}
    # the untrained row: the same evaluation of the seed-0 network before training, logged by point 0 (block)
    untrained = {m: by_label["block"][f"{m}_init"] for m in ("knn_top1", "linear_top1")}
    expected = {
        "untrained": [_cell(untrained["knn_top1"], n, block["knn_top1"]),
                      _cell(untrained["linear_top1"], n, block["linear_top1"]), "1", "0",
                      _delta(untrained["knn_top1"], block["knn_top1"], n),
                      _delta(untrained["linear_top1"], block["linear_top1"], n)],
        "block": [_cell(block["knn_top1"], n), _cell(block["linear_top1"], n), "1", "0", "—", "—"],
        "Raw_2": [_cell(by_label["Raw_2"]["knn_top1"], n, block["knn_top1"]),
                  _cell(by_label["Raw_2"]["linear_top1"], n, block["linear_top1"]), "1", "0",
                  _delta(by_label["Raw_2"]["knn_top1"], block["knn_top1"], n),
                  _delta(by_label["Raw_2"]["linear_top1"], block["linear_top1"], n)],
    }
    assert rows == expected
    assert f"binomial over {n} val images for one seed" in lines[head + 5]


def test_tune_prints_the_mlflow_ui_command_and_runs_compare_which_works(tiny_sweep):
    from typer.testing import CliRunner

    from mimlab.cli import app

    out = tiny_sweep.output
    assert f"browse and compare: mlflow ui --backend-store-uri {tiny_sweep.uri} --host 127.0.0.1 --port 5000" in out
    assert f"expand parent run {tiny_sweep.parent.info.run_id[:8]}" in out
    assert "or: platform runs compare tiny-sweep" in out
    compare = CliRunner().invoke(app, ["runs", "compare", "tiny-sweep", "--tracking-uri", tiny_sweep.uri])
    assert compare.exit_code == 0, compare.output
    assert "Raw_2" in compare.output and "block" in compare.output and "knn_top1" in compare.output


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
