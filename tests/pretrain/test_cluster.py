"""A 2-node run on ``ray.cluster_utils.Cluster`` (runs last in this folder: it swaps the session's Ray runtime for
a 2-node cluster and restores a local one afterwards)."""

from pathlib import Path

import pytest

from mimlab.runtime.train import run_pretrain

from .helpers import micro_cfg


@pytest.fixture()
def two_nodes(ray_local):
    import ray
    from ray.cluster_utils import Cluster


    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        ray.init(address="local", num_cpus=2, include_dashboard=False)


def test_two_node_cluster_run(two_nodes, tmp_path, mlflow_uri):
    import ray

    from mimlab.data.synth import write_synthetic

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    data = tmp_path / "data"
    write_synthetic(str(data), num_images=40, size=16, classes=4, seed=3, split_val=0.2)
    cfg = micro_cfg("eval.knn_every=0", "eval.probe_images=0", "train.steps_per_epoch=2", "optim.epochs=1",
                    "optim.batch_size_per_worker=4")
    result = run_pretrain(cfg, data=str(data), name="two-nodes", storage_path=str(tmp_path / "runs"), workers=2)
    assert result.metrics["teacher_rank_spread"] == 0.0
    assert Path(result.checkpoint_dir, "teacher_backbone.safetensors").is_file()
