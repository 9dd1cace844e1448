"""One Ray Tune trial of a sweep: pretrain one sweep point at one seed, evaluate it, log a nested MLflow child run.

:func:`run_trial` is the Tune function trainable; :func:`pretrain_and_evaluate` is the default trial body: pretrain
with the one train function of :mod:`mimlab.runtime.train` (in the trial's process, or on a Train-in-Tune
TorchTrainer of ``workers_per_trial`` workers), then k-NN and the linear probe. Either way every epoch's checkpoint
goes to the sweep's storage and a resumed sweep continues the trial from it, in the same MLflow child run.
The sweep driver is :mod:`mimlab.runtime.tune`; the results table is :mod:`mimlab.runtime.sweep_results`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimlab.config.experiment import SweepPoint, trial_config
from mimlab.runtime.sweep_results import ROLE_TAG

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
    sweep_id: str = ""
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
    run_id: str = ""


def point_at(points: list[SweepPoint], index: int) -> SweepPoint:
    """The sweep point with this index (a ``--point`` subset keeps the whole sweep's indices)."""
    return next(p for p in points if p.index == index)


def trial_key(point: int, seed: int) -> str:
    return f"p{point:03d}-s{seed}"


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """Flatten a (nested) metrics dict to finite floats: ``{"top1": {"20": 0.5}}`` -> ``{"top1.20": 0.5}``."""
    from mimlab.runtime.tracking import flatten

    return {name: float(value) for name, value in flatten(metrics).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))}


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune function trainable: one sweep point at one seed, logged as a nested MLflow child run."""
    import mlflow
    from ray import tune

    from mimlab.runtime import tracking

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    point = point_at(ctx.points, int(config["point"]))
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
    previous = _open_child(ctx, key)   # a resumed sweep continues the interrupted trial's child run
    with tracking.run(f"{point.label} · seed {seed}", uri=ctx.tracking_uri, experiment=ctx.mlflow_experiment,
                      parent_run_id=ctx.parent_run_id, params=params, tags=tags, run_id=previous) as active:

        def report(epoch: int, metrics: dict[str, Any]) -> None:
            flat = _numeric(metrics)
            if flat:
                mlflow.log_metrics(flat, step=int(epoch))
            tune.report({**flat, "epoch": int(epoch), "phase": "pretrain"})

        body = ctx.body or pretrain_and_evaluate
        try:
            final = _numeric(body(cfg, TrialRun(ctx, point, seed, out_dir, report, active.info.run_id)))
        except (SystemExit, KeyboardInterrupt):   # Tune stopping the trial: a resumed sweep continues this run
            raise
        except BaseException as err:   # the run ends FAILED (the context manager); say why
            mlflow.set_tag("mimlab.error", f"{type(err).__name__}: {err}"[:5000])
            raise
        # at the step after the last epoch: the online k-NN monitor logs ``knn_top1`` per epoch with its own (smaller)
        # bank, and MLflow's latest value of a key (what the runs table, Compare and ``runs compare`` read) is the
        # one at the highest step — so the trial's final evaluation must come last
        mlflow.log_metrics(final, step=int(cfg.optim.epochs))
        mlflow.log_dict({"label": point.label, "seed": seed, "overrides": point.overrides, "metrics": final},
                        "trial_result.json")
    # After the child run is closed: Tune may tear the actor down as soon as the function returns.
    tune.report({**final, "phase": "done"})


def _open_child(ctx: TrialContext, key: str) -> str | None:
    """The child run of trial ``key`` left unfinished by an interrupted sweep (its driver killed or stopped), if
    any. Tune re-runs only unfinished trials on ``--resume`` (never errored ones), so such a run is never a failure
    to keep apart."""
    from mimlab.runtime.sweep_results import client_for

    client = client_for(ctx.tracking_uri)
    parent = client.get_run(ctx.parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{ctx.parent_run_id}' and "
                                            f"tags.`mimlab.trial_key` = '{key}'")
    open_runs = sorted((r for r in runs if r.info.status != "FINISHED"), key=lambda r: r.info.start_time)
    return open_runs[-1].info.run_id if open_runs else None


# ----------------------------------------------------------------------------------------- the real trial body
def knn_figures(result: dict[str, Any], ks: list[int]) -> tuple[float, dict[str, float]]:
    """Top-1/top-5 per k from ``run_knn``'s ``metrics`` (``knn_top1_k{k}``); the headline is k = 20 (the DINO/iBOT
    convention) when swept, else the first k."""
    metrics = result["metrics"]
    per_k = {f"knn_{m}_k{k}": float(metrics[f"knn_{m}_k{k}"]) for k in ks for m in ("top1", "top5")}
    head = 20 if 20 in ks else ks[0]
    return per_k[f"knn_top1_k{head}"], per_k


def pretrain_and_evaluate(cfg: Any, run: TrialRun) -> dict[str, float]:
    """Pretrain (this process, or Train-in-Tune), then k-NN and the linear probe on the trial's checkpoint."""
    import mlflow

    key = trial_key(run.point.index, run.seed)
    if run.ctx.workers_per_trial > 1:
        from ray.tune.integration.ray_train import TuneReportCallback

        from mimlab.runtime.train import run_pretrain

        # unique per sweep (its id holds the experiment, profile and start time), point and seed: Train resumes by
        # name, so a resumed sweep continues this trial's run and no other sweep ever picks it up
        result = run_pretrain(cfg, data=run.ctx.data_train, name=f"{run.ctx.sweep_id}-{key}",
                              storage_path=f"{run.ctx.storage_path.rstrip('/')}/{run.ctx.sweep_id}/train",
                              workers=run.ctx.workers_per_trial, gpus_per_worker=run.ctx.gpus_per_trial or None,
                              tracking_uri=run.ctx.tracking_uri, experiment=run.ctx.mlflow_experiment,
                              mlflow_run_id=run.run_id, callbacks=[TuneReportCallback()])
    else:
        from mimlab.runtime.train import run_in_trial

        result = run_in_trial(cfg, data=run.ctx.data_train, local_dir=str(run.out_dir),
                              tracking_uri=run.ctx.tracking_uri, experiment=run.ctx.mlflow_experiment,
                              run_id=run.run_id, name=key)
    metrics: dict[str, float] = {f"pretrain.{k}": v for k, v in _numeric(result.metrics).items()}
    if result.checkpoint_uri:
        mlflow.set_tag("mimlab.checkpoint", result.checkpoint_uri)
    _log_checkpoint(result.checkpoint_dir)

    metrics.update(evaluate_checkpoint(result.checkpoint_dir, run, curve=True))
    if run.point.index == run.ctx.points[0].index:
        # the `untrained` row: the same evaluation of the network this seed starts from (the init depends on the
        # model config and seed only, so the first point of each seed measures it for the whole sweep)
        from mimlab.pretrain.build import build_parts
        from mimlab.pretrain.checkpoint import save_checkpoint

        untrained = save_checkpoint(run.out_dir / "untrained", build_parts(cfg), -1, {})
        init = evaluate_checkpoint(untrained, run, curve=False)
        metrics.update({f"{k}_init": v for k, v in init.items() if k in INIT_METRICS})
    return metrics


INIT_METRICS = ("knn_top1", "linear_top1", "cls_pointing", "cls_energy")
"""The numbers the ``untrained`` row repeats for the untrained network."""


def evaluate_checkpoint(checkpoint_dir: str, run: TrialRun, *, curve: bool) -> dict[str, float]:
    """k-NN and the linear probe of one checkpoint with the sweep's evaluation settings, and (``localisation``)
    the final [cls] attention's pointing game and energy in the object masks; ``eval.num_val`` is the query count
    the results table's binomial intervals need."""
    import mlflow

    from mimlab.evaluation.api import run_knn, run_linear

    ev = run.ctx.evaluation   # EvaluationSpec.model_dump(): every key is there, each read by its one name
    ks = list(ev["knn_ks"])
    knn = run_knn(checkpoint_dir, train=run.ctx.data_train, val=run.ctx.data_val, ks=tuple(ks),
                  temperature=float(ev["knn_temperature"]), limit=ev["train_limit"], log_mlflow=False,
                  val_limit=ev["val_limit"], workers=0, batch_size=ev["batch_size"])
    metrics: dict[str, float] = {"eval.num_val": float(knn["n_val"])}
    metrics["knn_top1"], per_k = knn_figures(knn, ks)
    metrics.update(per_k)
    if ev["linear"]:
        lin = run_linear(checkpoint_dir, train=run.ctx.data_train, val=run.ctx.data_val,
                         epochs=int(ev["linear_epochs"]), cached_features=bool(ev["cached_features"]),
                         base_lr=float(ev["linear_lr"]),
                         limit=ev["train_limit"], log_mlflow=False, workers=0, batch_size=ev["batch_size"],
                         val_limit=ev["val_limit"], seed=run.seed)
        metrics["linear_top1"] = float(lin["best_top1"])
        if curve:
            for epoch, value in enumerate(lin["curve"]):
                mlflow.log_metric("linear_curve_top1", float(value), step=epoch)
    if ev["localisation"]:
        metrics.update(localisation(checkpoint_dir, run, int(knn["n_val"])))
    return metrics


def localisation(checkpoint_dir: str, run: TrialRun, limit: int) -> dict[str, float]:
    """Pointing game and energy in the object mask of the teacher's last-layer [cls] attention (method ``raw``)
    on the first ``limit`` val images, the ones the k-NN queried."""
    from mimlab.runtime.saliency import compute_saliency

    out = Path(run.out_dir) / f"localisation-{Path(checkpoint_dir).name}"
    result = compute_saliency(model=str(checkpoint_dir), data=run.ctx.data_val, limit=limit,
                              methods=["raw"], metrics=["pointing", "energy"], workers=0,
                              batch_size=int(run.ctx.evaluation["batch_size"]), out=out)
    return {"cls_pointing": float(result.table["raw"]["pointing"]),
            "cls_energy": float(result.table["raw"]["energy"])}


def _log_checkpoint(checkpoint_dir: str) -> None:
    """The teacher backbone + its description, so every child run carries a loadable model."""
    import mlflow

    for name in ("backbone.json", "teacher_backbone.safetensors"):
        path = Path(checkpoint_dir) / name
        if path.is_file():
            mlflow.log_artifact(str(path), artifact_path="checkpoint")
