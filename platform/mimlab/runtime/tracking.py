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
    """Resolve the tracking URI: explicit argument, then ``$MLFLOW_TRACKING_URI``, then ``sqlite:///./mlflow.db``.

    Raises:
        UserError: a malformed URI (naming the option or the variable), a missing or read-only SQLite folder.
    """
    from mimlab.urls import check_tracking_uri

    check_tracking_uri(uri or None)
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{Path('mlflow.db').resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # sqlite:///relative.db is relative to the caller's folder, not to a Ray worker's
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).expanduser().resolve()}"
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        parent = db.parent if str(db.parent) else Path(".")
        if not parent.exists():
            raise UserError(f"MLflow store '{uri}': folder {parent} does not exist")
        if not os.access(parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise UserError(f"MLflow store '{uri}' is not writable")
    return uri


def artifact_root(uri: str) -> str | None:
    """``<db folder>/mlruns`` for a SQLite store (never the working folder of whichever process creates the
    experiment: in a Ray worker that is a Ray temp folder); ``None`` (the server's default) otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
    return None


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name``, created (artifact root from :func:`artifact_root`) when missing."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            client.create_experiment(name, artifact_location=artifact_root(uri))
        except Exception:  # noqa: BLE001 - created meanwhile by another process
            pass
        found = client.get_experiment_by_name(name)
        if found is None:
            raise UserError(f"could not create MLflow experiment '{name}' in '{uri}'")
    mark_training(client, found)  # the MLflow UI opens it on its runs table
    return found.experiment_id


def ui_command(uri: str | None = None) -> str:
    """The exact command a user runs to browse the store."""
    return f"mlflow ui --backend-store-uri {tracking_uri(uri)} --host 127.0.0.1 --port 5000"


def setup(uri: str | None = None, experiment: str = "mimlab") -> str:
    """Point MLflow at the store and select (creating if needed) the experiment. Returns the experiment id."""
    import mlflow

    from mimlab.runtime.ray_env import apply_default_env

    apply_default_env()
    resolved = tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    exp_id = ensure_experiment(resolved, experiment)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


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
    run_id: str | None = None,
) -> Iterator[Any]:
    """Open an MLflow run (nested under ``parent_run_id`` when given, from any process) and log params;
    ``run_id`` continues that run instead (its params are already logged). An exception ends the run FAILED."""
    import mlflow

    setup(uri, experiment)
    if run_id:
        with mlflow.start_run(run_id=run_id) as active:
            yield active
        return
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
