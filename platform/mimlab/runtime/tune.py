"""Ray Tune sweeps over the thesis experiments, with one MLflow parent run per sweep and a child run per trial.

Design (ecosystem-notes §1c/§1d): every trial is a plain Tune *function* trainable (one GPU each when GPUs are
used) that pretrains with the one train function of :mod:`mimlab.runtime.train` over the Ray Data stream (in the
trial's process, checkpoints through ``tune.report`` into the sweep's storage), then evaluates k-NN and the linear
probe in-process. A multi-worker Train-in-Tune mode (``workers_per_trial > 1``) runs the same function on a
TorchTrainer from inside the trial (checkpoints in Train storage under the sweep's folder, epochs forwarded to Tune);
no early-stopping scheduler is ever used (ASHA + Train-in-Tune deadlocks, ray#54305).
Failed trials are recorded (Tune ERROR, MLflow FAILED) and the sweep goes on (``max_failures=0``); an interrupted sweep
resumes with ``Tuner.restore`` without re-running finished trials.

Order of work in :func:`run_sweep` — every user mistake fails before a trial starts: experiment/profile/sweep keys
(validated on load) → data URL → MLflow store → Ray address → resume: same experiment config → Ray → resources
(GPUs, CPUs, workers) → ``mlflow server`` (SQLite only) → parent run → Tune. Relative paths are made absolute first.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mimlab.config.experiment import Experiment, load_experiment
from mimlab.errors import UserError, unknown
from mimlab.runtime.sweep_results import (
    ROLE_TAG, TABLE_METRICS, SweepTable, client_for, close_parent, open_parent, results_table,
)
from mimlab.runtime.trial import TrialBody, TrialContext, point_at, run_trial, trial_key

SWEEP_FILE = "mimlab-sweep.json"


# -------------------------------------------------------------------------------------------- pre-flight checks
def resolve_data(url: str | None) -> tuple[str | None, str | None]:
    """``--data URL`` -> (train, val) split URLs; ``None`` = the embedded dataset.

    ``URL`` must hold ``train/`` and ``val/`` (or ``test/``) shard folders.

    Raises:
        UserError: the URL (or its splits) cannot be reached.
    """
    if url is None:
        return None, None
    from mimlab.runtime.train import local_path

    url = local_path(url)
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


def check_sweep_resources(cpus: float, gpus: float, workers: int) -> None:
    """Fail before any trial when the Ray cluster cannot hold one trial (Tune would wait for it forever).

    Raises:
        UserError: naming what one trial asks for and what the cluster has.
    """
    import ray

    from mimlab.runtime.train import check_resources

    if workers > 1:
        check_resources(workers, gpus > 0, gpus, what="--workers-per-trial")
        return
    have = ray.cluster_resources()
    total_gpus = float(have.get("GPU", 0.0))
    if gpus > total_gpus:
        raise UserError(f"asked for {gpus:g} GPU(s) per trial (--gpus-per-trial / the profile); the Ray cluster "
                        f"has {total_gpus:g} GPU(s) — use --gpus-per-trial 0 on a CPU cluster")
    largest = max((float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")), default=0.0)
    if cpus > largest:
        raise UserError(f"asked for {cpus:g} CPU(s) per trial (--cpus-per-trial / the profile); the largest node "
                        f"of the Ray cluster has {largest:g} CPU(s) (cluster total {float(have.get('CPU', 0)):g})")


def _trial_cpus(cpus: float, concurrent: int | None, trials: int, streams: bool) -> float:
    """The CPUs a 1-worker trial reserves. A real trial (``streams``) reads its batches from Ray Data tasks that
    need a CPU of their own: when the concurrent trials would hold every CPU, each reserves less, leaving one free
    (the trials still use all cores through torch threads)."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    n = min(concurrent or trials, trials)
    if not streams or n * cpus <= total - 1:
        return cpus
    return max(0.1, min(cpus, round((total - 1.0) / n, 2)))


def _fingerprint(exp: Experiment, seeds: int, data_train: str | None, data_val: str | None) -> dict[str, Any]:
    """What a sweep computes: every point's resolved config and label, the evaluation, the seeds, the data."""
    return {"points": {p.label: p.config for p in exp.points}, "evaluation": exp.evaluation.model_dump(),
            "seeds": seeds, "data": {"train": data_train, "val": data_val}}


def _check_same_sweep(previous: dict[str, Any], now: dict[str, Any], sweep_dir: str, exp: Experiment) -> None:
    """``--resume`` after the experiment YAML (or seeds, data) changed would mix two sweeps in one table.

    Raises:
        UserError: naming the differing keys and how to start afresh.
    """
    from mimlab.runtime.train import config_changes

    saved = previous.get("config")
    if saved is None:
        return
    changed = config_changes(saved, json.loads(json.dumps(now)))
    if changed:
        shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        raise UserError(f"cannot resume {sweep_dir}: the experiment '{exp.name}' (profile '{exp.profile_name}') "
                        f"changed since it started (differs in: {shown}); run it without --resume to start a new "
                        f"sweep, or restore the old YAML")


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
    seeds: int | None = None,
    max_concurrent: int | None = None,
    gpus_per_trial: float | None = None,
    cpus_per_trial: float | None = None,
    workers_per_trial: int = 1,
    points: list[str] | None = None,
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
        seeds: repeat each sweep point with seeds ``0..seeds-1`` (a grid axis, so seeds are distinct); default
            the profile's ``seeds`` (1 unless the profile says otherwise).
        max_concurrent: cap on trials running at once (default: the profile's, else Tune's).
        gpus_per_trial: GPUs per trial (default: the profile's).
        workers_per_trial: > 1 selects the Train-in-Tune mode (a TorchTrainer per trial, no scheduler).
        points: run only the sweep points with these labels (default all); their indices, seeds and configs are
            those of the whole sweep, so a point's values reproduce its row of the full table.
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
    # Tune writes its experiment state every 10 s by default: a driver killed in between loses the trials' last
    # checkpoints on resume. The state is small; write it every 2 s.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")   # the legacy reporter honours verbose=0; we print our own lines
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    if workers_per_trial < 1:
        raise UserError(f"--workers-per-trial must be >= 1, got {workers_per_trial}")
    exp = load_experiment(name, profile, root=experiments_root)
    seeds = exp.profile.seeds if seeds is None else seeds
    if points:
        labels = [p.label for p in exp.points]
        for label in points:
            if label not in labels:
                raise unknown(f"sweep point of '{exp.name}' (profile '{exp.profile_name}')", label, labels)
        exp.points = [p for p in exp.points if p.label in points]
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
        _check_same_sweep(previous, _fingerprint(exp, seeds, data_train, data_val), sweep_dir, exp)
    else:
        sweep_dir = f"{root.rstrip('/')}/{prefix}{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"

    server = MlflowServer(uri) if uri.startswith("sqlite:///") else None
    t0 = time.monotonic()
    if server is not None:
        server.start()   # starts in the background (~12 s on 2 cores) while Ray comes up
    try:
        ensure_ray(address)
        check_sweep_resources(cpus, gpus, workers_per_trial)
        echo(f"ray ready ({time.monotonic() - t0:.0f} s)")
        trial_uri = server.wait() if server is not None else uri
        if server is not None:
            echo(f"mlflow server for {uri} on {trial_uri} ({time.monotonic() - t0:.0f} s)")
        if exp.profile.caveat:
            echo(exp.profile.caveat)
        parent_id, mlflow_exp = open_parent(exp, trial_uri, sweep_dir, seeds, previous)
        _write_sweep_file(sweep_dir, {"experiment": exp.name, "profile": exp.profile_name, "seeds": seeds,
                                      "parent_run_id": parent_id, "mlflow_experiment": mlflow_exp,
                                      "tracking_uri": uri, "data": data,
                                      "config": _fingerprint(exp, seeds, data_train, data_val)})
        ctx = TrialContext(sweep=exp.name, profile=exp.profile_name, points=exp.points,
                           evaluation=exp.evaluation.model_dump(), tracking_uri=trial_uri,
                           mlflow_experiment=mlflow_exp, parent_run_id=parent_id, data_train=data_train,
                           data_val=data_val, gpus_per_trial=gpus, workers_per_trial=workers_per_trial,
                           storage_path=root, sweep_id=sweep_dir.rstrip("/").rsplit("/", 1)[-1], body=body)
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
        close_parent(exp, trial_uri, parent_id, table, interrupted, num_errors, time.monotonic() - started)
    finally:
        if server is not None:
            server.stop()
    return SweepResult(exp.name, exp.profile_name, parent_id, uri, sweep_dir, table, interrupted, num_errors)


def _fit(exp: Experiment, ctx: TrialContext, sweep_dir: str, *, seeds: int, cpus: float, gpus: float,
         concurrent: int | None, workers: int, resume: bool, callbacks: list[Any],
         echo: Callable[[str], None]) -> Any:
    from ray import tune

    if workers > 1:  # Train-in-Tune: the trial only drives a TorchTrainer that reserves the workers itself
        resources: dict[str, float] = {"CPU": 0.1}
    else:
        resources = {"CPU": _trial_cpus(cpus, concurrent, len(exp.points) * seeds, ctx.body is None),
                     **({"GPU": gpus} if gpus > 0 else {})}
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


def clock(seconds: float) -> str:
    """Elapsed time as ``MM:SS``, or ``H:MM:SS`` from one hour on (a sweep of ~1 h must not read 02:59)."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


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
            point = point_at(self.exp.points, int(trial.config["point"]))
            return f"{point.label} (seed {trial.config['seed']})"

        def _clock(self) -> str:
            return clock(time.monotonic() - self.start)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            # in-process trials say phase "pretrain"; Train-in-Tune epochs come through TuneReportCallback bare
            if result.get("phase", "pretrain" if "epoch" in result else None) == "pretrain":
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
    client = client_for(ctx.tracking_uri)
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
        label = point_at(ctx.points, point).label
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
