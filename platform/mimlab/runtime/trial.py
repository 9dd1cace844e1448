"""One Ray Tune trial of a sweep: pretrain one sweep point at one seed, evaluate it, log a nested MLflow child run.

:func:`run_trial` is the Tune function trainable; :func:`pretrain_and_evaluate` is the default trial body (pretrain
with :func:`mimlab.pretrain.loop.pretrain_local` or a Train-in-Tune TorchTrainer, then k-NN and the linear probe).
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
