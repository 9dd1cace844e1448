"""The MLflow side of a sweep without running one: the experiment-kind tag and the results table maths."""

from __future__ import annotations

import pytest

from mimlab.runtime import tracking
from mimlab.runtime.sweep_results import open_parent


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_sweep_parent_creates_its_experiment_tagged_for_model_training(exp_dir, mlflow_uri):
    """The UI opens a `custom_model_development` experiment on its runs table (not the GenAI traces page)."""
    from mimlab.config.experiment import load_experiment

    exp = load_experiment("tiny-sweep")
    _, name = open_parent(exp, mlflow_uri, "sweep-dir", seeds=1, previous=None)
    tags = _client(mlflow_uri).get_experiment_by_name(name).tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_sweep_parent_tags_an_experiment_that_existed_untagged(exp_dir, mlflow_uri):
    from mimlab.config.experiment import load_experiment

    client = _client(mlflow_uri)
    client.create_experiment("tune-tiny-sweep")
    exp = load_experiment("tiny-sweep")
    open_parent(exp, mlflow_uri, "sweep-dir", seeds=1, previous=None)
    assert client.get_experiment_by_name("tune-tiny-sweep").tags["mlflow.experimentKind"] == "custom_model_development"


def test_tracking_setup_tags_new_experiments_and_keeps_an_existing_kind(mlflow_uri):
    client = _client(mlflow_uri)
    tracking.setup(mlflow_uri, "fresh")
    assert client.get_experiment_by_name("fresh").tags["mlflow.experimentKind"] == "custom_model_development"
    client.create_experiment("genai", tags={"mlflow.experimentKind": "genai_development"})
    tracking.setup(mlflow_uri, "genai")
    assert client.get_experiment_by_name("genai").tags["mlflow.experimentKind"] == "genai_development"


def test_the_kind_value_is_one_the_installed_mlflow_ui_defines():
    """Independent check against the installed MLflow: its UI bundle's ExperimentKind enum holds the value."""
    from pathlib import Path

    import mlflow

    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    text = "".join(p.read_text(errors="ignore") for p in bundle.glob("main.*.js"))
    assert f'CUSTOM_MODEL_DEVELOPMENT="{tracking.EXPERIMENT_KIND_TRAINING}"' in text
