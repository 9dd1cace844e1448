"""Shared fixtures. Tests run offline on 2 CPU cores; nothing here reads files outside the repository."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MIMLAB_OBJECT_STORE_BYTES", str(512 * 1024 * 1024))
os.environ.setdefault("TERMINAL_WIDTH", "200")


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Every test session gets its own cache (the embedded dataset is generated there on first use)."""
    path = tmp_path_factory.mktemp("mimlab-cache")
    os.environ["MIMLAB_CACHE_DIR"] = str(path)
    yield path


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray runtime (2 CPUs) shared by all tests that need it; ray.init costs ~9 s here."""
    import ray

    from mimlab.runtime.ray_env import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A ``platform pretrain``-format checkpoint of the micro ViT (``tiny_assets.ARCH``, 10-class head) whose
    teacher and student weights differ: ``backbone.json``, ``teacher_/student_backbone.safetensors``."""
    from tiny_assets import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint") / "ckpt")


@pytest.fixture()
def tiny_vit():
    """A fresh seeded micro timm ViT (``tiny_assets.ARCH``, 10-class head), in eval mode."""
    from tiny_assets import tiny_vit as build

    return build()


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory):
    """A 200-image synthetic root (32 px, 4 classes, labels and masks): ``train/`` (150) and ``val/`` (50)."""
    from tiny_assets import write_shards

    return str(write_shards(tmp_path_factory.mktemp("synthetic-shards")))


@pytest.fixture()
def two_node_cluster():
    """A 2-node ``ray.cluster_utils.Cluster`` (2 CPUs a node) this process is connected to; afterwards the
    session's local Ray runtime (the ``ray_local`` one) is back if one was up before, else Ray stays down."""
    import ray
    from ray.cluster_utils import Cluster

    from mimlab.runtime.ray_env import ensure_ray

    was_up = ray.is_initialized()
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, logging_level="WARNING")
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_up:
            ensure_ray(num_cpus=2)


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store per test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    # an earlier test's mlflow.set_tracking_uri (code under test calls it) would win over the variable
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture()
def cli_error():
    """The CLI error contract (see ``tests/cli_contract.py``): ``cli_error(args, *expected, protect=...)``."""
    from cli_contract import assert_user_error

    return assert_user_error


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto) on 127.0.0.1 for the whole session; yields its endpoint URL.

    The standard variables that boto3, s3fs and pyarrow all honour are set for this process (and so for any Ray
    runtime started *after* this fixture; pass them in ``runtime_env`` to one started before):
    ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_server, request):
    """A fresh, empty bucket on the session's S3 server; yields ``s3://<bucket>``."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    yield f"s3://{name}"
