"""Entry points for ``platform eval knn|linear`` and for Tune trials: ``run_knn`` and ``run_linear``.

Both load the model (``platform explain`` conventions: timm name, pretrain checkpoint — teacher by default — or
``package.module:callable``), extract features (``workers=0``: in-process torch loop; ``workers>=1``: Ray Data
actor pool, joining a running Ray such as a Tune trial's), run the pure core, write JSON (+ plot) to ``out``, and log
to MLflow unless ``log_mlflow=False``. They return plain dicts (JSON-ready).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mimlab.errors import UserError
from mimlab.evaluation.feeds import (
    FeatureModel,
    ModelRef,
    features_local,
    features_ray,
    load_split,
)
from mimlab.evaluation.knn import DEFAULT_KS, knn_classify
from mimlab.evaluation.linear import ProbeResult, fit_linear, train_linear_probe

CACHED_LABEL = "cached-features (extracted once, no augmentation)"


def _features(ref: ModelRef, model: FeatureModel, src: str | None, split: str, *, limit: int | None,
              batch_size: int, workers: int, n_last_blocks: int) -> tuple[dict[str, torch.Tensor], int]:
    """``(features, skipped)``: ``knn``/``linear``/``label`` of the split's decodable images, and how many images
    were skipped as undecodable."""
    size = model.loaded.img_size
    if workers >= 1:
        return features_ray(ref, src, split, size=size, n_last_blocks=n_last_blocks, batch_size=batch_size,
                            workers=workers, limit=limit)
    data = load_split(src, split, limit)
    feats = features_local(model, data.images, size, batch_size)
    feats["label"] = torch.from_numpy(data.labels)
    return feats, len(data.skipped)


def _skips(train: int, val: int) -> dict[str, Any]:
    """The result keys of images skipped as undecodable (a dataset's bad image is counted, never an error)."""
    return {"skipped_images": train + val, "skipped_by_split": {"train": train, "val": val}}


def skipped_line(result: dict[str, Any]) -> str | None:
    """The one stderr line of a :func:`run_knn` / :func:`run_linear` result that skipped images, else ``None``."""
    from mimlab.data.sources import skipped_note

    if not result.get("skipped_images"):
        return None
    by = result["skipped_by_split"]
    return skipped_note(result["skipped_images"], f"train {by['train']}, val {by['val']}")


def _check_workers(workers: int, batch_size: int) -> None:
    if workers < 0:
        raise UserError(f"--workers must be >= 0 (0 = in-process), got {workers}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")


def _val(limit: int | None, val_limit: int | None) -> int | None:
    """The val split's image limit: ``val_limit`` when given, else the shared ``limit``."""
    return limit if val_limit is None else val_limit


def _write_json(out: str | Path | None, name: str, result: dict) -> str | None:
    if out is None:
        return None
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(result, indent=2, sort_keys=False))
    return str(path)


def _describe(ref: ModelRef, loaded) -> dict[str, Any]:
    return {"model": ref.model, "weights": ref.weights, "backbone": "student" if ref.student else "teacher",
            "model_kind": loaded.kind, "img_size": loaded.img_size}


def run_knn(
    model: str,
    *,
    weights: str | None = None,
    student: bool = False,
    train: str | None = None,
    val: str | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    limit: int | None = None,
    val_limit: int | None = None,
    out: str | Path | None = None,
    log_mlflow: bool = True,
    batch_size: int = 128,
    workers: int = 1,
    chunk_size: int | None = None,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Weighted k-NN of frozen [cls] features: train split = bank, val split = queries.

    Args:
        model: timm name, pretrain checkpoint (dir or .safetensors) or ``package.module:callable``.
        weights: local weights for a timm name / callable.
        student: evaluate the student backbone of a pretrain checkpoint (default: teacher).
        train, val: shard folders/URLs, ImageFolder trees or a root with ``train/``+``val/``; ``None`` ⇒ embedded.
        ks: neighbour counts, all evaluated in one pass.
        temperature: vote temperature T.
        limit: use only the first ``limit`` images of each split.
        val_limit: use only the first ``val_limit`` val images instead (``None`` = ``limit``).
        out: folder for ``knn.json``.
        log_mlflow: log params/metrics/JSON to MLflow (off inside sweeps that log themselves).
        batch_size: images per forward.
        workers: 0 = in-process torch loop; >= 1 = Ray Data actor pool of that many models.
        chunk_size: queries per similarity chunk (``None`` = automatic, bounded memory).
        tracking_uri, parent_run_id: MLflow store and optional parent run.

    Returns:
        ``{"metrics": {"knn_top1_k20": ...}, "results": {"20": {"top1", "top5"}}, ...}``.
    """
    _check_workers(workers, batch_size)
    ks = sorted({int(k) for k in ks})
    ref = ModelRef(str(model), str(weights) if weights else None, student)
    fmodel = FeatureModel(ref, n_last_blocks=1)
    t0 = time.perf_counter()
    tr, tr_skipped = _features(ref, fmodel, train, "train", limit=limit, batch_size=batch_size, workers=workers,
                               n_last_blocks=1)
    va, va_skipped = _features(ref, fmodel, val, "val", limit=_val(limit, val_limit), batch_size=batch_size,
                               workers=workers, n_last_blocks=1)
    t_feat = time.perf_counter() - t0
    res = knn_classify(tr["knn"], tr["label"], va["knn"], va["label"], ks=ks, temperature=temperature,
                       chunk_size=chunk_size)
    result = {
        **_describe(ref, fmodel.loaded),
        "protocol": "weighted k-NN, cosine similarity of L2-normalised final [cls], vote exp(sim/T)",
        "temperature": temperature, "ks": ks, "n_train": int(tr["label"].shape[0]),
        "n_val": int(va["label"].shape[0]), "feature_dim": int(tr["knn"].shape[1]), **_skips(tr_skipped, va_skipped),
        "results": {str(k): v for k, v in res.items()},
        "metrics": {f"knn_{m}_k{k}": v[m] for k, v in res.items() for m in ("top1", "top5")},
        "seconds_features": round(t_feat, 3), "workers": workers,
    }
    result["json"] = _write_json(out, "knn.json", result)
    if log_mlflow:
        _log_knn(result, tracking_uri, parent_run_id)
    return result


def _log_knn(result: dict, uri: str | None, parent_run_id: str | None) -> None:
    import mlflow

    from mimlab.runtime import tracking

    params = {k: result[k] for k in ("model", "weights", "backbone", "temperature", "n_train", "n_val",
                                     "feature_dim", "workers")}
    params["ks"] = ",".join(map(str, result["ks"]))
    with tracking.run("eval-knn", uri=uri, parent_run_id=parent_run_id, params=params,
                      tags={"mimlab.kind": "eval-knn"}):
        mlflow.log_metrics({**result["metrics"], "skipped_images": result["skipped_images"]})
        mlflow.log_dict(result, "knn.json")


def knn_table(result: dict) -> str:
    """Plain-text table of a :func:`run_knn` result."""
    lines = [f"k-NN  model={result['model']} ({result['backbone']})  bank={result['n_train']}  "
             f"queries={result['n_val']}  dim={result['feature_dim']}  T={result['temperature']}",
             f"{'k':>6} {'top-1 %':>9} {'top-5 %':>9}"]
    for k, v in result["results"].items():
        lines.append(f"{k:>6} {v['top1']:>9.2f} {v['top5']:>9.2f}")
    return "\n".join(lines)


def run_linear(
    model: str,
    *,
    weights: str | None = None,
    student: bool = False,
    train: str | None = None,
    val: str | None = None,
    epochs: int = 100,
    reach: float | None = None,
    cached_features: bool = False,
    n_last_blocks: int = 4,
    base_lr: float = 0.003,
    batch_size: int = 256,
    limit: int | None = None,
    val_limit: int | None = None,
    out: str | Path | None = None,
    log_mlflow: bool = True,
    workers: int = 1,
    seed: int = 0,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Linear probe on the frozen backbone's last-``n_last_blocks`` [cls] concatenation.

    Args:
        model, weights, student, train, val, limit, val_limit, out, log_mlflow, workers, tracking_uri,
            parent_run_id: as in
            :func:`run_knn` (``out`` receives ``linear.json`` and ``linear_curve.png``).
        epochs: cosine schedule length; val top-1 after every epoch.
        reach: report the first epoch whose val top-1 is >= this (%).
        cached_features: extract train features once with the eval transform (no augmentation) — fast, labelled
            as such in every output; otherwise every epoch re-augments (RRC + flip) and re-extracts.
        n_last_blocks: [cls] of how many trailing blocks to concatenate (ViTs; CNNs use pooled features).
        base_lr: lr per 256 images (lr = base_lr × batch / 256).
        batch_size: SGD batch (also the feature-extraction batch).
        seed: classifier init and augmentation seed.

    Returns:
        JSON-ready dict with ``curve``, ``best_epoch``, ``best_top1``, ``reach_epoch``, ``mode`` and ``metrics``.
    """
    _check_workers(workers, batch_size)
    ref = ModelRef(str(model), str(weights) if weights else None, student)
    fmodel = FeatureModel(ref, n_last_blocks=n_last_blocks)
    size = fmodel.loaded.img_size
    t0 = time.perf_counter()
    va, va_skipped = _features(ref, fmodel, val, "val", limit=_val(limit, val_limit), batch_size=batch_size,
                               workers=workers, n_last_blocks=fmodel.n_last_blocks)
    if cached_features:
        tr, tr_skipped = _features(ref, fmodel, train, "train", limit=limit, batch_size=batch_size, workers=workers,
                                   n_last_blocks=fmodel.n_last_blocks)
        probe = train_linear_probe(tr["linear"], tr["label"], va["linear"], va["label"], epochs=epochs,
                                   batch_size=batch_size, base_lr=base_lr, reach=reach, seed=seed)
        n_train = int(tr["label"].shape[0])
    else:
        probe, n_train, tr_skipped = _augmented_probe(ref, fmodel, train, va, epochs=epochs, reach=reach, base_lr=base_lr,
                                          batch_size=batch_size, limit=limit, workers=workers, seed=seed,
                                          size=size)
    seconds = time.perf_counter() - t0
    result = {
        **_describe(ref, fmodel.loaded),
        "mode": CACHED_LABEL if cached_features else "augmented (RandomResizedCrop + flip each epoch)",
        "cached_features": cached_features, "n_last_blocks": fmodel.n_last_blocks,
        "feature_dim": int(va["linear"].shape[1]), "n_train": n_train, "n_val": int(va["label"].shape[0]),
        **_skips(tr_skipped, va_skipped),
        "epochs": epochs, "batch_size": probe.batch_size, "lr": probe.lr, "base_lr": base_lr,
        "curve": probe.curve, "curve_top5": probe.curve_top5, "train_loss": probe.train_loss,
        "best_epoch": probe.best_epoch, "best_top1": probe.best_top1,
        "best_top5": probe.curve_top5[probe.best_epoch - 1], "final_top1": probe.curve[-1],
        "reach": reach, "reach_epoch": probe.reach_epoch,
        "selection": "best val top-1 over epochs (selected on val, as in DINO/iBOT)",
        "metrics": {"linear_best_top1": probe.best_top1, "linear_final_top1": probe.curve[-1],
                    "linear_best_epoch": float(probe.best_epoch)},
        "seconds": round(seconds, 3), "workers": workers,
    }
    if reach is not None:
        result["metrics"]["linear_reach_epoch"] = float(probe.reach_epoch) if probe.reach_epoch else -1.0
    result["json"] = _write_json(out, "linear.json", result)
    if out is not None:
        _curve_figure(result).savefig(Path(out) / "linear_curve.png", dpi=100)
    if log_mlflow:
        _log_linear(result, tracking_uri, parent_run_id)
    return result


def _augmented_probe(ref: ModelRef, fmodel: FeatureModel, train: str | None, va: dict, *, epochs: int,
                     reach: float | None, base_lr: float, batch_size: int, limit: int | None, workers: int,
                     seed: int, size: int) -> tuple[ProbeResult, int, int]:
    """Every epoch: RandomResizedCrop + flip of the train split through the frozen backbone, then SGD steps.

    Returns:
        ``(probe, train images per epoch, train images skipped as undecodable)``.
    """
    n_blocks = fmodel.n_last_blocks
    num_classes = int(va["label"].max()) + 1 if va["label"].numel() else 1
    seen = {"n": 0, "skipped": 0}
    if workers >= 1:
        batch = batch_size

        def source(epoch: int):
            feats, skipped = features_ray(ref, train, "train", size=size, n_last_blocks=n_blocks,
                                          batch_size=batch_size, workers=workers, limit=limit, augment=True,
                                          seed=seed * 100_003 + epoch)
            seen["skipped"] = skipped  # the same images every epoch
            perm = torch.randperm(feats["label"].shape[0], generator=torch.Generator().manual_seed(epoch))
            for start in range(0, perm.shape[0], batch_size):
                idx = perm[start:start + batch_size]
                yield feats["linear"][idx], feats["label"][idx]
    else:
        data = load_split(train, "train", limit)
        seen["skipped"] = len(data.skipped)
        labels = torch.from_numpy(data.labels)
        num_classes = max(num_classes, int(labels.max()) + 1)
        batch = min(batch_size, len(data.images))

        def source(epoch: int):
            rng = np.random.default_rng([seed, epoch])
            perm = rng.permutation(len(data.images))
            for start in range(0, len(perm), batch):
                idx = perm[start:start + batch]
                x = features_local(fmodel, [data.images[i] for i in idx], size, batch, rng=rng)
                yield x["linear"], labels[torch.from_numpy(idx)]

    def batches(epoch: int):
        count = 0
        for feats, y in source(epoch):
            if int(y.max()) >= num_classes:
                raise UserError(f"train split has class {int(y.max())} but the val split only has classes "
                                f"0..{num_classes - 1}")
            count += len(y)
            yield feats, y
        if count == 0:
            raise UserError("linear probe: the train split is empty")
        seen["n"] = count

    _, result = fit_linear(batches, va["linear"], va["label"], dim=va["linear"].shape[1],
                           num_classes=num_classes, epochs=epochs, batch_size=batch, base_lr=base_lr, reach=reach,
                           cached_features=False, seed=seed)
    return result, seen["n"], seen["skipped"]


def _curve_figure(result: dict):
    from matplotlib.figure import Figure  # not pyplot: the caller's backend (a notebook's inline one) stays as is

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    epochs = list(range(1, len(result["curve"]) + 1))
    ax.plot(epochs, result["curve"], label="val top-1")
    ax.plot(epochs, result["curve_top5"], label="val top-5", alpha=0.6)
    ax.axvline(result["best_epoch"], color="grey", linestyle=":", label=f"best {result['best_top1']:.2f}%")
    if result.get("reach") is not None:
        ax.axhline(result["reach"], color="red", linestyle="--", linewidth=0.8, label=f"reach {result['reach']}%")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"linear probe — {result['mode']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _log_linear(result: dict, uri: str | None, parent_run_id: str | None) -> None:
    import mlflow

    from mimlab.runtime import tracking

    params = {k: result[k] for k in ("model", "weights", "backbone", "mode", "cached_features", "n_last_blocks",
                                     "feature_dim", "n_train", "n_val", "epochs", "batch_size", "lr", "reach",
                                     "workers")}
    with tracking.run("eval-linear", uri=uri, parent_run_id=parent_run_id, params=params,
                      tags={"mimlab.kind": "eval-linear",
                            "mimlab.linear_mode": "cached-features" if result["cached_features"] else "augmented"}):
        for epoch, (top1, top5) in enumerate(zip(result["curve"], result["curve_top5"], strict=True), start=1):
            mlflow.log_metrics({"linear_top1": top1, "linear_top5": top5}, step=epoch)
        mlflow.log_metrics({**result["metrics"], "skipped_images": result["skipped_images"]})
        mlflow.log_dict(result, "linear.json")
        fig = _curve_figure(result)
        mlflow.log_figure(fig, "linear_curve.png")


def linear_table(result: dict) -> str:
    """Plain-text summary of a :func:`run_linear` result (the mode is always printed)."""
    curve = result["curve"]
    lines = [f"linear probe  model={result['model']} ({result['backbone']})  mode: {result['mode']}",
             f"train={result['n_train']}  val={result['n_val']}  dim={result['feature_dim']}  "
             f"epochs={result['epochs']}  batch={result['batch_size']}  lr={result['lr']:.5g}",
             f"{'epoch':>6} {'top-1 %':>9}"]
    shown = sorted({1, len(curve), result["best_epoch"], *range(10, len(curve) + 1, 10)})
    lines += [f"{e:>6} {curve[e - 1]:>9.2f}" for e in shown]
    lines.append(f"best: {result['best_top1']:.2f}% at epoch {result['best_epoch']} (selected on val)")
    if result["reach"] is not None:
        lines.append(f"reach {result['reach']}%: " + (f"epoch {result['reach_epoch']}" if result["reach_epoch"]
                                                      else f"not reached in {result['epochs']} epochs"))
    return "\n".join(lines)
