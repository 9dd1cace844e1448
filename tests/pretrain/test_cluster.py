"""A 2-node DDP run on ``ray.cluster_utils.Cluster`` (the ``two_node_cluster`` fixture puts the session's Ray back)."""

import json
from pathlib import Path

from mimlab.runtime.train import NODES_TAG, run_pretrain

from .helpers import micro_cfg


def test_two_worker_run_spread_over_two_nodes_trains_one_worker_on_each(two_node_cluster, tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from tiny_assets import write_shards

    cluster_nodes = {n.node_id for n in two_node_cluster.list_all_nodes()}
    assert len(cluster_nodes) == 2
    data = write_shards(tmp_path / "data", num_images=40, size=16, seed=3, split_val=0.2)
    cfg = micro_cfg("eval.knn_every=0", "eval.probe_images=0", "train.steps_per_epoch=2", "optim.epochs=1",
                    "optim.batch_size_per_worker=4", "train.placement=SPREAD")
    result = run_pretrain(cfg, data=str(data), name="two-nodes", storage_path=str(tmp_path / "runs"), workers=2,
                          tracking_uri=mlflow_uri)
    assert result.metrics["teacher_rank_spread"] == 0.0          # DDP kept the ranks' weights identical
    assert Path(result.checkpoint_dir, "teacher_backbone.safetensors").is_file()
    # the node every rank trained on, as the workers themselves reported it (ray.get_runtime_context())
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pretrain").experiment_id])
    nodes = json.loads(run.data.tags[NODES_TAG])
    assert len(nodes) == 2 and set(nodes) == cluster_nodes        # rank 0 and rank 1 on distinct nodes
