"""MLflow access: one place that decides the tracking URI and opens (nested) runs.

Default store: SQLite at ``./mlflow.db`` (MLflow 3's own default; the ``./mlruns`` file store raises since 3.13).
Override with ``--tracking-uri`` flags or ``$MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mimlab.errors import UserError

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""Experiment tag the MLflow 3 UI reads to choose an experiment's landing page (no Python constant in MLflow 3.17:
the values are the UI bundle's ``ExperimentKind`` enum)."""
EXPERIMENT_KIND_TRAINING = "custom_model_development"
"""The model-training kind: the UI opens on the runs table instead of the GenAI traces overview."""


def tracking_uri(uri: str | None = None) -> str:
    """Resolve the tracking URI: explicit argument, then ``$MLFLOW_TRACKING_URI``, then ``sqlite:///./mlflow.db``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{Path('mlflow.db').resolve()}"
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        parent = db.parent if str(db.parent) else Path(".")
        if not parent.exists():
            raise UserError(f"MLflow store '{uri}': folder {parent} does not exist")
        if not os.access(parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise UserError(f"MLflow store '{uri}' is not writable")
    return uri


def ui_command(uri: str | None = None) -> str:
    """The exact command a user runs to browse the store."""
    return f"mlflow ui --backend-store-uri {tracking_uri(uri)} --host 127.0.0.1 --port 5000"


def setup(uri: str | None = None, experiment: str = "mimlab") -> str:
    """Point MLflow at the store and select (creating if needed) the experiment. Returns the experiment id."""
    import mlflow

    from mimlab.runtime.ray_env import apply_default_env

    apply_default_env()
    mlflow.set_tracking_uri(tracking_uri(uri))
    exp = mlflow.set_experiment(experiment)
    mark_training(mlflow.MlflowClient(), exp)
    return exp.experiment_id


def mark_training(client: Any, experiment: Any) -> None:
    """Tag an MLflow experiment as model training (:data:`EXPERIMENT_KIND_TRAINING`) unless it carries a kind.

    Args:
        client: an ``MlflowClient`` on the experiment's store.
        experiment: an ``mlflow.entities.Experiment``.
    """
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING)


@contextlib.contextmanager
def run(
    name: str,
    *,
    uri: str | None = None,
    experiment: str = "mimlab",
    parent_run_id: str | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[Any]:
    """Open an MLflow run (nested under ``parent_run_id`` when given, from any process) and log params."""
    import mlflow

    setup(uri, experiment)
    with mlflow.start_run(run_name=name, parent_run_id=parent_run_id, tags=tags or {}) as active:
        if params:
            log_params(params)
        yield active


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys (``optim.lr``) for ``log_params``."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{full}."))
        else:
            out[full] = value
    return out


def log_params(params: dict[str, Any]) -> None:
    """Log (flattened) params; values are stringified and truncated to MLflow's 6000-char limit."""
    import mlflow

    flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i:i + 100]))
