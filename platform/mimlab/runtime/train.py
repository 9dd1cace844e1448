"""The one training path: :func:`_train_fn` trains iBOT over the Ray Data multi-crop stream, checkpoints and reports
every epoch, and resumes from the last checkpoint. It runs in three places, always over the same stream:

* Ray Train workers (:func:`run_pretrain`, ``workers >= 1``; DDP on gloo or NCCL), checkpoints in Train storage;
* Ray Train's local mode (:func:`run_pretrain`, ``workers=0``: the function runs in this process);
* a sweep trial's own process (:func:`run_in_trial`, the default 1-worker trial), checkpoints in Tune storage.

Only the small :class:`_TrainSession` / :class:`_TuneSession` adapters differ (where checkpoints go, where batches
come from). MLflow is written from rank 0 through :class:`MlflowSink`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mimlab.errors import UserError
from mimlab.pretrain.loop import PretrainResult, resolve_config

RUN_FILE = "mimlab-run.json"
ERROR_TAG = "mimlab.error"
NODES_TAG = "mimlab.worker_nodes"
"""Tag of a pretraining run: the Ray node id of every training worker, in rank order (a JSON list), per start."""
# Keys that may differ when a run is resumed by name: how it is run, not what it computes.
RUNTIME_KEYS = ("train.num_workers", "train.use_gpu", "train.gpus_per_worker", "train.storage_path",
                "train.max_failures", "train.log_every", "train.placement")


class MlflowSink:
    """MLflow adapter for the engine's metric callbacks (``step/…`` per step, ``epoch/…`` per epoch, images).

    Writes through an ``MlflowClient`` to one run id, so it never touches (or needs) the process's active run.

    Args:
        uri: tracking URI (resolved by :func:`mimlab.runtime.tracking.tracking_uri`).
        experiment: MLflow experiment name (created with an artifact root beside a SQLite store).
        name: run name of a new run.
        run_id: continue this run (resume, or a sweep trial's child run) instead of opening a new one.
        params: the resolved config, logged flattened on a new run.
        parent_run_id: nest a new run.
        owned: this sink ends the run (``close``); a sweep trial's run is ended by the trial.
    """

    def __init__(self, uri: str, experiment: str, name: str, run_id: str | None = None,
                 params: dict[str, Any] | None = None, parent_run_id: str | None = None, owned: bool = True) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        from mimlab.runtime import tracking

        self.client = MlflowClient(tracking_uri=uri)
        self.owned = owned
        if run_id:
            self.run_id = run_id
            if owned:
                self.client.update_run(run_id, status="RUNNING")
            return
        exp_id = tracking.ensure_experiment(uri, experiment)
        tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
        self.run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        flat = [Param(k, str(v)[:6000]) for k, v in tracking.flatten(params or {}).items()]
        for i in range(0, len(flat), 100):
            self.client.log_batch(self.run_id, params=flat[i:i + 100])

    def _metrics(self, values: dict[str, Any], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        self._metrics({f"step/{k}": v for k, v in metrics.items()}, step)

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        self._metrics(metrics, epoch)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        self.client.log_image(self.run_id, image, key=key, step=step)

    def close(self, error: str | None = None, interrupted: bool = False) -> None:
        """End the run FINISHED, FAILED with ``error`` as the ``mimlab.error`` tag (a failure is always tagged), or
        KILLED when ``interrupted`` (a resume continues it)."""
        if error:
            self.client.set_tag(self.run_id, ERROR_TAG, error[:5000])
        if self.owned:
            status = "FAILED" if error else "KILLED" if interrupted else "FINISHED"
            self.client.set_terminated(self.run_id, status=status)


def multicrop_config(cfg) -> Any:
    """The crop pipeline's settings from the pretraining config's ``crops`` section."""
    from mimlab.data.transforms import MultiCropConfig

    return MultiCropConfig(**cfg.crops.model_dump())


def local_path(url: str | None) -> str | None:
    """A plain (relative) path as an absolute one, against this process's working directory; URLs unchanged.

    Done on the driver before anything reaches Ray: Tune trials and Train workers run in other folders.
    """
    if url is None or "://" in url:
        return url
    return str(Path(url).expanduser().resolve())


def checkpoint_uri(checkpoint: Any) -> str:
    """A Ray checkpoint's location with its scheme: ``Checkpoint.path`` is relative to its filesystem
    (``bucket/key`` for S3), which ``load_model`` or a user would read as a local folder."""
    fs = getattr(checkpoint, "filesystem", None)
    kind = getattr(fs, "type_name", "local")
    if kind == "local":
        return checkpoint.path
    if kind == "py":  # an fsspec filesystem wrapped by pyarrow
        protocol = getattr(getattr(fs.handler, "fs", None), "protocol", "file")
        protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
        return checkpoint.path if protocol in ("file", "local") else f"{protocol}://{checkpoint.path}"
    scheme = {"gcs": "gs"}.get(kind, kind)
    return f"{scheme}://{checkpoint.path}"


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
    probe = f"{path.rstrip('/')}/.mimlab-write-test"
    try:  # object stores have no empty folders: write (and remove) a probe object
        with fs.open(probe, "wb") as fh:
            fh.write(b"ok")
        fs.rm(probe)
    except Exception as err:  # noqa: BLE001 - any backend error means "unreachable"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"storage path '{storage_path}' is unreachable: {first}") from None
    return storage_path


# ------------------------------------------------------------------------------------------ where it runs
class _TrainSession:
    """Inside Ray Train: ``ray.train`` checkpoints/reports (or, in local mode, a local checkpoint folder).

    ``resume`` is what the driver's :func:`check_resume` found in Train storage: ``chosen`` (the checkpoint folder
    name to resume from) and ``skip`` (unreadable newer ones, already announced)."""

    def __init__(self, local_dir: str | None, resume: dict[str, Any] | None = None) -> None:
        import ray.train

        from mimlab.pretrain.checkpoint import LocalCheckpoints

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.local = LocalCheckpoints(local_dir) if local_dir else None
        self.resume = resume or {}

    def device(self, cfg):
        import torch

        if cfg.train.use_gpu and torch.cuda.is_available():
            import ray.train.torch

            return ray.train.torch.get_device()
        return torch.device("cpu")

    def latest(self) -> tuple[dict[str, Any], str] | None:
        """The state to resume from (:func:`~mimlab.pretrain.checkpoint.first_readable` over Ray's latest
        checkpoint, then the driver's pick), or ``None`` for a fresh run.

        Raises:
            UserError: no candidate is readable.
        """
        from pathlib import PurePosixPath

        import ray.train

        from mimlab.pretrain.checkpoint import first_readable, load_state

        if self.local is not None:
            folder = self.local.latest()
            return (load_state(folder), str(folder)) if folder is not None else None
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        here = PurePosixPath(ckpt.path)
        picks = [ckpt] if here.name not in self.resume.get("skip", ()) else []
        chosen = self.resume.get("chosen")
        if chosen and chosen != here.name:  # Ray's latest is unreadable (or newer, from a restart of this run)
            picks.append(ray.train.Checkpoint(str(here.parent / chosen), filesystem=ckpt.filesystem))

        def opener(c):
            def load() -> dict[str, Any]:
                with c.as_directory() as folder:
                    return load_state(folder)
            return load

        return first_readable(((checkpoint_uri(c), opener(c)) for c in picks), checkpoint_uri(ckpt).rsplit("/", 1)[0],
                              announce=self.rank == 0)

    def save_and_report(self, metrics: dict[str, Any], parts, epoch: int, history: dict[str, Any]) -> None:
        import ray.train

        from mimlab.pretrain.checkpoint import save_checkpoint

        if self.local is not None:  # local mode: Ray keeps no checkpoints, the folder is the store
            ray.train.report({**metrics, "checkpoint_dir": self.local.save(parts, epoch, history)})
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, parts, epoch, history)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def report(self, metrics: dict[str, Any]) -> None:
        import ray.train

        ray.train.report(metrics)


class _TuneSession:
    """In a Tune trial's own process: batches straight from the dataset, checkpoints through ``tune.report``
    into the sweep's storage (local or ``s3://``); a copy of the last one stays in ``local_dir`` for evaluation."""

    rank, world = 0, 1

    def __init__(self, local_dir: str) -> None:
        self.local_dir = Path(local_dir)
        self.last: dict[str, Any] = {}
        self.uri: str | None = None
        self.failure: str | None = None

    def device(self, cfg):
        import torch

        if cfg.train.use_gpu and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def latest(self) -> tuple[dict[str, Any], str] | None:
        from ray import tune

        from mimlab.pretrain.checkpoint import load_state

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        folder = self.local_dir / "checkpoint"
        if folder.exists():
            shutil.rmtree(folder)
        ckpt.to_directory(str(folder))
        self.uri = checkpoint_uri(ckpt)
        return load_state(folder), self.uri


    def save_and_report(self, metrics: dict[str, Any], parts, epoch: int, history: dict[str, Any]) -> None:
        from ray import tune

        from mimlab.pretrain.checkpoint import save_checkpoint

        folder, tmp = self.local_dir / "checkpoint", self.local_dir / "checkpoint.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_checkpoint(tmp, parts, epoch, history)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tune.report({**flat, "phase": "pretrain"}, checkpoint=tune.Checkpoint.from_directory(str(folder)))
        self.uri = checkpoint_uri(tune.get_checkpoint())
        self.last = dict(metrics)

    def report(self, metrics: dict[str, Any]) -> None:
        if "user_error" in metrics or "diverged" in metrics:
            self.failure = metrics.get("user_error") or metrics["diverged"]
        else:
            self.last = dict(metrics)


# ------------------------------------------------------------------------------------------ the train function
def _train_fn(config: dict[str, Any], session: Any = None) -> None:
    """Build, resume, train, checkpoint + report every epoch. Ray Train calls it with ``config`` only (a
    :class:`_TrainSession`); :func:`run_in_trial` passes a :class:`_TuneSession`.

    Every epoch streams its own fresh sample of the whole split (:func:`epoch_stream`), this worker's disjoint part.

    ``config``: ``cfg`` (resolved PretrainConfig), ``steps`` (per epoch), ``data`` (training URL, also the k-NN
    monitor's), ``split`` (``"train"`` for a root with splits, else ``None``),
    ``mlflow`` (``uri``, ``experiment``, ``name``, optional ``run_id``/``parent_run_id``), optional
    ``local_dir`` (local mode) and ``inject_failure`` (tests).
    """
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from mimlab.config.pretrain import PretrainConfig
    from mimlab.pretrain.build import IMAGENET_MEAN, IMAGENET_STD, build_parts
    from mimlab.pretrain.checkpoint import restore
    from mimlab.pretrain.engine import DivergedLoss, crops_from_columns, train_one_epoch
    from mimlab.pretrain.loop import BatchClasses, carry_forward, epoch_diagnostics, initial_knn
    from mimlab.pretrain.monitor import OnlineMonitor
    from mimlab.pretrain.schedules import Schedules

    session = session or _TrainSession(config.get("local_dir"), config.get("resume"))
    cfg = PretrainConfig.model_validate(config["cfg"])
    rank, world = session.rank, session.world
    device = session.device(cfg)
    parts = build_parts(cfg, device, rank)
    start, history = 0, {}
    try:
        found = session.latest()
        if found is not None:
            state, where = found
            start = restore(parts, state, where)
            history = state.get("history", {})
    except UserError as err:
        session.report({"user_error": str(err)})
        return
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        parts.student = DistributedDataParallel(parts.student, device_ids=ids)
    nodes = _worker_nodes(world)   # a collective: every rank takes part
    inject = config.get("inject_failure")
    sink = monitor = None
    error: str | None = None
    interrupted = False
    if rank == 0:
        ml = config["mlflow"]
        given = ml.get("run_id")
        sink = MlflowSink(ml["uri"], ml["experiment"], ml["name"], run_id=given or history.get("mlflow_run_id"),
                          params=cfg.resolved(), parent_run_id=ml.get("parent_run_id"), owned=not given)
        history["mlflow_run_id"] = sink.run_id
        sink.set_tag(NODES_TAG, json.dumps(nodes))
        launch = int(history.get("launches", 0))
        history["launches"] = launch + 1
        sink.log_epoch(launch, {"start_epoch": start})  # one point per (re)start: a restart from 0 shows at once
        if cfg.eval.knn_every > 0 or cfg.eval.probe_images > 0:
            monitor = OnlineMonitor(cfg, config["data"])
            initial_knn(parts, monitor, history, sink, cfg.eval.knn_every)
    steps = config["steps"]
    schedules = Schedules.from_config(cfg, steps, world)
    G, L = cfg.crops.global_crops, cfg.crops.local_crops
    try:
        if start >= cfg.optim.epochs:
            session.report(dict(history.get("last", {})))
        for epoch in range(start, cfg.optim.epochs):
            _inject(inject, rank, epoch)
            classes = BatchClasses()
            stream = epoch_stream(cfg, config["data"], config["split"], steps, epoch, rank, world)
            batches = (crops_from_columns(classes.see(b), G, L, IMAGENET_MEAN, IMAGENET_STD, device)
                       for b in stream.iter_torch_batches(batch_size=cfg.optim.batch_size_per_worker,
                                                          drop_last=True, device=str(device)))
            try:
                metrics = train_one_epoch(parts, batches, epoch, schedules, max_steps=steps,
                                          on_step=sink.log_step if sink else None, log_every=cfg.train.log_every)
            except DivergedLoss as err:
                error = str(err)
                session.report({"diverged": error, "epoch": epoch})
                return
            metrics["epoch"] = epoch
            metrics["torch_threads"] = torch.get_num_threads()  # CPU runs: what Ray's num_cpus left the worker
            mean_classes = classes.mean(int(metrics["steps"]))
            if mean_classes is not None:
                metrics["batch_classes"] = mean_classes
            if world > 1:
                metrics["teacher_rank_spread"] = _teacher_spread(parts.teacher)
            if rank == 0:
                metrics.update(epoch_diagnostics(parts, monitor, epoch, sink, cfg.eval.knn_every))
                measured = carry_forward(metrics, history)
                history["last"] = dict(metrics)
                sink.log_epoch(epoch, measured)
                session.save_and_report(metrics, parts, epoch, history)
            else:
                session.report(metrics)
            _inject(inject, rank, epoch, done=True)
    except (SystemExit, KeyboardInterrupt):   # stopped (Ctrl+C, Tune stopping the trial): resumable, not failed
        interrupted = True
        raise
    except BaseException as err:
        error = error or f"{type(err).__name__}: {err}"
        raise
    finally:
        if sink is not None:
            sink.close(error, interrupted=interrupted)


def _inject(inject: dict[str, Any] | None, rank: int, epoch: int, done: bool = False) -> None:
    """Tests and the rehearsal: log epoch start/done events; fail (``"raise"``) or kill (``"kill"``) the worker of
    ``inject["rank"]`` (default 0) once, at the start of ``inject["epoch"]``."""
    if not inject or rank != int(inject.get("rank", 0)):
        return
    with open(inject["events"], "a") as f:
        f.write(f"{'done' if done else 'start'} {epoch}\n")
    if done or epoch != inject["epoch"] or os.path.exists(inject["marker"]):
        return
    Path(inject["marker"]).write_text("failed once")
    if inject.get("how") == "kill":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected worker failure at epoch {epoch}")


def _worker_nodes(world: int) -> list[str]:
    """The Ray node id of every rank, in rank order (all ranks call it: an all-gather over the process group)."""
    import ray

    mine = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    if world == 1:
        return [mine]
    import torch.distributed as dist

    nodes: list[str | None] = [None] * world
    dist.all_gather_object(nodes, mine)
    return [str(n) for n in nodes]


def _teacher_spread(teacher) -> float:
    """Largest difference of any teacher weight across ranks (0.0 when DDP keeps them identical)."""
    import torch
    import torch.distributed as dist

    flat = torch.cat([p.detach().flatten().double() for p in teacher.parameters()])  # [P]
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max())


# ------------------------------------------------------------------------------------------ shared preparation
def _cpus_per_worker(workers: int) -> float:
    """1 CPU per worker, shrunk on small clusters so at least one CPU stays free for the Ray Data crop tasks
    (with every CPU held by a training worker the input pipeline can never be scheduled)."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    if workers <= 0 or total >= workers + 1:
        return 1.0
    return max(0.1, round((total - 1.0) / workers, 2))


def check_resources(workers: int, use_gpu: bool, gpus_per_worker: float, what: str = "--workers") -> None:
    """Fail before any work when the Ray cluster cannot hold the workers (Ray would wait for them forever).

    Raises:
        UserError: naming what was asked and what the cluster has.
    """
    import ray

    have = ray.cluster_resources()
    cpus, gpus = float(have.get("CPU", 0.0)), float(have.get("GPU", 0.0))
    n = max(1, workers)
    if use_gpu and workers == 0:
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"asked for a GPU ({what} 0 runs in this process) but this machine has no CUDA device")
    elif use_gpu and n * gpus_per_worker > gpus:
        raise UserError(f"asked for {n} worker(s) x {gpus_per_worker:g} GPU = {n * gpus_per_worker:g} GPU(s) "
                        f"({what} {workers}); the Ray cluster has {gpus:g} GPU(s) — lower {what} or "
                        f"--gpus-per-worker, or train on CPU (--gpus-per-worker 0)")
    if workers > cpus:
        raise UserError(f"asked for {workers} training worker(s) ({what} {workers}); the Ray cluster has "
                        f"{cpus:g} CPU(s) — lower {what}")


def _plan(cfg, data: str | None, world: int) -> tuple[str | None, str | None, int]:
    """(data URL, split, steps per epoch) for ``world`` workers; the rows are counted from the shard footers.

    Raises:
        UserError: fewer images than one global batch.
    """
    from mimlab.data.sample import has_splits, split_rows

    url = data if data is not None else cfg.data.train
    split = "train" if has_splits(url) else None
    global_batch = cfg.optim.batch_size_per_worker * world
    rows = split_rows(url, split)
    if cfg.data.limit:
        rows = min(rows, cfg.data.limit)
    steps = rows // global_batch
    if cfg.train.steps_per_epoch:
        steps = min(steps, cfg.train.steps_per_epoch)
    if steps < 1:
        raise UserError(f"the training data has {rows} images, fewer than one global batch "
                        f"({cfg.optim.batch_size_per_worker} per worker x {world} workers)")
    return url, split, steps


def epoch_stream(cfg, url: str | None, split: str | None, steps: int, epoch: int, rank: int, world: int):
    """One epoch's Ray Data multi-crop stream for one worker: ``steps × global batch`` rows drawn afresh from the
    whole split, seeded by ``(train.seed, epoch)``, mixed in ``data.shuffle_buffer`` windows; rank ``rank`` of
    ``world`` gets its disjoint ``steps × batch_size_per_worker`` rows."""
    from mimlab.data.pipeline import multicrop_dataset

    global_batch = cfg.optim.batch_size_per_worker * world
    return multicrop_dataset(url, multicrop_config(cfg), split=split, limit=steps * global_batch, epoch=epoch,
                             sample_seed=cfg.train.seed, shuffle_buffer=cfg.data.shuffle_buffer,
                             shard=(rank, world) if world > 1 else None)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: dict[str, Any], now: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two (nested) configs, sorted; ``ignore`` keys are skipped."""
    a, b = _flat(saved), _flat(now)
    return sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))


def check_resume(storage: str, name: str, local: bool) -> dict[str, Any]:
    """Before any work: the checkpoint run ``name`` resumes from, by the one rule of
    :func:`~mimlab.pretrain.checkpoint.first_readable` (newest readable; a corrupt newest one falls back to the
    previous one kept, with one line; none readable is one error).

    Local mode reads ``STORAGE/NAME/checkpoint-EEEE`` (:class:`LocalCheckpoints`); Ray Train reads the
    ``checkpoint_<time>`` folders of its run folder ``STORAGE/NAME`` (those of a run with a checkpoint snapshot).

    Returns:
        For Ray Train, ``{"chosen": folder name or None, "skip": [unreadable newer folder names]}`` for the workers
        (:class:`_TrainSession`); ``{}`` in local mode (the training function re-reads the verified folder).

    Raises:
        UserError: the run has checkpoints and none of them is readable.
    """
    from mimlab.data.fs import resolve
    from mimlab.pretrain.checkpoint import LocalCheckpoints, first_readable, load_state

    if local:
        LocalCheckpoints(Path(storage) / name).latest()
        return {}
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    run = f"{storage.rstrip('/')}/{name}"
    fs, root = resolve(run)
    if not fs.isfile(f"{root}/{CHECKPOINT_MANAGER_SNAPSHOT_FILENAME}"):
        return {"chosen": None, "skip": []}
    folders = sorted((p.rstrip("/") for p in fs.ls(root, detail=False)
                      if p.rstrip("/").rsplit("/", 1)[-1].startswith("checkpoint_") and fs.isdir(p)), reverse=True)
    names = [p.rsplit("/", 1)[-1] for p in folders]
    shown = [f"{run}/{n}" for n in names]
    found = first_readable(((label, lambda p=p: load_state(p, fs)) for label, p in zip(shown, folders)), run)
    if found is None:
        return {"chosen": None, "skip": []}
    at = shown.index(found[1])
    return {"chosen": names[at], "skip": names[:at]}


def check_same_run(storage: str, name: str, fingerprint: dict[str, Any]) -> None:
    """Refuse to resume run ``name`` with another config; write the fingerprint on a fresh run.

    The one allowed change is more ``optim.epochs`` (extending a run).

    Raises:
        UserError: naming the differing keys and how to start fresh.
    """
    from mimlab.data.fs import resolve

    fingerprint = json.loads(json.dumps(fingerprint))
    fs, root = resolve(f"{storage.rstrip('/')}/{name}")
    path = f"{root}/{RUN_FILE}"
    if fs.exists(path):
        with fs.open(path, "r") as fh:
            saved = json.loads(fh.read())
        ignore = tuple(f"cfg.{k}" for k in RUNTIME_KEYS) + ("cfg.optim.epochs",)
        changed = config_changes(saved, fingerprint, ignore=ignore)
        before = saved.get("cfg", {}).get("optim", {}).get("epochs", 0)
        after = fingerprint["cfg"]["optim"]["epochs"]
        if after < before:
            changed.append("cfg.optim.epochs (only more epochs may be added)")
        if changed:
            keys = ", ".join(k.removeprefix("cfg.") for k in changed)
            raise UserError(f"run '{name}' under {storage} was started with another config (differs in: {keys}); "
                            f"use a new --name, or delete {storage.rstrip('/')}/{name} to start it afresh")
        return
    fs.makedirs(root, exist_ok=True)
    with fs.open(path, "w") as fh:
        fh.write(json.dumps(fingerprint, indent=2))


def _apply_runtime(cfg, workers: int | None, gpus_per_worker: float | None):
    train = cfg.train.model_copy()
    if workers is not None:
        train.num_workers = workers
    if gpus_per_worker is not None:
        train.gpus_per_worker = gpus_per_worker if gpus_per_worker > 0 else train.gpus_per_worker
        train.use_gpu = gpus_per_worker > 0
    return cfg.model_copy(update={"train": train})


# ------------------------------------------------------------------------------------------ entry points
def run_pretrain(cfg: Any, *, data: str | None = None, name: str, storage_path: str | None = None,
                 workers: int | None = None, gpus_per_worker: float | None = None,
                 tracking_uri: str | None = None, experiment: str = "pretrain", mlflow_run_id: str | None = None,
                 parent_run_id: str | None = None, callbacks: list[Any] | None = None,
                 inject_failure: dict[str, Any] | None = None) -> PretrainResult:
    """Pretrain with Ray Train. Re-running with the same ``name`` and ``storage_path`` resumes from the last
    checkpoint (the same config, or more epochs; anything else is refused); a failed worker costs at most the
    current epoch (``train.max_failures`` retries).

    Args:
        cfg: :class:`~mimlab.config.pretrain.PretrainConfig` (or dict / YAML path).
        data: training shards URL (overrides ``data.train``; ``None`` = embedded dataset).
        name: run name (Ray Train run folder under ``storage_path`` and the MLflow run name).
        storage_path: local folder or ``s3://…`` (default ``train.storage_path``).
        workers: DDP workers (``0`` = Ray Train's local mode, in this process); default ``train.num_workers``.
        gpus_per_worker: GPUs per worker (> 0 turns on ``use_gpu``).
        tracking_uri: MLflow store (default ``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
        experiment: MLflow experiment name.
        mlflow_run_id: log into this existing run (a sweep trial's child run) and leave it open.
        parent_run_id: nest a new MLflow run under this one.
        callbacks: Ray Train ``UserCallback`` s (a sweep trial forwards epochs to Tune with one).
        inject_failure: tests only — ``{"epoch", "marker", "events"[, "rank", "how"]}`` fails a worker once.

    Returns:
        :class:`PretrainResult` (checkpoint folder of the last epoch, its URI, rank-0 metrics of the last epoch).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from mimlab.pretrain.build import preflight
    from mimlab.pretrain.checkpoint import LocalCheckpoints
    from mimlab.runtime import tracking
    from mimlab.runtime.ray_env import apply_default_env, ensure_ray

    apply_default_env()
    cfg = _apply_runtime(resolve_config(cfg), workers, gpus_per_worker)
    train = cfg.train
    preflight(cfg)
    data = local_path(data)
    storage = check_storage(local_path(storage_path or cfg.train.storage_path))
    if train.num_workers == 0 and "://" in storage:
        raise UserError(f"local mode (0 workers) writes checkpoints to a local folder; storage path "
                        f"'{storage}' is remote — use --workers 1 or a local --storage-path")
    resume = check_resume(storage, name, local=train.num_workers == 0)
    uri = tracking.tracking_uri(tracking_uri)
    if mlflow_run_id is None:
        tracking.ensure_experiment(uri, experiment)  # here, so its artifact root is beside the store
    ensure_ray()
    check_resources(train.num_workers, train.use_gpu, train.gpus_per_worker)
    local_dir = None
    if train.num_workers == 0:
        local_dir = str(Path(storage) / name)
    world = max(1, train.num_workers)
    url, split, steps = _plan(cfg, data, world)
    check_same_run(storage, name, {"cfg": cfg.resolved(), "data": url})
    cpus = _cpus_per_worker(train.num_workers)
    resources = {"CPU": cpus, "GPU": train.gpus_per_worker} if train.use_gpu else {"CPU": cpus}
    trainer = TorchTrainer(
        _train_fn,
        train_loop_config={"cfg": cfg.resolved(), "steps": steps, "data": url, "split": split,
                           "inject_failure": inject_failure,
                           "local_dir": local_dir, "resume": resume,
                           "mlflow": {"uri": uri, "experiment": experiment, "name": name, "run_id": mlflow_run_id,
                                      "parent_run_id": parent_run_id}},
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                                     resources_per_worker=resources if train.num_workers > 0 else None,
                                     placement_strategy=train.placement),
        run_config=RunConfig(name=name, storage_path=storage, callbacks=callbacks or None,
                             # a worker group that cannot start fails after RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S
                             # instead of being retried forever (Ray's default limit is -1 = no limit)
                             failure_config=FailureConfig(max_failures=train.max_failures,
                                                          controller_failure_limit=max(1, train.max_failures)),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    uri_ckpt = checkpoint_uri(result.checkpoint) if result.checkpoint is not None else metrics.pop("checkpoint_dir",
                                                                                                    None)
    if local_dir is not None:
        latest = LocalCheckpoints(local_dir).pointed()
        uri_ckpt = str(latest) if latest is not None else None
    if "user_error" in metrics:
        raise UserError(metrics["user_error"])
    if "diverged" in metrics:
        raise UserError(f"{metrics['diverged']}; run stopped, last good checkpoint: {uri_ckpt or 'none'}")
    if uri_ckpt is None:
        raise UserError(f"run '{name}' finished without a checkpoint")
    metrics.pop("checkpoint_dir", None)
    folder = uri_ckpt
    if "://" in uri_ckpt:  # a local copy for load_model (evaluation), beside the other Ray temp files
        folder = tempfile.mkdtemp(prefix=f"mimlab-{name}-")
        result.checkpoint.to_directory(folder)
    return PretrainResult(folder, metrics, uri_ckpt)


def run_in_trial(cfg: Any, *, data: str | None, local_dir: str, tracking_uri: str, experiment: str,
                 run_id: str, name: str) -> PretrainResult:
    """Pretrain inside a Tune trial's process (the 1-worker sweep trial): :func:`_train_fn` over the Ray Data
    stream, a checkpoint into Tune storage every epoch (``tune.report``), resumed from Tune's last checkpoint.

    Args:
        cfg: the trial's PretrainConfig.
        data: training shards URL (absolute or a URL; ``None`` = embedded dataset).
        local_dir: this trial's local folder (the last checkpoint's copy for evaluation lives there).
        tracking_uri, experiment, run_id: the trial's MLflow child run (per-step and per-epoch metrics go there).
        name: MLflow run name (used only if ``run_id`` were empty).

    Raises:
        UserError: a diverged loss (naming the last good checkpoint) or an incompatible checkpoint.
    """
    from mimlab.pretrain.build import preflight

    cfg = resolve_config(cfg)
    preflight(cfg)
    url, split, steps = _plan(cfg, data, 1)
    session = _TuneSession(local_dir)
    _train_fn({"cfg": cfg.resolved(), "steps": steps, "data": url, "split": split,
               "mlflow": {"uri": tracking_uri, "experiment": experiment, "name": name, "run_id": run_id}}, session)
    if session.failure is not None:
        raise UserError(f"{session.failure}; run stopped, last good checkpoint: {session.uri or 'none'}")
    folder = Path(local_dir) / "checkpoint"
    if not (folder / "state.pt").is_file():
        raise UserError(f"trial '{name}' finished without a checkpoint")
    return PretrainResult(str(folder), session.last, session.uri)
