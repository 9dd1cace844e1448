"""Ray Tune sweeps over the thesis experiments, with one MLflow parent run per sweep and a child run per trial.

Design (ecosystem-notes §1c/§1d): every trial is a plain Tune *function* trainable (one GPU each when GPUs are
used) that pretrains with :func:`mimlab.pretrain.loop.pretrain_local`, reports per epoch with ``tune.report`` and then
evaluates k-NN and the linear probe in-process. A multi-GPU Train-in-Tune mode (``workers_per_trial > 1``) runs a
TorchTrainer from inside the trial; no early-stopping scheduler is ever used (ASHA + Train-in-Tune deadlocks, ray#54305).
Failed trials are recorded (Tune ERROR, MLflow FAILED) and the sweep goes on (``max_failures=0``); an interrupted sweep
resumes with ``Tuner.restore`` without re-running finished trials.

Order of work in :func:`run_sweep` — every user mistake fails before a trial starts: experiment/profile/sweep keys
(validated on load) → data URL → MLflow store → Ray address → ``mlflow server`` (SQLite only) → parent run → Tune.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mimlab.config.experiment import Experiment, SweepPoint, load_experiment, trial_config
from mimlab.errors import UserError

SWEEP_FILE = "mimlab-sweep.json"
ROLE_TAG = "mimlab.role"
TABLE_METRICS = ("knn_top1", "linear_top1")

# A trial body: (cfg, run) -> final metrics. ``run`` gives the trial's context, out_dir and per-epoch ``report``.
TrialBody = Callable[..., dict[str, float]]


# ------------------------------------------------------------------------------------------------ trial context
@dataclass
class TrialContext:
    """Everything a trial needs, shipped once through the object store (``tune.with_parameters``).

    It is rebuilt on every (re)start of the sweep, so a resumed sweep talks to the new MLflow server.
    """

    sweep: str
    profile: str
    points: list[SweepPoint]
    evaluation: dict[str, Any]
    tracking_uri: str
    mlflow_experiment: str
    parent_run_id: str
    data_train: str | None = None
    data_val: str | None = None
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1
    storage_path: str | None = None
    body: TrialBody | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrialRun:
    """What a trial body receives besides its config."""

    ctx: TrialContext
    point: SweepPoint
    seed: int
    out_dir: Path
    report: Callable[[int, dict[str, Any]], None]


def trial_key(point: int, seed: int) -> str:
    return f"p{point:03d}-s{seed}"


def _numeric(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten a (nested) metrics dict to finite floats: ``{"top1": {"20": 0.5}}`` -> ``{"top1.20": 0.5}``."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_numeric(value, f"{name}."))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, (int, float)) and math.isfinite(float(value)):
            out[name] = float(value)
    return out


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune function trainable: one sweep point at one seed, logged as a nested MLflow child run."""
    import mlflow
    from ray import tune

    from mimlab.runtime import tracking

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    point = ctx.points[int(config["point"])]
    seed = int(config["seed"])
    cfg = trial_config(point, seed=seed, data_train=ctx.data_train, data_val=ctx.data_val)
    if ctx.gpus_per_trial > 0:
        cfg.train.use_gpu = True
        cfg.train.gpus_per_worker = ctx.gpus_per_trial
    try:
        out_dir = Path(tune.get_context().get_trial_dir())
    except Exception:  # noqa: BLE001 (outside Tune, e.g. a direct call)
        out_dir = Path.cwd()
    key = trial_key(point.index, seed)
    tags = {ROLE_TAG: "trial", "mimlab.sweep": ctx.sweep, "mimlab.profile": ctx.profile, "mimlab.trial_key": key}
    params = {"sweep": {"label": point.label, "point": point.index, "seed": seed,
                        **{k: json.dumps(v) if not isinstance(v, str) else v for k, v in point.overrides.items()}},
              **cfg.resolved()}
    with tracking.run(f"{point.label} · seed {seed}", uri=ctx.tracking_uri, experiment=ctx.mlflow_experiment,
                      parent_run_id=ctx.parent_run_id, params=params, tags=tags):

        def report(epoch: int, metrics: dict[str, Any]) -> None:
            flat = _numeric(metrics)
            if flat:
                mlflow.log_metrics(flat, step=int(epoch))
            tune.report({**flat, "epoch": int(epoch), "phase": "pretrain"})

        body = ctx.body or pretrain_and_evaluate
        final = _numeric(body(cfg, TrialRun(ctx, point, seed, out_dir, report)))
        mlflow.log_metrics(final)
        mlflow.log_dict({"label": point.label, "seed": seed, "overrides": point.overrides, "metrics": final},
                        "trial_result.json")
    # After the child run is closed: Tune may tear the actor down as soon as the function returns.
    tune.report({**final, "phase": "done"})


# ----------------------------------------------------------------------------------------- the real trial body
def _pick_top1(result: dict[str, Any], ks: list[int]) -> tuple[float | None, dict[str, float]]:
    """Pull top-1 per k out of ``run_knn``'s result; the headline is k = 20 (DINO/iBOT convention) when present."""
    flat = _numeric(result)
    per_k: dict[str, float] = {}
    for k in ks:
        for cand in (f"top1.{k}", f"k{k}.top1", f"{k}.top1", f"top1_k{k}", f"knn_top1_k{k}", f"results.{k}.top1"):
            if cand in flat:
                per_k[f"knn_top1_k{k}"] = flat[cand]
                break
        for cand in (f"top5.{k}", f"k{k}.top5", f"{k}.top5", f"top5_k{k}", f"results.{k}.top5"):
            if cand in flat:
                per_k[f"knn_top5_k{k}"] = flat[cand]
                break
    head = per_k.get("knn_top1_k20") or (per_k.get(f"knn_top1_k{ks[0]}") if ks else None)
    if head is None:
        head = flat.get("top1") or flat.get("knn_top1")
    return head, per_k


def pretrain_and_evaluate(cfg: Any, run: TrialRun) -> dict[str, float]:
    """Pretrain (plain process or Train-in-Tune), then k-NN and the linear probe on the trial's checkpoint."""
    ev = run.ctx.evaluation
    if run.ctx.workers_per_trial > 1:
        from mimlab.runtime.train import run_pretrain

        result = run_pretrain(cfg, data=run.ctx.data_train, name=f"{run.ctx.sweep}-{trial_key(run.point.index, run.seed)}",
                              storage_path=run.ctx.storage_path, workers=run.ctx.workers_per_trial,
                              gpus_per_worker=run.ctx.gpus_per_trial or None, tracking_uri=run.ctx.tracking_uri,
                              experiment=f"{run.ctx.mlflow_experiment}-pretrain")
    else:
        from mimlab.pretrain.loop import pretrain_local

        result = pretrain_local(cfg, data=run.ctx.data_train, out_dir=str(run.out_dir / "checkpoint"),
                                on_epoch=run.report)
    metrics: dict[str, float] = {f"pretrain.{k}": v for k, v in _numeric(result.metrics).items()}
    _log_checkpoint(result.checkpoint_dir)

    from mimlab.evaluation.api import run_knn, run_linear

    ks = list(ev["knn_ks"])
    knn = run_knn(result.checkpoint_dir, train=run.ctx.data_train, val=run.ctx.data_val, ks=tuple(ks),
                  temperature=float(ev["knn_temperature"]), limit=ev.get("train_limit"), log_mlflow=False,
                  workers=0, batch_size=ev["batch_size"], **_val_limit(run_knn, ev))
    head, per_k = _pick_top1(knn, ks)
    metrics.update(per_k)
    if head is not None:
        metrics["knn_top1"] = head
    if ev.get("linear", True):
        lin = run_linear(result.checkpoint_dir, train=run.ctx.data_train, val=run.ctx.data_val,
                         epochs=int(ev["linear_epochs"]), cached_features=bool(ev["cached_features"]),
                         base_lr=float(ev.get("linear_lr", 0.003)),
                         limit=ev.get("train_limit"), log_mlflow=False, workers=0, batch_size=ev["batch_size"],
                         seed=run.seed, **_val_limit(run_linear, ev))
        flat = _numeric(lin)
        best = next((flat[c] for c in ("best_top1", "best.top1", "top1", "final_top1") if c in flat), None)
        if best is not None:
            metrics["linear_top1"] = best
        curve = next((v for k, v in lin.items() if k in ("curve", "top1_curve", "val_top1") and isinstance(v, list)),
                     None)
        if curve:
            import mlflow

            for epoch, value in enumerate(curve):
                mlflow.log_metric("linear_curve_top1", float(value), step=epoch)
    return metrics


def _val_limit(fn: Callable[..., Any], ev: dict[str, Any]) -> dict[str, Any]:
    """Pass ``val_limit`` only to evaluation functions that take it."""
    import inspect

    params = inspect.signature(fn).parameters
    return {"val_limit": ev["val_limit"]} if "val_limit" in params and ev.get("val_limit") else {}


def _log_checkpoint(checkpoint_dir: str) -> None:
    """The teacher backbone + its description, so every child run carries a loadable model."""
    import mlflow

    for name in ("backbone.json", "teacher_backbone.safetensors"):
        path = Path(checkpoint_dir) / name
        if path.is_file():
            mlflow.log_artifact(str(path), artifact_path="checkpoint")


# -------------------------------------------------------------------------------------------- pre-flight checks
def resolve_data(url: str | None) -> tuple[str | None, str | None]:
    """``--data URL`` -> (train, val) split URLs; ``None`` = the embedded dataset.

    ``URL`` must hold ``train/`` and ``val/`` (or ``test/``) shard folders.

    Raises:
        UserError: the URL (or its splits) cannot be reached.
    """
    if url is None:
        return None, None
    try:
        from mimlab.data.fs import resolve
    except ImportError:  # pragma: no cover - the data family is always present in a full install
        import fsspec

        def resolve(u: str) -> tuple[Any, str]:
            return fsspec.core.url_to_fs(u)
    fs, root = resolve(url)
    try:
        exists = fs.exists(root)
    except Exception as err:  # noqa: BLE001 (network/credential errors)
        raise UserError(f"--data '{url}' is unreachable: {err.__class__.__name__}: {err}") from None
    if not exists:
        raise UserError(f"--data '{url}' does not exist")
    sep = url.rstrip("/")
    train = f"{sep}/train"
    if not fs.exists(f"{root.rstrip('/')}/train"):
        raise UserError(f"--data '{url}' has no train/ folder; expected train/ and val/ (or test/) shard folders")
    for name in ("val", "test"):
        if fs.exists(f"{root.rstrip('/')}/{name}"):
            return train, f"{sep}/{name}"
    raise UserError(f"--data '{url}' has no val/ or test/ folder; expected train/ and val/ shard folders")


def check_ray_address(address: str | None) -> None:
    """Fail fast (a TCP connect, 5 s) when a given Ray cluster address cannot be reached."""
    import socket

    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"Ray cluster address '{address}' should look like HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as err:
        raise UserError(f"cannot reach the Ray cluster at '{address}': {err.strerror or err}") from None


def check_tracking(uri: str | None) -> str:
    """Resolve the tracking URI and make sure it can be written (SQLite) or reached (HTTP)."""
    from mimlab.runtime import tracking
    from mimlab.runtime.mlflow_server import healthy

    resolved = tracking.tracking_uri(uri)
    if resolved.startswith(("http://", "https://")) and not healthy(resolved.rstrip("/"), timeout=5):
        raise UserError(f"MLflow tracking server '{resolved}' is unreachable (GET /health failed)")
    return resolved


# ------------------------------------------------------------------------------------------------- the sweep run
@dataclass
class SweepResult:
    name: str
    profile: str
    parent_run_id: str
    tracking_uri: str
    sweep_dir: str
    table: SweepTable
    interrupted: bool
    num_errors: int


def _sweep_root(storage_path: str | None) -> str:
    base = storage_path or os.environ.get("MIMLAB_TUNE_STORAGE") or "./runs/tune"
    return base if "://" in base else str(Path(base).resolve())


def _latest_sweep_dir(root: str, prefix: str) -> str | None:
    if "://" in root:
        from mimlab.data.fs import resolve

        fs, path = resolve(root)
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)) if fs.exists(path) else []
    else:
        names = sorted(p.name for p in Path(root).glob("*") if p.is_dir()) if Path(root).is_dir() else []
    names = [n for n in names if n.startswith(prefix)]
    return f"{root.rstrip('/')}/{names[-1]}" if names else None


def _write_sweep_file(sweep_dir: str, info: dict[str, Any]) -> None:
    if "://" in sweep_dir:
        from mimlab.data.fs import resolve

        fs, path = resolve(f"{sweep_dir}/{SWEEP_FILE}")
        with fs.open(path, "w") as fh:
            fh.write(json.dumps(info, indent=2))
        return
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    (Path(sweep_dir) / SWEEP_FILE).write_text(json.dumps(info, indent=2))


def _read_sweep_file(sweep_dir: str) -> dict[str, Any]:
    if "://" in sweep_dir:
        from mimlab.data.fs import resolve

        fs, path = resolve(f"{sweep_dir}/{SWEEP_FILE}")
        with fs.open(path, "r") as fh:
            return json.loads(fh.read())
    return json.loads((Path(sweep_dir) / SWEEP_FILE).read_text())


def run_sweep(
    *,
    name: str,
    profile: str | None = None,
    data: str | None = None,
    seeds: int = 1,
    max_concurrent: int | None = None,
    gpus_per_trial: float | None = None,
    cpus_per_trial: float | None = None,
    workers_per_trial: int = 1,
    resume: bool = False,
    tracking_uri: str | None = None,
    address: str | None = None,
    storage_path: str | None = None,
    experiments_root: str | None = None,
    body: TrialBody | None = None,
    callbacks: list[Any] | None = None,
    echo: Callable[[str], None] = print,
) -> SweepResult:
    """Run (or resume) the sweep of experiment ``name`` at ``profile`` on Ray Tune and log it to MLflow.

    Args:
        name: experiment name (``masking-layers``) or YAML path.
        profile: scale profile; default = the experiment's ``default_profile``.
        data: dataset root URL holding ``train/`` and ``val/``; ``None`` = embedded dataset.
        seeds: repeat each sweep point with seeds ``0..seeds-1`` (a grid axis, so seeds are distinct).
        max_concurrent: cap on trials running at once (default: the profile's, else Tune's).
        gpus_per_trial: GPUs per trial (default: the profile's).
        workers_per_trial: > 1 selects the Train-in-Tune mode (a TorchTrainer per trial, no scheduler).
        resume: continue the latest interrupted sweep of this experiment/profile.
        tracking_uri: MLflow store (default ``sqlite:///./mlflow.db``); a SQLite store gets a local server.
        address: Ray cluster address (default: ``$RAY_ADDRESS`` or a local runtime).
        storage_path: Tune storage root (local folder or ``s3://…``; default ``./runs/tune``).
        body: trial body replacing pretrain+evaluate (tests use tiny ones).
        callbacks: extra Tune callbacks.
        echo: where progress lines go.

    Returns:
        The :class:`SweepResult` with the results table (mean ± std over seeds).
    """
    from mimlab.runtime.mlflow_server import MlflowServer
    from mimlab.runtime.ray_env import apply_default_env, ensure_ray

    apply_default_env()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")   # the legacy reporter honours verbose=0; we print our own lines
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    if workers_per_trial < 1:
        raise UserError(f"--workers-per-trial must be >= 1, got {workers_per_trial}")
    exp = load_experiment(name, profile, root=experiments_root)
    if exp.profile.data_required and data is None:
        raise UserError(f"profile '{exp.profile_name}' needs --data URL (a folder with train/ and val/ shards)")
    data_train, data_val = resolve_data(data)
    uri = check_tracking(tracking_uri)
    import ray

    if not ray.is_initialized():
        check_ray_address(address)
    res = exp.profile.resources
    gpus = res.gpus_per_trial if gpus_per_trial is None else float(gpus_per_trial)
    cpus = res.cpus_per_trial if cpus_per_trial is None else float(cpus_per_trial)
    concurrent = max_concurrent or res.max_concurrent
    if gpus < 0:
        raise UserError(f"--gpus-per-trial must be >= 0, got {gpus}")

    root = _sweep_root(storage_path)
    prefix = f"{exp.name}-{exp.profile_name}-"
    previous: dict[str, Any] | None = None
    if resume:
        sweep_dir = _latest_sweep_dir(root, prefix)
        from ray import tune

        if sweep_dir is None or not tune.Tuner.can_restore(sweep_dir):
            raise UserError(f"nothing to resume: no sweep of '{exp.name}' (profile '{exp.profile_name}') "
                            f"under {root}")
        previous = _read_sweep_file(sweep_dir)
    else:
        sweep_dir = f"{root.rstrip('/')}/{prefix}{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"

    server = MlflowServer(uri) if uri.startswith("sqlite:///") else None
    t0 = time.monotonic()
    if server is not None:
        server.start()   # starts in the background (~12 s on 2 cores) while Ray comes up
    try:
        ensure_ray(address)
        echo(f"ray ready ({time.monotonic() - t0:.0f} s)")
        trial_uri = server.wait() if server is not None else uri
        if server is not None:
            echo(f"mlflow server for {uri} on {trial_uri} ({time.monotonic() - t0:.0f} s)")
        if exp.profile.caveat:
            echo(exp.profile.caveat)
        parent_id, mlflow_exp = _open_parent(exp, trial_uri, sweep_dir, seeds, previous)
        _write_sweep_file(sweep_dir, {"experiment": exp.name, "profile": exp.profile_name, "seeds": seeds,
                                      "parent_run_id": parent_id, "mlflow_experiment": mlflow_exp,
                                      "tracking_uri": uri, "data": data})
        ctx = TrialContext(sweep=exp.name, profile=exp.profile_name, points=exp.points,
                           evaluation=exp.evaluation.model_dump(), tracking_uri=trial_uri,
                           mlflow_experiment=mlflow_exp, parent_run_id=parent_id, data_train=data_train,
                           data_val=data_val, gpus_per_trial=gpus, workers_per_trial=workers_per_trial,
                           storage_path=root, body=body)
        echo(f"sweep {exp.name} [{exp.profile_name}]: {len(exp.points)} points x {seeds} seed(s) = "
             f"{len(exp.points) * seeds} trials, {cpus:g} CPU / {gpus:g} GPU each"
             f"{f', at most {concurrent} at once' if concurrent else ''}; MLflow parent run {parent_id}")
        started = time.monotonic()
        grid = _fit(exp, ctx, sweep_dir, seeds=seeds, cpus=cpus, gpus=gpus, concurrent=concurrent,
                    workers=workers_per_trial, resume=resume, callbacks=callbacks or [], echo=echo)
        num_errors = grid.num_errors
        finished = sum(1 for r in grid if r.error is None and (r.metrics or {}).get("phase") == "done")
        interrupted = finished + num_errors < len(exp.points) * seeds   # unstarted trials may be absent
        table = results_table(trial_uri, parent_id, metrics=exp.spec.plot.metrics)
        _close_parent(exp, trial_uri, parent_id, table, interrupted, num_errors, time.monotonic() - started)
    finally:
        if server is not None:
            server.stop()
    return SweepResult(exp.name, exp.profile_name, parent_id, uri, sweep_dir, table, interrupted, num_errors)


def _fit(exp: Experiment, ctx: TrialContext, sweep_dir: str, *, seeds: int, cpus: float, gpus: float,
         concurrent: int | None, workers: int, resume: bool, callbacks: list[Any],
         echo: Callable[[str], None]) -> Any:
    from ray import tune

    if workers > 1:  # Train-in-Tune: the trial only drives a TorchTrainer that reserves the workers itself
        resources: dict[str, float] = {"CPU": 1}
    else:
        resources = {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
    progress = _Progress(exp, ctx, seeds, echo)
    run_config = tune.RunConfig(
        name=sweep_dir.rstrip("/").rsplit("/", 1)[-1],
        storage_path=sweep_dir.rstrip("/").rsplit("/", 1)[0],
        failure_config=tune.FailureConfig(max_failures=0),
        callbacks=[progress, *callbacks],
        verbose=0,
    )
    if resume:
        tuner = tune.Tuner.restore(sweep_dir, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
        # The pickled RunConfig brings back the interrupted run's callbacks (old MLflow URL, old printer);
        # Tuner.restore takes no RunConfig, so swap in this run's callbacks.
        restored = getattr(getattr(tuner, "_local_tuner", None), "get_run_config", None)
        if restored is not None:
            restored().callbacks = run_config.callbacks
        done = _count_done(sweep_dir)
        progress.done = done
        echo(f"resuming {sweep_dir}: {done} trial(s) already finished are not re-run")
    else:
        space = {"point": tune.grid_search([p.index for p in exp.points]),
                 "seed": tune.grid_search(list(range(seeds)))}
        tuner = tune.Tuner(trainable, param_space=space,
                           tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, num_samples=1,
                                                       reuse_actors=False),
                           run_config=run_config)
    return tuner.fit()


def _count_done(sweep_dir: str) -> int:
    try:
        from ray.tune import ExperimentAnalysis

        analysis = ExperimentAnalysis(sweep_dir)
        return sum(1 for t in analysis.trials if t.status == "TERMINATED")
    except Exception:  # noqa: BLE001 (best effort, only for the progress counter)
        return 0


def _progress_class() -> type:
    from ray.tune import Callback

    class Progress(Callback):
        """One concise line per finished/failed trial (and per pretraining epoch) on the driver."""

        def __init__(self, exp: Experiment, ctx: TrialContext, seeds: int, echo: Callable[[str], None]) -> None:
            self.exp, self.ctx, self.total, self.echo = exp, ctx, len(exp.points) * seeds, echo
            self.done = 0
            self.start = time.monotonic()

        def _label(self, trial: Any) -> str:
            point = self.exp.points[int(trial.config["point"])]
            return f"{point.label} (seed {trial.config['seed']})"

        def _clock(self) -> str:
            return time.strftime("%M:%S", time.gmtime(time.monotonic() - self.start))

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if result.get("phase") == "pretrain":
                loss = next((result[k] for k in ("loss", "train_loss", "loss_total") if k in result), None)
                extra = f" loss {loss:.3f}" if isinstance(loss, float) else ""
                self.echo(f"  {self._clock()} {self._label(trial)}: epoch {result.get('epoch')}{extra}")

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.done += 1
            res = trial.last_result or {}
            figures = " ".join(f"{m} {res[m]:.2f}" for m in TABLE_METRICS if isinstance(res.get(m), float))
            self.echo(f"[{self.done}/{self.total}] {self._clock()} {self._label(trial)}: {figures or 'done'}")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.done += 1
            message = _error_line(trial)
            self.echo(f"[{self.done}/{self.total}] {self._clock()} {self._label(trial)}: FAILED "
                      f"(recorded; the sweep goes on) — {message}")
            try:
                _mark_failed(self.ctx, int(trial.config["point"]), int(trial.config["seed"]), message)
            except Exception as err:  # noqa: BLE001 (never let bookkeeping stop the sweep)
                self.echo(f"  (could not mark the failure in MLflow: {err})")

    return Progress


def _mark_failed(ctx: TrialContext, point: int, seed: int, message: str) -> None:
    """Record a failed trial in MLflow from the driver: close its child run as FAILED, or create one."""
    client = _client(ctx.tracking_uri)
    parent = client.get_run(ctx.parent_run_id)
    key = trial_key(point, seed)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{ctx.parent_run_id}' and "
                                            f"tags.`mimlab.trial_key` = '{key}'")
    running = [r for r in runs if r.info.status in ("RUNNING", "SCHEDULED")]
    for run in running:
        client.set_tag(run.info.run_id, "mimlab.error", message[:5000])
        client.set_terminated(run.info.run_id, status="FAILED")
    if not any(r.info.status in ("RUNNING", "SCHEDULED", "FAILED") for r in runs):
        label = ctx.points[point].label
        run = client.create_run(parent.info.experiment_id, run_name=f"{label} · seed {seed}",
                                tags={"mlflow.parentRunId": ctx.parent_run_id, ROLE_TAG: "trial",
                                      "mimlab.sweep": ctx.sweep, "mimlab.trial_key": key,
                                      "mimlab.error": message[:5000]})
        for name, value in (("sweep.label", label), ("sweep.point", point), ("sweep.seed", seed)):
            client.log_param(run.info.run_id, name, str(value))
        client.set_terminated(run.info.run_id, status="FAILED")


def _error_line(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        return lines[-1][:200] if lines else "see the trial's error.txt"
    except OSError:
        return "see the trial's error.txt"


def _Progress(exp: Experiment, ctx: TrialContext, seeds: int,  # noqa: N802 (factory)
              echo: Callable[[str], None]) -> Any:
    return _progress_class()(exp, ctx, seeds, echo)


# --------------------------------------------------------------------------------------------------- MLflow side
def mlflow_experiment_name(sweep: str) -> str:
    return f"tune-{sweep}"


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _open_parent(exp: Experiment, uri: str, sweep_dir: str, seeds: int,
                 previous: dict[str, Any] | None) -> tuple[str, str]:
    """Create (or on resume reopen) the sweep's parent run; returns (run id, MLflow experiment name)."""
    client = _client(uri)
    name = mlflow_experiment_name(exp.name)
    found = client.get_experiment_by_name(name)
    exp_id = found.experiment_id if found else client.create_experiment(name)
    if previous is not None:
        run_id = previous["parent_run_id"]
        client.update_run(run_id, status="RUNNING")
        return run_id, name
    tags = {ROLE_TAG: "sweep", "mimlab.sweep": exp.name, "mimlab.profile": exp.profile_name,
            "mimlab.sweep_dir": sweep_dir, "mlflow.note.content": exp.spec.description}
    run = client.create_run(exp_id, run_name=f"{exp.name} [{exp.profile_name}]", tags=tags)
    params = {"experiment": exp.name, "profile": exp.profile_name, "thesis": exp.spec.thesis, "seeds": seeds,
              "points": len(exp.points), "sweep_keys": ", ".join(exp.sweep_keys)}
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value)[:6000])
    client.log_dict(run.info.run_id, {"points": [{"index": p.index, "label": p.label, "overrides": p.overrides}
                                                 for p in exp.points]}, "sweep_points.json")
    return run.info.run_id, name


def _close_parent(exp: Experiment, uri: str, parent_id: str, table: SweepTable, interrupted: bool,
                  num_errors: int, seconds: float) -> None:
    client = _client(uri)
    client.log_text(parent_id, table.to_markdown(), "results.md")
    client.log_dict(parent_id, table.to_json(), "results.json")
    client.log_metric(parent_id, "trials_finished", table.finished)
    client.log_metric(parent_id, "trials_failed", table.failed)
    client.log_metric(parent_id, "sweep_seconds", seconds)
    for row in table.rows:
        for metric, (mean, _std, _n) in row.stats.items():
            if mean is not None:
                client.log_metric(parent_id, f"{metric}.{row.index:02d}", mean)
    fig = plot_table(exp, table)
    if fig is not None:
        client.log_figure(parent_id, fig, "results.png")
    status = "KILLED" if interrupted else ("FAILED" if table.finished == 0 else "FINISHED")
    client.set_terminated(parent_id, status=status)


# ------------------------------------------------------------------------------------------------ results table
@dataclass
class TableRow:
    index: int
    label: str
    stats: dict[str, tuple[float | None, float | None, int]]   # metric -> (mean, std, n)
    failed: int


@dataclass
class SweepTable:
    """Mean ± std over seeds per sweep point, built from the child runs of a parent run."""

    metrics: list[str]
    rows: list[TableRow]
    finished: int
    failed: int

    @staticmethod
    def _cell(mean: float | None, std: float | None, n: int) -> str:
        if mean is None:
            return "—"
        return f"{mean:.2f} ± {std:.2f}" if (std is not None and n > 1) else f"{mean:.2f}"

    def to_rows(self) -> list[list[str]]:
        out = []
        for row in self.rows:
            n = max((s[2] for s in row.stats.values()), default=0)
            cells = [self._cell(*row.stats.get(m, (None, None, 0))) for m in self.metrics]
            out.append([row.label, *cells, str(n), str(row.failed)])
        return out

    def header(self) -> list[str]:
        return ["point", *self.metrics, "seeds", "failed"]

    def to_text(self) -> str:
        rows = [self.header(), *self.to_rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        head = self.header()
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in self.to_rows()]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "finished": self.finished, "failed": self.failed,
                "rows": [{"index": r.index, "label": r.label, "failed": r.failed,
                          "stats": {m: {"mean": s[0], "std": s[1], "n": s[2]} for m, s in r.stats.items()}}
                         for r in self.rows]}


def child_runs(uri: str, parent_run_id: str) -> list[Any]:
    """All child runs of a parent (any status)."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=5000)


def results_table(uri: str, parent_run_id: str, metrics: list[str] | None = None) -> SweepTable:
    """Group the finished child runs by sweep point: mean ± sample std over seeds; count failures."""
    metrics = list(metrics or TABLE_METRICS)
    runs = child_runs(uri, parent_run_id)
    # keep the latest run per trial key (a resumed trial leaves its interrupted attempt behind)
    latest: dict[str, Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        latest[run.data.tags.get("mimlab.trial_key", run.info.run_id)] = run
    groups: dict[int, dict[str, Any]] = {}
    finished = failed = 0
    for run in latest.values():
        idx = int(run.data.params.get("sweep.point", -1))
        group = groups.setdefault(idx, {"label": run.data.params.get("sweep.label", str(idx)), "values": {},
                                        "failed": 0})
        if run.info.status == "FINISHED":
            finished += 1
            for m in metrics:
                if m in run.data.metrics:
                    group["values"].setdefault(m, []).append(float(run.data.metrics[m]))
        elif run.info.status == "FAILED":
            failed += 1
            group["failed"] += 1
    rows = []
    for idx in sorted(groups):
        g = groups[idx]
        stats: dict[str, tuple[float | None, float | None, int]] = {}
        for m in metrics:
            vals = g["values"].get(m, [])
            if vals:
                stats[m] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))
            else:
                stats[m] = (None, None, 0)
        rows.append(TableRow(idx, g["label"], stats, g["failed"]))
    return SweepTable(metrics, rows, finished, failed)


def plot_table(exp: Experiment, table: SweepTable) -> Any:
    """A figure shaped like the thesis's: one panel per metric, sweep points along x, baselines as lines."""
    if not table.rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = exp.spec.plot
    fig, axes = plt.subplots(1, len(table.metrics), figsize=(5.5 * len(table.metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], table.metrics, strict=True):
        series = [r for r in table.rows if r.label not in spec.baselines and r.stats[metric][0] is not None]
        xs = list(range(len(series)))
        ax.errorbar(xs, [r.stats[metric][0] for r in series], yerr=[r.stats[metric][1] or 0 for r in series],
                    marker="o", capsize=3, label=exp.name)
        ax.set_xticks(xs, [r.label for r in series], rotation=45, ha="right", fontsize=8)
        for r, style in zip([r for r in table.rows if r.label in spec.baselines], ("--", ":", "-."), strict=False):
            if r.stats[metric][0] is not None:
                ax.axhline(r.stats[metric][0], linestyle=style, color="grey", label=r.label)
        ax.set_title(f"{metric} ({exp.profile_name})")
        ax.set_xlabel(spec.xlabel or (spec.x or "sweep point"))
        ax.set_ylabel("top-1 (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def find_parent(uri: str, sweep: str, run_id: str | None = None) -> Any:
    """The latest parent run of sweep ``sweep`` (or the given run id)."""
    client = _client(uri)
    if run_id:
        try:
            return client.get_run(run_id)
        except Exception:  # noqa: BLE001
            raise UserError(f"no MLflow run '{run_id}' in '{uri}'") from None
    found = client.get_experiment_by_name(mlflow_experiment_name(sweep))
    if found is None:
        sweeps = sorted(e.name.removeprefix("tune-") for e in client.search_experiments()
                        if e.name.startswith("tune-"))
        from mimlab.errors import unknown

        raise unknown("sweep", sweep, sweeps or ["(none yet — run `platform tune NAME` first)"])
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UserError(f"sweep '{sweep}' has no parent run in '{uri}'")
    return runs[0]


def compare(*, name: str, tracking_uri: str | None = None, run_id: str | None = None) -> tuple[Any, SweepTable]:
    """The results table of the latest (or given) sweep of ``name``, read back from the tracking store."""
    from mimlab.runtime import tracking
    from mimlab.runtime.ray_env import apply_default_env

    apply_default_env()
    uri = tracking.tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UserError(f"MLflow store '{uri}' does not exist yet — run `platform tune NAME` first")
    parent = find_parent(uri, name, run_id)
    metrics = None
    try:
        points = load_experiment(name, parent.data.tags.get("mimlab.profile"), validate_masking=False)
        metrics = points.spec.plot.metrics
    except UserError:
        pass
    return parent, results_table(uri, parent.info.run_id, metrics=metrics)
