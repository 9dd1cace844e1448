"""cluster.yaml validates against Ray's own schema and config preparation, offline (no cloud calls)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def cfg():
    return yaml.safe_load(CLUSTER.read_text())


def test_matches_rays_json_schema(cfg):
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)


def test_a_typo_would_be_caught_by_the_same_schema(cfg):
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    bad = copy.deepcopy(cfg)
    bad["max_worker"] = bad.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_prepare_and_validate_config(cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"
    assert prepared["available_node_types"]["gpu_worker"]["max_workers"] >= 1


def test_the_design_the_readme_promises(cfg):
    assert cfg["provider"]["type"] == "aws"
    assert cfg["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    assert any("pip install" in c and "mimlab" in c for c in cfg["setup_commands"])
    head = " ".join(cfg["head_start_ray_commands"])
    assert "mlflow server" in head and "s3://" in head and "ray start --head" in head
    workers = cfg["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["node_config"]["InstanceType"].startswith(("g", "p"))
    assert all(isinstance(v, int) for t in cfg["available_node_types"].values() for v in t["resources"].values())


def test_safe_by_default_mlflow_on_loopback_dashboard_not_exposed_store_outlives_the_cluster(cfg):
    """The MLflow UI binds 127.0.0.1 (reached through `ray attach -p 5000`), nothing binds 0.0.0.0, the dashboard /
    Jobs API keep Ray's loopback default (reached through `ray dashboard`), and the tracking store is a database
    URI that every node shares and that `ray down` does not delete (not SQLite on the head's disk)."""
    head = " ".join(cfg["head_start_ray_commands"])
    every = head + " ".join(cfg["worker_start_ray_commands"])
    assert "--host 127.0.0.1" in head
    assert "0.0.0.0" not in every and "--dashboard-host" not in every and "allowed-hosts" not in every
    assert "sqlite" not in every
    for commands in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert "export MLFLOW_TRACKING_URI=postgresql://" in " ".join(commands)
    assert "--backend-store-uri postgresql://" in head
    assert any("psycopg2" in c for c in cfg["setup_commands"])
