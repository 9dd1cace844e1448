"""Start or join a Ray runtime with the platform's defaults (no usage stats, no dashboard, no cloud probe).

Ray's authentication is left to the user and Ray: ``RAY_AUTH_MODE`` is never set here (Ray 2.59+ turns token
authentication on for a local runtime by default). Only the tests and CI set ``RAY_AUTH_MODE=disabled``.

No network beyond loopback: the dashboard process a local ``ray.init`` starts (even with ``include_dashboard=False``
it runs Ray's usage-stats module) asks the cloud-metadata endpoints which cloud it is on — ``http://169.254.169.254``
(Azure, AWS) and ``http://metadata.google.internal`` (GCP, a DNS lookup first) — whether or not usage stats are
enabled (``ray/dashboard/modules/usage_stats/usage_stats_head.py`` ``run`` →
``ray/_common/usage/usage_lib.py`` ``get_cluster_config_to_report`` → ``get_cloud_from_metadata_requests``, unless
``~/ray_bootstrap_config.yaml`` exists). Ray 2.60 has no setting for it, so the one dashboard process we start gets
``http_proxy`` pointed at a closed loopback port: its plain-HTTP ``requests`` calls — only these probes — fail at once
on this machine. Ray's own gRPC ignores ``http_proxy`` (``RAY_grpc_enable_http_proxy`` is off by default) and no
other Ray process, worker or user code sees the variable.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

_DEFAULT_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "HF_HUB_OFFLINE": "1",
    # Ray Data's per-dataset progress bars: every epoch of every trial streams a dataset, and their bars (forwarded
    # from the trial processes) buried the sweep's own progress lines; `RAY_DATA_DISABLE_PROGRESS_BARS=0` restores them
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_DATA_LOG_LEVEL": "WARNING",   # and its three INFO lines per dataset (start, plan, finished): 30 per trial
}


#: Where the dashboard's plain-HTTP requests go: the discard port of loopback, where nothing listens.
NO_PROBE_PROXY = "http://127.0.0.1:9"
_PROXY_KEYS = ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY")


@contextlib.contextmanager
def _dashboard_without_cloud_probe() -> Iterator[None]:
    """While ``ray.init`` starts a local runtime: the dashboard process is spawned with ``http_proxy`` set to
    :data:`NO_PROBE_PROXY` (and no ``no_proxy``), and every other process with this process's own environment."""
    from ray._private import services

    start = getattr(services, "start_api_server", None)
    if start is None:  # another Ray layout: nothing to wrap (tests/test_no_network.py then fails loudly)
        yield
        return

    def start_api_server(*args, **kwargs):
        saved = {k: os.environ.get(k) for k in _PROXY_KEYS}
        for k in _PROXY_KEYS:
            os.environ.pop(k, None)
        os.environ["http_proxy"] = os.environ["HTTP_PROXY"] = NO_PROBE_PROXY
        try:
            return start(*args, **kwargs)  # the dashboard's Popen copies os.environ now
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    services.start_api_server = start_api_server
    try:
        yield
    finally:
        services.start_api_server = start


def apply_default_env() -> None:
    """Set the offline/quiet defaults unless the user already set them."""
    for key, value in _DEFAULT_ENV.items():
        os.environ.setdefault(key, value)


def _quiet_ray_data() -> None:
    """Apply the Ray Data defaults to this process too: ray.data may have been imported (and its logging
    configured from the environment) before :func:`apply_default_env` ran."""
    import logging

    from ray.data import DataContext

    if os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS") == "1":
        DataContext.get_current().enable_progress_bars = False
    if os.environ.get("RAY_DATA_LOG_LEVEL"):
        logging.getLogger("ray.data").setLevel(os.environ["RAY_DATA_LOG_LEVEL"])


def _prompt_ray_data() -> None:
    """Two scheduling latencies of Ray Data 2.60's streaming executor that every epoch stream paid, shortened in
    this process (where its datasets execute); a Ray whose values differ from these defaults is left alone.

    * ``ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S`` (1 s): a new execution's first look at its resource
      limits finds the autoscaling coordinator's reservation not back yet (an asynchronous call), so it sees 0 CPUs
      and keeps that for 1 s, running ONE task meanwhile. Every epoch of a run is a new execution. Now 0.1 s.
    * ``WAIT_FOR_TASK_COMPLETION_TIMEOUT_S`` (0.1 s): the scheduling loop waits for *all* running tasks or this
      timeout, so a finished crop task's CPU idled up to 0.1 s before the next task was sent. Now 0.02 s.

    Measured with ``bench/data_pipeline.py`` (CIFAR-10, 2 workers): Ray Data 2,820 -> 3,250-3,370 img/s, against
    3,920-3,980 for a DataLoader given the same batched crop call.
    """
    try:
        from ray.data._internal.execution import streaming_executor_state
        from ray.data._internal.execution.resource_manager import ResourceManager
    except ImportError:  # a Ray without these internals: nothing to shorten
        return
    if getattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", None) == 1:
        ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = 0.1
    if getattr(streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S", None) == 0.1:
        streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = 0.02


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Initialise Ray once per process; a no-op when already initialised (e.g. inside a Tune trial).

    ``address`` (or ``$RAY_ADDRESS``) joins an existing cluster; otherwise a local runtime starts. Object store
    size can be capped with ``$MIMLAB_OBJECT_STORE_BYTES`` (tests use a small one).
    """
    import ray

    from mimlab.errors import UserError
    from mimlab.urls import check_ray_address

    apply_default_env()
    check_ray_address(address)  # the argument, else $RAY_ADDRESS (named in the error)
    _quiet_ray_data()
    _prompt_ray_data()
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
        if address is None:
            with _dashboard_without_cloud_probe():
                ray.init(address="local", **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError) as err:
        if address:
            raise UserError(f"cannot reach the Ray cluster at '{address}': {err}") from None
        raise
