"""`platform tune NAME …` and `platform runs compare` parse exactly as documented; bad input exits 2 in one line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mimlab.cli import app

runner = CliRunner()


def test_tune_without_name_lists_experiments_and_profiles(exp_dir):
    out = runner.invoke(app, ["tune"])
    assert out.exit_code == 0, out.output
    assert "tiny-sweep" in out.output and "profiles: tiny" in out.output


def test_tune_name_then_options_calls_run_sweep_with_them(monkeypatch, tmp_path):
    from mimlab.data.synth import write_synthetic

    data = str(tmp_path / "data")
    write_synthetic(data, num_images=40, size=16, classes=4, seed=0, split_val=0.25)  # --data is checked first
    calls = {}

    def fake_run_sweep(**kwargs):
        calls.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr("mimlab.runtime.tune.run_sweep", fake_run_sweep)
    out = runner.invoke(app, ["tune", "masking-layers", "--profile", "demo", "--data", data, "--seeds", "3",
                              "--max-concurrent", "4", "--gpus-per-trial", "1", "--resume"])
    assert out.exit_code == 0, out.output
    assert calls["name"] == "masking-layers" and calls["profile"] == "demo" and calls["data"] == data
    assert calls["seeds"] == 3 and calls["max_concurrent"] == 4 and calls["gpus_per_trial"] == 1.0
    assert calls["resume"] is True and calls["workers_per_trial"] == 1


@pytest.mark.parametrize(("args", "message"), [
    (["tune", "masking-layer"], "unknown experiment 'masking-layer' (did you mean 'masking-layers'?); valid:"),
    (["tune", "masking-layers", "--profile", "dmo"], "unknown profile 'dmo' (did you mean 'demo'?); valid:"),
    (["tune", "masking-layers", "--profile", "cifar10"], "profile 'cifar10' needs --data URL"),
    (["tune", "masking-layers", "--data", "/definitely/not/here"], "no such file or folder: '/definitely/not/here'"),
    (["tune", "masking-layers", "--tracking-uri", "sqlite:////definitely/not/here/mlflow.db"],
     "MLflow store 'sqlite:////definitely/not/here/mlflow.db': folder /definitely/not/here does not exist"),
    (["tune", "masking-layers", "--tracking-uri", "http://127.0.0.1:9"], "is unreachable"),
    (["tune", "masking-layers", "--seeds", "0"], "--seeds must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2_before_anything_starts(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, args)
    assert out.exit_code == 2, out.output
    assert message in out.output
    assert "Traceback" not in out.output
    assert not (tmp_path / "runs").exists()   # nothing started


def test_data_url_without_splits_is_rejected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    out = runner.invoke(app, ["tune", "masking-layers", "--data", str(tmp_path / "data")])
    assert out.exit_code == 2 and "has no 'train/' subfolder" in out.output


def test_unreachable_ray_address(tmp_path):
    # A fresh process: in this one a Ray runtime may already be up (other tests), and then the address is ignored.
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mimlab", "tune", "masking-layers", "--address", "127.0.0.1:9"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot reach the Ray cluster at '127.0.0.1:9'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_runs_compare_unknown_sweep_lists_known_ones(mlflow_uri):
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=mlflow_uri).create_experiment("tune-masking-layers")
    out = runner.invoke(app, ["runs", "compare", "masking-layer", "--tracking-uri", mlflow_uri])
    assert out.exit_code == 2
    assert "unknown sweep 'masking-layer' (did you mean 'masking-layers'?)" in out.output
