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
def test_cluster_rehearsal_resumes_every_trial_from_its_last_checkpoint(s3_bucket):
    import ray

    import shutil
    import tempfile

    rehearsal = _rehearsal()
    was_up = ray.is_initialized()
    lines: list[str] = []
    # its own folder, not tmp_path: the rehearsal outlives pytest's clean-up of older tmp_path folders by other
    # pytest sessions of the same user on a shared machine
    work = Path(tempfile.mkdtemp(prefix="mimlab-rehearsal-"))
    try:
        res = rehearsal.rehearse(work, s3_bucket, echo=lines.append)
        shutil.rmtree(work, ignore_errors=True)
    finally:
        print("\n".join(lines))
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
    runs = [p.rstrip("/") for p in fs.ls(root) if p.rstrip("/") != root.rstrip("/")]   # s3fs lists the folder too
    assert len(runs) == 2 and all(r.endswith(("-p000-s0", "-p001-s0")) for r in runs)   # a Train run per trial


@pytest.mark.timeout(1200)
def test_interrupted_sweep_of_real_trials_resumes_each_from_its_last_epoch(ray_local, exp_dir, mlflow_server,
                                                                          tmp_path):
    """SLOW (real 1-worker trials, twice): the sweep is stopped at the first trial's second epoch and resumed;
    that trial continues from a checkpoint (never from epoch 0) in the same MLflow child run; all end FINISHED."""
    import os
    import signal

    from ray import tune

    from mimlab.runtime.tune import run_sweep

    (exp_dir / "resume-real.yaml").write_text(
        "name: resume-real\ndefault_profile: tiny\n"   # a sweep key, as the profile's epochs override the base
        "sweep:\n  masking.strategy: [block, random]\n  optim.epochs: [4]\n")

    class StopAfterSecondEpoch(tune.Callback):
        # Tune registers a result's checkpoint after its callbacks have seen the result: stopped at epoch 1's
        # result, the trial's last registered checkpoint is epoch 0's (stopped at epoch 0's, there is none yet)
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("phase") == "pretrain" and result.get("epoch") == 1:
                os.kill(os.getpid(), signal.SIGUSR1)   # Tune's "stop and save the state", like Ctrl+C

    storage = str(tmp_path / "runs")
    first = run_sweep(name="resume-real", tracking_uri=mlflow_server, storage_path=storage, max_concurrent=1,
                      callbacks=[StopAfterSecondEpoch()], echo=lambda s: None)
    assert first.interrupted
    second = run_sweep(name="resume-real", tracking_uri=mlflow_server, storage_path=storage, max_concurrent=1,
                       resume=True, echo=lambda s: None)
    assert not second.interrupted and second.table.finished == 2

    from mlflow.tracking import MlflowClient

    from mimlab.runtime.sweep_results import child_runs

    client = MlflowClient(tracking_uri=mlflow_server)
    children = child_runs(mlflow_server, first.parent_run_id)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)   # no duplicate child run
    starts = sorted(sorted(m.value for m in client.get_metric_history(c.info.run_id, "start_epoch"))
                    for c in children)
    assert starts[0] == [0.0] and starts[1][0] == 0.0 and len(starts[1]) == 2
    assert starts[1][1] >= 1.0   # the interrupted trial resumed from a checkpoint, never from 0 again
    for child in children:
        # every epoch logged (an epoch under way when the sweep stopped is logged again when it is redone)
        assert sorted({m.step for m in client.get_metric_history(child.info.run_id, "loss")}) == [0, 1, 2, 3]
        assert child.data.tags["mimlab.checkpoint"].startswith(storage)
        assert 1.0 <= child.data.metrics["batch_classes"] <= 10.0   # the embedded dataset has 10 classes


def test_resume_after_the_experiment_changed_names_the_keys(exp_dir, mlflow_server, tmp_path):
    from mimlab.config.experiment import load_experiment
    from mimlab.errors import UserError
    from mimlab.runtime.tune import _check_same_sweep, _fingerprint

    from sweeps import write_sweep

    write_sweep(exp_dir, "changing", ["block", "random"])
    before = _fingerprint(load_experiment("changing"), 1, None, None)
    write_sweep(exp_dir, "changing", ["block", "attmask-high"])
    after = _fingerprint(load_experiment("changing"), 1, None, None)
    _check_same_sweep({"config": before}, before, "/s", load_experiment("changing"))   # unchanged: fine
    with pytest.raises(UserError, match=r"cannot resume /s: the experiment 'changing' \(profile 'tiny'\) changed "
                                        r"since it started \(differs in: points.*attmask-high.*\); run it without "
                                        r"--resume"):
        _check_same_sweep({"config": before}, after, "/s", load_experiment("changing"))
    with pytest.raises(UserError, match=r"differs in: seeds"):
        _check_same_sweep({"config": before}, {**before, "seeds": 3}, "/s", load_experiment("changing"))
