"""Ray Train path of ``platform pretrain``: a TorchTrainer (DDP; gloo on CPU, NCCL on GPU) fed by the Ray Data
multi-crop pipeline, a checkpoint every epoch to ``storage_path``, resume by run name, MLflow on rank 0.

The per-worker function runs the same engine as :func:`mimlab.pretrain.loop.pretrain_local`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mimlab.errors import UserError
from mimlab.pretrain.loop import PretrainResult, resolve_config


class MlflowSink:
    """MLflow adapter for the engine's metric callbacks (``step/…`` per step, ``epoch/…`` per epoch, images).

    Args:
        uri: tracking URI (resolved by :func:`mimlab.runtime.tracking.tracking_uri`).
        experiment: MLflow experiment name.
        name: run name.
        run_id: continue this run (resume) instead of opening a new one.
        params: the resolved config, logged flattened on a new run.
        parent_run_id: nest the run (Tune trials).
    """

    def __init__(self, uri: str, experiment: str, name: str, run_id: str | None = None,
                 params: dict[str, Any] | None = None, parent_run_id: str | None = None) -> None:
        import mlflow

        from mimlab.runtime import tracking

        tracking.setup(uri, experiment)
        if run_id:
            self.run = mlflow.start_run(run_id=run_id)
        else:
            self.run = mlflow.start_run(run_name=name, parent_run_id=parent_run_id)
            if params:
                tracking.log_params(params)
        self.run_id = self.run.info.run_id

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        import mlflow

        mlflow.log_metrics({f"step/{k}": float(v) for k, v in metrics.items()}, step=step)

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        mlflow.log_metrics(clean, step=epoch)

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        import mlflow

        mlflow.log_image(image, key=key, step=step)

    def close(self) -> None:
        import mlflow

        mlflow.end_run()


def check_storage(storage_path: str) -> str:
    """Make sure checkpoints can be written there; returns an absolute path or the URL.

    Raises:
        UserError: the folder cannot be created, or the remote store is unreachable / needs a package.
    """
    if "://" not in storage_path or storage_path.startswith("file://"):
        local = Path(storage_path.removeprefix("file://")).expanduser().resolve()
        try:
            local.mkdir(parents=True, exist_ok=True)
            probe = local / ".mimlab-write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise UserError(f"storage path '{storage_path}' is not writable: {err.strerror or err}") from None
        return str(local)
    from mimlab.data.fs import resolve

    fs, path = resolve(storage_path)
    try:
        fs.makedirs(path, exist_ok=True)
        fs.ls(path)
    except Exception as err:  # noqa: BLE001 - any backend error means "unreachable"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"storage path '{storage_path}' is unreachable: {first}") from None
    return storage_path


def _train_fn(config: dict[str, Any]) -> None:
    """Per-worker loop (runs inside Ray Train): build, resume, train, checkpoint + report every epoch."""
    import ray.train
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from mimlab.config.pretrain import PretrainConfig
    from mimlab.pretrain.build import IMAGENET_MEAN, IMAGENET_STD, build_parts
    from mimlab.pretrain.checkpoint import LocalCheckpoints, load_state, restore, save_checkpoint
    from mimlab.pretrain.engine import DivergedLoss, crops_from_columns, train_one_epoch
    from mimlab.pretrain.loop import carry_forward, epoch_diagnostics, initial_knn
    from mimlab.pretrain.monitor import OnlineMonitor
    from mimlab.pretrain.schedules import Schedules

    cfg = PretrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.train.use_gpu and torch.cuda.is_available():
        import ray.train.torch

        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
    parts = build_parts(cfg, device, rank)
    start, history = 0, {}
    local = LocalCheckpoints(config["local_dir"]) if config.get("local_dir") else None
    ckpt = ray.train.get_checkpoint() if local is None else None
    if ckpt is not None or (local is not None and local.latest() is not None):
        if local is not None:
            where = str(local.latest())
            state = load_state(where)
        else:
            where = ckpt.path
            with ckpt.as_directory() as folder:
                state = load_state(folder)
        try:
            start = restore(parts, state, where)
        except UserError as err:
            ray.train.report({"user_error": str(err)})
            return
        history = state.get("history", {})
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        parts.student = DistributedDataParallel(parts.student, device_ids=ids)
    inject = config.get("inject_failure")
    sink = monitor = None
    if rank == 0:
        sink = MlflowSink(config["tracking_uri"], config["experiment"], config["name"],
                          run_id=history.get("mlflow_run_id"), params=cfg.resolved())
        history["mlflow_run_id"] = sink.run_id
        if cfg.eval.knn_every > 0 or cfg.eval.probe_images > 0:
            monitor = OnlineMonitor(cfg, config["data"])
            initial_knn(parts, monitor, history, sink, cfg.eval.knn_every)
    steps = config["steps"]
    schedules = Schedules.from_config(cfg, steps, world)
    G, L = cfg.crops.global_crops, cfg.crops.local_crops
    try:
        if start >= cfg.optim.epochs:
            done = dict(history.get("last", {}))
            if local is not None:
                done["checkpoint_dir"] = str(local.latest())
            ray.train.report(done)
        for epoch in range(start, cfg.optim.epochs):
            if inject and rank == 0:
                with open(inject["events"], "a") as f:
                    f.write(f"start {epoch}\n")
                if epoch == inject["epoch"] and not os.path.exists(inject["marker"]):
                    Path(inject["marker"]).write_text("failed once")
                    raise RuntimeError(f"injected worker failure at epoch {epoch}")
            shard = ray.train.get_dataset_shard("train")
            batches = (crops_from_columns(b, G, L, IMAGENET_MEAN, IMAGENET_STD, device)
                       for b in shard.iter_torch_batches(batch_size=cfg.optim.batch_size_per_worker, drop_last=True,
                                                         device=device))
            try:
                metrics = train_one_epoch(parts, batches, epoch, schedules, max_steps=steps,
                                          on_step=sink.log_step if sink else None, log_every=cfg.train.log_every)
            except DivergedLoss as err:
                ray.train.report({"diverged": str(err), "epoch": epoch})
                return
            metrics["epoch"] = epoch
            metrics["torch_threads"] = torch.get_num_threads()  # CPU runs: what Ray's num_cpus left the worker
            if world > 1:
                metrics["teacher_rank_spread"] = _teacher_spread(parts.teacher)
            if rank == 0:
                metrics.update(epoch_diagnostics(parts, monitor, epoch, sink, cfg.eval.knn_every))
                measured = carry_forward(metrics, history)
                history["last"] = dict(metrics)
                sink.log_epoch(epoch, measured)
                if local is not None:  # local mode: Ray keeps no checkpoints, the folder is the store
                    metrics["checkpoint_dir"] = local.save(parts, epoch, history)
                    ray.train.report(metrics)
                else:
                    with tempfile.TemporaryDirectory() as tmp:
                        save_checkpoint(tmp, parts, epoch, history)
                        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)
            if inject and rank == 0:
                with open(inject["events"], "a") as f:
                    f.write(f"done {epoch}\n")
    finally:
        if sink is not None:
            sink.close()


def _teacher_spread(teacher) -> float:
    """Largest difference of any teacher weight across ranks (0.0 when DDP keeps them identical)."""
    import torch
    import torch.distributed as dist

    flat = torch.cat([p.detach().flatten().double() for p in teacher.parameters()])  # [P]
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max())


def _cpus_per_worker(workers: int) -> float:
    """1 CPU per worker, shrunk on small clusters so at least one CPU stays free for the Ray Data crop tasks
    (with every CPU held by a training worker the input pipeline can never be scheduled)."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    if workers <= 0 or total >= workers + 1:
        return 1.0
    return max(0.1, round((total - 1.0) / workers, 2))


def _count_rows(url: str | None, split: str | None) -> int:
    from mimlab.data.pipeline import read_shards

    return read_shards(url, split=split, columns=["label"]).count()


def run_pretrain(cfg: Any, *, data: str | None = None, name: str, storage_path: str | None = None,
                 workers: int | None = None, gpus_per_worker: float | None = None,
                 tracking_uri: str | None = None, experiment: str = "pretrain",
                 inject_failure: dict[str, Any] | None = None) -> PretrainResult:
    """Pretrain with Ray Train. Re-running with the same ``name`` and ``storage_path`` resumes from the last
    checkpoint; a failed worker costs at most the current epoch (``train.max_failures`` retries).

    Args:
        cfg: :class:`~mimlab.config.pretrain.PretrainConfig` (or dict / YAML path).
        data: training shards URL (overrides ``data.train``; ``None`` = embedded dataset).
        name: run name (Ray Train run folder under ``storage_path`` and the MLflow run name).
        storage_path: local folder or ``s3://…`` (default ``train.storage_path``).
        workers: DDP workers (``0`` = in-process local mode); default ``train.num_workers``.
        gpus_per_worker: GPUs per worker (> 0 turns on ``use_gpu``).
        tracking_uri: MLflow store (default ``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
        experiment: MLflow experiment name.
        inject_failure: tests only — ``{"epoch", "marker", "events"}`` fails rank 0 once at that epoch.

    Returns:
        :class:`PretrainResult` (checkpoint folder/URL of the last epoch, rank-0 metrics of the last epoch).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from mimlab.data.pipeline import multicrop_dataset
    from mimlab.pretrain.build import preflight
    from mimlab.pretrain.checkpoint import LocalCheckpoints
    from mimlab.pretrain.data_local import has_splits, multicrop_config
    from mimlab.runtime import tracking
    from mimlab.runtime.ray_env import ensure_ray

    cfg = resolve_config(cfg)
    train = cfg.train.model_copy()
    if workers is not None:
        train.num_workers = workers
    if gpus_per_worker is not None:
        train.gpus_per_worker = gpus_per_worker
        train.use_gpu = gpus_per_worker > 0
    cfg = cfg.model_copy(update={"train": train})
    preflight(cfg)
    storage = check_storage(storage_path or cfg.train.storage_path)
    uri = tracking.tracking_uri(tracking_uri)
    url = data if data is not None else cfg.data.train
    ensure_ray()
    split = "train" if has_splits(url) else None
    world = max(1, train.num_workers)
    global_batch = cfg.optim.batch_size_per_worker * world
    rows = _count_rows(url, split)
    if cfg.data.limit:
        rows = min(rows, cfg.data.limit)
    steps = rows // global_batch
    if cfg.train.steps_per_epoch:
        steps = min(steps, cfg.train.steps_per_epoch)
    if steps < 1:
        raise UserError(f"the training data has {rows} images, fewer than one global batch "
                        f"({cfg.optim.batch_size_per_worker} per worker x {world} workers)")
    ds = multicrop_dataset(url, multicrop_config(cfg), split=split, limit=steps * global_batch)
    local_dir = None
    if train.num_workers == 0:
        if "://" in storage:
            raise UserError(f"local mode (0 workers) writes checkpoints to a local folder; storage path "
                            f"'{storage}' is remote — use --workers 1 or a local --storage-path")
        local_dir = str(Path(storage) / name)
    use_gpu = train.use_gpu
    cpus = _cpus_per_worker(train.num_workers)
    resources = {"CPU": cpus, "GPU": train.gpus_per_worker} if use_gpu else {"CPU": cpus}
    trainer = TorchTrainer(
        _train_fn,
        train_loop_config={"cfg": cfg.resolved(), "steps": steps, "name": name, "tracking_uri": uri,
                           "experiment": experiment, "data": url, "inject_failure": inject_failure,
                           "local_dir": local_dir},
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources if train.num_workers > 0 else None),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=train.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": ds},
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    checkpoint = result.checkpoint.path if result.checkpoint is not None else metrics.pop("checkpoint_dir", None)
    if local_dir is not None:
        latest = LocalCheckpoints(local_dir).latest()
        checkpoint = str(latest) if latest is not None else None
    last_good = checkpoint or "none"
    if "user_error" in metrics:
        raise UserError(metrics["user_error"])
    if "diverged" in metrics:
        raise UserError(f"{metrics['diverged']}; run stopped, last good checkpoint: {last_good}")
    if checkpoint is None:
        raise UserError(f"run '{name}' finished without a checkpoint")
    metrics.pop("checkpoint_dir", None)
    return PretrainResult(checkpoint, metrics)
