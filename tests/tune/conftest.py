"""Fixtures for the sweep tests: a test-only experiments folder (tiny profile) and one shared MLflow server."""

from __future__ import annotations

import shutil

import pytest

from sweeps import HERE


@pytest.fixture()
def exp_dir(tmp_path, monkeypatch):
    """A private copy of tests/tune/experiments (tiny profile + tiny-sweep) that tests may add files to."""
    root = tmp_path / "experiments"
    shutil.copytree(HERE / "experiments", root)
    monkeypatch.setenv("MIMLAB_EXPERIMENTS_DIR", str(root))
    return root


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One `mlflow server` (SQLite behind it) shared by the sweep tests; each test uses its own sweep name."""
    from mimlab.runtime.mlflow_server import MlflowServer

    folder = tmp_path_factory.mktemp("mlflow")
    with MlflowServer(f"sqlite:///{folder / 'mlflow.db'}") as server:
        yield server.url
