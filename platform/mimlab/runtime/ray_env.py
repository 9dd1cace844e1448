"""Start or join a Ray runtime with the platform's defaults (no usage stats, no dashboard).

Ray's authentication is left to the user and Ray: ``RAY_AUTH_MODE`` is never set here (Ray 2.59+ turns token
authentication on for a local runtime by default). Only the tests and CI set ``RAY_AUTH_MODE=disabled``.
"""

from __future__ import annotations

import os

_DEFAULT_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "HF_HUB_OFFLINE": "1",
}


def apply_default_env() -> None:
    """Set the offline/quiet defaults unless the user already set them."""
    for key, value in _DEFAULT_ENV.items():
        os.environ.setdefault(key, value)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Initialise Ray once per process; a no-op when already initialised (e.g. inside a Tune trial).

    ``address`` (or ``$RAY_ADDRESS``) joins an existing cluster; otherwise a local runtime starts. Object store
    size can be capped with ``$MIMLAB_OBJECT_STORE_BYTES`` (tests use a small one).
    """
    import ray

    from mimlab.errors import UserError

    apply_default_env()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": False, "log_to_driver": True, "configure_logging": True,
                    "logging_level": "WARNING"}
    if address is None:
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        store = os.environ.get("MIMLAB_OBJECT_STORE_BYTES")
        if store:
            kwargs["object_store_memory"] = int(store)
    try:
        # "local" always starts a private runtime: a bare ray.init() would attach to whatever other local
        # cluster happens to be running (another user's, a test's cluster_utils.Cluster).
        ray.init(address=address or "local", **kwargs)
    except (ConnectionError, RuntimeError) as err:
        if address:
            raise UserError(f"cannot reach the Ray cluster at '{address}': {err}") from None
        raise
