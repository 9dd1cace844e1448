"""A cluster sweep rehearsed on one machine: a 2-node Ray cluster, class-sorted shards on an S3 server, a Train-in-Tune
sweep (2 points x 1 seed, 2 workers per trial), one training worker killed mid-trial, the driver killed after a
checkpoint and the sweep resumed with ``--resume``.

Run: ``python bench/rehearsal.py`` (about 5-10 minutes on 2 cores). It starts its own S3 server
(``moto.server.ThreadedMotoServer`` on 127.0.0.1) and Ray cluster and stops both. The last line printed is::

    rehearsal: trials finished 2/2; restarted from epoch 0: 0; worker failures survived: 1; mean batch_classes: …;
    checkpoints: s3://…/train

``tests/tune/test_rehearsal.py`` runs :func:`rehearse` on the test session's S3 server and checks the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROFILE = """\
rehearsal:
  description: the cluster rehearsal - 2-block dim-32 ViT on 32 px, 3 epochs of 2 steps, 2 workers of 8 images
  config:
    model:
      timm_name: vit_tiny_patch16_224
      kwargs: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}
      drop_path: 0.0
    head: {out_dim: 64, hidden_dim: 32, bottleneck_dim: 16}
    crops: {global_crops: 2, global_size: 32, local_crops: 1, local_size: 16}
    loss: {warmup_teacher_temp_epochs: 0}
    optim: {epochs: 3, batch_size_per_worker: 8, warmup_epochs: 0, freeze_last_layer: 0, precision: fp32}
    train: {steps_per_epoch: 2, log_every: 1, max_failures: 2}
    eval: {knn_every: 0, probe_images: 0}
  evaluation: {knn_ks: [5], linear_epochs: 2, cached_features: true, train_limit: 64, val_limit: 32,
               batch_size: 16}
  resources: {cpus_per_trial: 1, gpus_per_trial: 0, max_concurrent: 1}
"""
SWEEP = """\
name: rehearsal
description: two-point sweep of the cluster rehearsal
thesis: none (rehearsal)
default_profile: rehearsal
sweep:
  masking.strategy: [block, random]
plot: {x: masking.strategy, metrics: [knn_top1, linear_top1], baselines: [block]}
"""


def _log(echo, text: str) -> None:
    echo(f"[{time.strftime('%H:%M:%S')}] {text}")


def image_folder(root: Path, num_images: int = 240, classes: int = 10) -> Path:
    """The embedded dataset's generator, saved as an ImageFolder tree ``root/{train,val}/<class>/<n>.png``."""
    from mimlab.data.sources import load_records
    from mimlab.data.synth import write_synthetic

    shards = root / "embedded"
    write_synthetic(str(shards), num_images=num_images, size=32, classes=classes, seed=0, split_val=0.2)
    tree = root / "imagefolder"
    for split in ("train", "val"):
        for i, rec in enumerate(load_records(str(shards), split=split)):
            folder = tree / split / f"class_{int(rec.label):02d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:05d}.png").write_bytes(rec.image)
    return tree


def _platform(*args: str, env: dict[str, str], log: Path | None = None, **kw: Any) -> subprocess.Popen:
    out = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "mimlab", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                            **kw)


def _shard(tree: Path, bucket: str, env: dict[str, str], log: Path) -> str:
    """``platform data shard`` per split into ``bucket/shards/{train,val}``, class-sorted (what shard writes without
    a shuffle), 16 images per shard."""
    for split in ("train", "val"):
        args = ["data", "shard", str(tree / split), f"{bucket}/shards/{split}", "--shard-size", "16"]
        if "--no-shuffle" in subprocess.run([sys.executable, "-m", "mimlab", "data", "shard", "--help"], env=env,
                                            capture_output=True, text=True).stdout:
            args.append("--no-shuffle")
        proc = _platform(*args, env=env, log=log)
        if proc.wait(timeout=600) != 0:
            raise RuntimeError(f"platform data shard failed, see {log}")
    return f"{bucket}/shards"


def _checkpoints(bucket: str) -> dict[str, set[str]]:
    """Checkpoint folder names per trial run that Ray Train has *registered* (listed in the run's checkpoint manager
    snapshot, under the sweep's storage on S3).

    A folder appears on S3 while rank 0 uploads it, before the controller registers it; a kill in between is a kill
    before the checkpoint exists, and the restart rightly begins from the previous one. So the rehearsal waits for
    the snapshot, which is what a restart or ``--resume`` reads."""
    import json

    from mimlab.data.fs import resolve

    fs, root = resolve(f"{bucket}/tune")
    fs.invalidate_cache()
    found: dict[str, set[str]] = {}
    for path in fs.glob(f"{root}/*/train/*/checkpoint_manager_snapshot.json"):
        run = path.rstrip("/").rsplit("/", 2)[-2]
        try:
            with fs.open(path, "r") as fh:
                snapshot = json.loads(fh.read())
        except (OSError, ValueError):   # being rewritten: read it on the next poll
            continue
        names = {r["checkpoint_dir_name"] for r in snapshot.get("checkpoint_results", [])}
        if names:
            found[run] = names
    return found


def _train_workers() -> list[Any]:
    """Ray Train worker processes of the rehearsal's own cluster: its nodes are children of this process, so only
    this process's descendants are considered (never another Ray runtime on the machine)."""
    import psutil

    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "RayTrainWorker" in cmd:
            out.append(proc)
    return out


def _kill_servers(uri: str) -> None:
    """Stop the MLflow server a killed driver left behind (it runs in its own session); found by this rehearsal's
    own database path, so no other process matches."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if "--backend-store-uri" in cmd and uri in cmd:
                for p in [*proc.children(recursive=True), proc]:
                    p.kill()
        except psutil.NoSuchProcess:
            continue


def _wait(what: str, until, timeout: float, driver: subprocess.Popen | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = until()
        if value:
            return value
        if driver is not None and driver.poll() is not None:
            raise RuntimeError(f"the sweep driver exited (rc {driver.returncode}) while waiting for {what}")
        time.sleep(1.0)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def rehearse(work: Path, bucket: str, echo=print, timeout: float = 900) -> dict[str, Any]:
    """Run the rehearsal in ``work`` against ``bucket`` (``s3://name`` on the server named by AWS_ENDPOINT_URL).

    The AWS_* variables must be set before this is called: the Ray nodes started here inherit them.

    Returns:
        ``trials``, ``finished``, ``restarted_from_zero``, ``worker_failures_survived``, ``batch_classes``,
        ``checkpoints`` (URL), ``child_runs`` and the per-trial ``start_epochs``.
    """
    import ray
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    work.mkdir(parents=True, exist_ok=True)
    log = work / "driver.log"
    experiments = work / "experiments"
    experiments.mkdir(exist_ok=True)
    (experiments / "profiles.yaml").write_text(PROFILE)
    (experiments / "rehearsal.yaml").write_text(SWEEP)
    # Ray's memory monitor kills workers when the *machine* is above 95 % memory; on a shared development box that
    # is other people's processes, so the rehearsal's own cluster runs without it. Set before the nodes start.
    extra = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120", "RAY_memory_monitor_refresh_ms": "0"}
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    env = {**os.environ, "MIMLAB_EXPERIMENTS_DIR": str(experiments)}
    _log(echo, "writing the ImageFolder tree and sharding it onto S3")
    data = _shard(image_folder(work), bucket, env, log)
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    uri = f"sqlite:///{work / 'mlflow.db'}"
    command = ["tune", "rehearsal", "--address", cluster.address, "--data", data, "--storage-path", f"{bucket}/tune",
               "--workers-per-trial", "2", "--tracking-uri", uri]
    killed_workers = 0
    driver = None
    try:
        _log(echo, f"2-node cluster at {cluster.address}; starting the sweep driver (log: {log})")
        driver = _platform(*command, env=env, log=log, start_new_session=True)
        first = _wait("the first checkpoint", lambda: {r: set(c) for r, c in _checkpoints(bucket).items()},
                      timeout, driver)
        trial, names = next(iter(first.items()))
        victims = _wait("a training worker process of this cluster", _train_workers, 120, driver)
        victims[0].kill()
        killed_workers += 1
        _log(echo, f"{trial}: first checkpoint {sorted(names)[0]}; killed training worker pid {victims[0].pid}")
        _wait("a checkpoint after the worker restart",
              lambda: _checkpoints(bucket).get(trial, set()) - names, timeout, driver)
        os.killpg(driver.pid, signal.SIGKILL)   # the driver, like a lost head-node shell
        driver.wait()
        _kill_servers(uri)
        _log(echo, "killed the sweep driver after the post-restart checkpoint; resuming with --resume")
        time.sleep(3)
        driver = _platform(*command, "--resume", env=env, log=log, start_new_session=True)
        rc = driver.wait(timeout=timeout)
        if rc != 0:
            raise RuntimeError(f"the resumed sweep exited with rc {rc}; see {log}")
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        _kill_servers(uri)
        cluster.shutdown()
        for key, value in saved.items():   # a test session goes on with its own settings
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tune-rehearsal")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    starts = {r.data.params.get("sweep.label", r.info.run_id): [m.value for m in sorted(
        client.get_metric_history(r.info.run_id, "start_epoch"), key=lambda m: (m.step, m.timestamp))]
        for r in children}
    classes = [m.value for r in children for m in client.get_metric_history(r.info.run_id, "batch_classes")]
    finished = sum(1 for r in children if r.info.status == "FINISHED")
    # start_epoch: one point per launch of the train function (first start, worker-group restart, resumed sweep)
    restarted = sum(max(0, s.count(0.0) - 1) for s in starts.values())
    # the killed worker's trial restarted its worker group from the first checkpoint (epoch 0 -> start 1) and finished
    survived = killed_workers if finished == len(children) and any(1.0 in s for s in starts.values()) else 0
    checkpoints = f"{bucket}/tune/{next(iter(_sweeps(bucket)), '?')}/train"
    return {"trials": 2, "finished": finished, "child_runs": len(children), "restarted_from_zero": restarted,
            "worker_failures_survived": survived, "killed_workers": killed_workers, "start_epochs": starts,
            "batch_classes": sum(classes) / len(classes) if classes else float("nan"), "checkpoints": checkpoints}


def _sweeps(bucket: str) -> list[str]:
    from mimlab.data.fs import resolve

    fs, root = resolve(f"{bucket}/tune")
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))


def summary(res: dict[str, Any]) -> str:
    return (f"rehearsal: trials finished {res['finished']}/{res['trials']}; restarted from epoch 0: "
            f"{res['restarted_from_zero']}; worker failures survived: {res['worker_failures_survived']}; "
            f"mean batch_classes: {res['batch_classes']:.2f}; checkpoints: {res['checkpoints']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="working folder (default: a fresh temp folder)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per wait")
    args = parser.parse_args(argv)
    for key, value in {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                       "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
        os.environ.setdefault(key, value)
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        os.environ.update({"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "rehearsal",
                           "AWS_SECRET_ACCESS_KEY": "rehearsal", "AWS_DEFAULT_REGION": "us-east-1"})
        boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="rehearsal")
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mimlab-rehearsal-"))
        res = rehearse(work, "s3://rehearsal", timeout=args.timeout)
    finally:
        server.stop()
    print(json.dumps({k: v for k, v in res.items() if k != "checkpoints"}))
    print(summary(res))
    return 0 if res["finished"] == res["trials"] and res["restarted_from_zero"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
