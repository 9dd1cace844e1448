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
def test_bad_input_is_one_line_and_exit_2_before_anything_starts(args, message, tmp_path, monkeypatch, cli_error):
    monkeypatch.chdir(tmp_path)
    cli_error(args, message)
    assert not (tmp_path / "runs").exists()   # nothing started


def test_data_url_without_splits_is_rejected(tmp_path, monkeypatch, cli_error):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    cli_error(["tune", "masking-layers", "--data", str(tmp_path / "data")], str(tmp_path / "data"),
              "has no 'train/' subfolder")


def test_unreachable_ray_address_is_one_line_in_a_fresh_process(tmp_path, cli_error):
    # A fresh process: in this one a Ray runtime may already be up (other tests), and then the address is ignored.
    cli_error(["tune", "masking-layers", "--address", "127.0.0.1:9"],
              "cannot reach the Ray cluster at '127.0.0.1:9'", subprocess=True, cwd=tmp_path, timeout=300)


def test_runs_compare_unknown_sweep_lists_known_ones(mlflow_uri, cli_error):
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=mlflow_uri).create_experiment("tune-masking-layers")
    cli_error(["runs", "compare", "masking-layer", "--tracking-uri", mlflow_uri],
              "unknown sweep 'masking-layer' (did you mean 'masking-layers'?)")
