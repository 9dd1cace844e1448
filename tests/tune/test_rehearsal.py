"""THE CLUSTER REHEARSAL (slow: several minutes on 2 cores, the one test allowed over 40 s): a Train-in-Tune sweep on
a 2-node ray.cluster_utils.Cluster over class-sorted shards on the session's S3 server, with a training worker killed
mid-trial and the driver killed after a checkpoint, then resumed (bench/rehearsal.py's ``rehearse``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "rehearsal.py"


def _rehearsal():
    spec = importlib.util.spec_from_file_location("rehearsal", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(2400)
def test_cluster_rehearsal_resumes_every_trial_from_its_last_checkpoint(s3_bucket, tmp_path):
    import ray

    rehearsal = _rehearsal()
    was_up = ray.is_initialized()
    lines: list[str] = []
    try:
        res = rehearsal.rehearse(tmp_path / "work", s3_bucket, echo=lines.append)
    finally:
        if was_up and not ray.is_initialized():
            from mimlab.runtime.ray_env import ensure_ray

            ensure_ray(num_cpus=2)
    print(rehearsal.summary(res))
    assert res["finished"] == 2 and res["child_runs"] == 2, res   # resumed child runs continued: no duplicates
    assert res["restarted_from_zero"] == 0, res["start_epochs"]
    assert res["worker_failures_survived"] == 1, res["start_epochs"]
    # one trial: first launch at 0, worker-group restart from checkpoint 0 at 1, resumed sweep at 2
    assert sorted(map(sorted, res["start_epochs"].values())) == [[0.0], [0.0, 1.0, 2.0]]
    assert 1.0 <= res["batch_classes"] <= 10.0
    assert res["checkpoints"].startswith(f"{s3_bucket}/tune/rehearsal-rehearsal-")
    from mimlab.data.fs import resolve

    fs, root = resolve(res["checkpoints"])
    assert len(fs.ls(root)) == 2   # one Train run folder per trial, on S3
