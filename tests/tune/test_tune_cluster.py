"""A sweep across a 2-node ray.cluster_utils.Cluster places its trials on both nodes."""

from __future__ import annotations

import time

from sweeps import write_sweep
from mimlab.runtime.tune import run_sweep


def test_trials_are_placed_on_both_nodes(two_node_cluster, exp_dir, mlflow_server, tmp_path):
    write_sweep(exp_dir, "two-node-sweep", ["block", "random"])
    seen = tmp_path / "nodes"
    seen.mkdir()

    def body(cfg, run):
        import ray

        (seen / f"{run.point.index}.txt").write_text(ray.get_runtime_context().get_node_id())
        time.sleep(3)   # both trials hold all of their node's 2 CPUs at the same time
        return {"knn_top1": 1.0, "linear_top1": 1.0}

    result = run_sweep(name="two-node-sweep", tracking_uri=mlflow_server, storage_path=str(tmp_path / "runs"),
                       body=body, max_concurrent=2, cpus_per_trial=2, echo=lambda s: None)
    assert result.num_errors == 0 and result.table.finished == 2
    nodes = {p.read_text() for p in seen.glob("*.txt")}
    assert len(nodes) == 2, nodes
    cluster_nodes = {n.node_id for n in two_node_cluster.list_all_nodes()}
    assert nodes <= cluster_nodes
