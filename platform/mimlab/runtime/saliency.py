"""Saliency evaluation on Ray: explain and score images on K actors, write the outputs, log one MLflow run.

The image list is cut into fixed batches of ``batch_size`` *before* it is shared out, each batch is computed
whole by one actor and the results are put back in image order — so every number is the same for any
``workers`` (the actors run with the same thread count). Each actor loads the model and builds the explainers
once (one GPU per actor when the cluster has GPUs).

Outputs in ``out`` (written to a temporary folder first and renamed into place, ``results.json`` last, so a
failed run never leaves a results file that looks complete):

* ``results.json`` — ``{"target", "channel_order", "interval", "methods": {method: {"target", "metrics":
  {metric: {"mean", "ci95": [low, high], "n"}}}}}``: the mean over images (NaN values, e.g. empty masks, left
  out) with its 95 % percentile-bootstrap interval over images (:mod:`mimlab.stats`, seeded);
* ``per_image.csv`` — ``path, label, predicted, method, target, <one column per metric>`` (``target``: the
  class the method explained, empty for methods that take none);
* ``maps.npz`` with ``save_maps`` — key = method spec text, ``float32 [num_images, H, W]``;
* ``metrics.png`` — one panel per metric, one bar per method with its 95 % interval.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mimlab import stats
from mimlab.errors import UserError
from mimlab.stats import bootstrap_ci

DEFAULT_METHODS = ("gradcam",)
CI_SEED = 0


# -- pure helpers --------------------------------------------------------------------------------------------
CHANNEL_ORDERS = ("rgb", "bgr_legacy")


def check_channel_order(channel_order: str) -> str:
    if channel_order not in CHANNEL_ORDERS:
        raise UserError(f"--channel-order must be one of {', '.join(CHANNEL_ORDERS)}, got '{channel_order}'")
    return channel_order


def prepare_batch(records: list, size: int, mean, std, channel_order: str = "rgb") -> tuple[Any, Any, Any]:
    """Decode, resize and normalise a list of records.

    Images are resized directly to ``size × size`` (bilinear; the thesis' Part 1 preprocessing, methods-spec
    §1) and masks with nearest neighbour, so both keep the same geometry. ``bgr_legacy`` swaps the channels
    before the (RGB) normalisation: thesis bug B1, for replicating its numbers.

    Returns:
        ``(images [B,3,S,S] float normalised, labels LongTensor[B] | None, masks bool [B,S,S] | None)``.
    """
    import torch
    from PIL import Image

    from mimlab.data.sources import CorruptImage, decode_mask, decode_rgb
    from mimlab.data.transforms import normalise

    pixels, masks = [], []
    for rec in records:
        try:
            img = decode_rgb(rec.image)
            mask = decode_mask(rec.mask) if rec.mask is not None else None
        except CorruptImage as err:
            raise UserError(f"image '{rec.path}': {err}") from None
        if img.shape[:2] != (size, size):
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
        pixels.append(img)
        if mask is not None:
            if mask.shape != (size, size):
                mask = (
                    np.asarray(
                        Image.fromarray(mask.astype(np.uint8) * 255).resize(
                            (size, size), Image.Resampling.NEAREST
                        )
                    )
                    > 0
                )
            masks.append(mask)
    stacked = np.stack(pixels)  # [B,S,S,3] uint8
    if channel_order == "bgr_legacy":
        stacked = np.ascontiguousarray(stacked[..., ::-1])
    images = normalise(stacked, mean, std)  # [B,S,S,3] uint8 -> [B,3,S,S]
    labels = None
    if all(r.label is not None for r in records):
        labels = torch.tensor([int(r.label) for r in records], dtype=torch.long)
    mask_t = torch.from_numpy(np.stack(masks)) if len(masks) == len(records) else None
    return images, labels, mask_t


def usable_records(data: str | None, split: str | None, limit: int | None) -> tuple[list, list[str]]:
    """The dataset's records whose image (and mask) decode, and the paths of the skipped ones: a bad image inside
    a dataset is skipped and counted (a file the user names, as in ``platform explain``, is an error instead).

    Raises:
        UserError: no image selected, or none that decodes.
    """
    from mimlab.data.sources import drop_undecodable, load_records

    records = load_records(data, split=split, limit=limit)
    if not records:
        raise UserError(f"data '{data or 'the embedded dataset'}': no images selected (limit={limit})")
    kept, skipped = drop_undecodable(records)
    if not kept:
        raise UserError(f"data '{data or 'the embedded dataset'}': none of its {len(records)} images decodes")
    return kept, skipped


def batch_slices(num_images: int, batch_size: int) -> list[tuple[int, int]]:
    """Fixed ``[lo, hi)`` batches of the image list: the unit of work, independent of the number of actors."""
    return [(lo, min(lo + batch_size, num_images)) for lo in range(0, num_images, batch_size)]


def share_out(batches: list, workers: int) -> list[list]:
    """Contiguous groups of batches, one per actor (fewer groups when there are fewer batches)."""
    k = max(1, min(workers, len(batches)))
    return [batches[i * len(batches) // k : (i + 1) * len(batches) // k] for i in range(k)]


def nanmean(values: list[float]) -> float:
    """Mean over the finite values (NaN when there are none)."""
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def mlflow_key(text: str) -> str:
    """A metric key MLflow accepts (alphanumerics, ``_ - . / : space``); other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", text)


# -- the per-actor work --------------------------------------------------------------------------------------
class SaliencyEvaluator:
    """Model, explainers and metrics, built once; :meth:`run` scores one batch of records."""

    def __init__(
        self,
        *,
        model: str,
        weights: str | None,
        img_size: int | None,
        methods: list[str],
        metrics: list[str],
        save_maps: bool,
        target: str | int = "gt",
        channel_order: str = "rgb",
    ) -> None:
        import torch

        from mimlab.explain import build_explainer
        from mimlab.metrics import build_metric
        from mimlab.models.loading import load_model

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.loaded = load_model(model, weights, img_size=img_size)
        self.loaded.module.to(self.device)
        self.size = int(self.loaded.img_size)
        self.mean = torch.tensor(self.loaded.mean, dtype=torch.float32)
        self.std = torch.tensor(self.loaded.std, dtype=torch.float32)
        self.explainers = {m: build_explainer(m, self.loaded) for m in methods}
        self.metrics = [build_metric(m) for m in metrics]
        self.save_maps = save_maps
        self.target = target
        self.channel_order = channel_order

    def run(self, records: list) -> dict[str, Any]:
        """Explain and score one batch.

        Returns:
            ``{"predicted": [B], "targets": [B] (class explained by the target-taking methods), "values":
            {method: {metric: [B]}}, "maps": {method: float32 [B,H,W]}}``.
        """
        import torch

        from mimlab.explain.base import resolve_targets
        from mimlab.metrics import check_inputs

        model = self.loaded.module
        images, labels, masks = prepare_batch(records, self.size, self.loaded.mean, self.loaded.std,
                                              self.channel_order)
        images = images.to(self.device)
        labels = labels.to(self.device) if labels is not None else None
        masks = masks.to(self.device) if masks is not None else None
        with torch.no_grad():
            predicted = model(images).argmax(1)  # [B,K] -> [B]
        takers = any(getattr(e, "takes_target", True) for e in self.explainers.values())
        targets = resolve_targets(self.target, predicted, labels) if takers else predicted
        out: dict[str, Any] = {"predicted": predicted.cpu().tolist(), "targets": targets.cpu().tolist(),
                               "values": {}, "maps": {}}
        for text, explainer in self.explainers.items():
            takes = getattr(explainer, "takes_target", True)
            maps = explainer(images, targets if takes else None).to(self.device)  # [B,H,W]
            try:
                check_inputs(images, maps, labels, masks)
            except UserError as err:
                raise UserError(f"method '{text}': {err}") from None
            per_method = {}
            cache: dict[Any, Any] = {"predicted": predicted}  # shared by this method's metrics (AD and AI)
            for metric in self.metrics:
                values = metric(model, images, maps, labels, self.mean, self.std, masks=masks, cache=cache)
                per_method[metric.name] = values.detach().float().cpu().tolist()
            out["values"][text] = per_method
            if self.save_maps:
                out["maps"][text] = maps.detach().float().cpu().numpy().astype(np.float32)
        return out

    def run_many(self, batches: list[list]) -> list[dict[str, Any]]:
        return [self.run(b) for b in batches]


# -- the driver ----------------------------------------------------------------------------------------------
@dataclass
class SaliencyResult:
    """What one evaluation produced: means per method/metric, per-image rows, where the files are."""

    table: dict[str, dict[str, float]]
    rows: list[dict[str, Any]]
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    run_id: str | None = None
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _validate(records: list, metric_objs: list, data: str | None, target: str | int = "predicted",
              explainers: list | None = None) -> None:
    where = data or "the embedded dataset"
    if target == "gt" and any(e.takes_target for e in explainers or []) and any(r.label is None for r in records):
        first = next(r.path for r in records if r.label is None)
        names = ", ".join(e.text for e in explainers or [] if e.takes_target)
        raise UserError(
            f"data '{where}': image '{first}' has no label, but --target gt explains the ground-truth class "
            f"with {names} (use --target predicted or a class index)"
        )
    if any(m.requires_label() for m in metric_objs) and any(r.label is None for r in records):
        first = next(r.path for r in records if r.label is None)
        names = ", ".join(m.name for m in metric_objs if m.requires_label())
        raise UserError(
            f"data '{where}': image '{first}' has no label, but metric(s) {names} score the "
            "ground-truth class"
        )
    if any(m.needs_mask for m in metric_objs) and any(r.mask is None for r in records):
        names = ", ".join(m.name for m in metric_objs if m.needs_mask)
        raise UserError(f"data '{where}' has no foreground masks, which metric(s) {names} need")


def _fan_out(batches: list[list], workers: int, actor_kwargs: dict, worker: type | None = None) -> list[Any]:
    """Run the batches on ``workers`` Ray actors of class ``worker`` (default :class:`SaliencyEvaluator`, any class
    with ``run_many(batches)``) and return the results in batch order."""
    if workers == 0:  # in this process, no Ray
        return (worker or SaliencyEvaluator)(**actor_kwargs).run_many(batches)
    import ray

    from mimlab.runtime.ray_env import ensure_ray

    ensure_ray()
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    actor_cls = ray.remote(num_cpus=1, num_gpus=gpus)(worker or SaliencyEvaluator)
    groups = share_out(batches, workers)
    actors = [actor_cls.remote(**actor_kwargs) for _ in groups]
    try:
        refs = [a.run_many.remote(g) for a, g in zip(actors, groups)]
        try:
            parts = ray.get(refs)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, UserError):
                raise UserError(str(cause)) from None
            raise
    finally:
        for a in actors:
            ray.kill(a)
    return [r for part in parts for r in part]


def _atomic_outputs(out_dir: Path, write: Any, last: str = "results.json") -> list[Path]:
    """Call ``write(tmp_dir)``, then move every file into ``out_dir`` (``last`` last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=out_dir))
    try:
        write(tmp)
        names = sorted(p.name for p in tmp.iterdir())
        names.sort(key=lambda n: n == last)
        final = []
        for name in names:
            os.replace(tmp / name, out_dir / name)
            final.append(out_dir / name)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def results_summary(
    table: dict[str, dict[str, float]],
    intervals: dict[str, dict[str, tuple[float, float]]],
    values: dict[str, dict[str, list[float]]],
    targets: dict[str, str],
    *,
    target: str | int,
    channel_order: str,
) -> dict[str, Any]:
    """The ``results.json`` document (plain JSON types; NaN written as ``null``)."""

    def num(v: float) -> float | None:
        return None if math.isnan(v) else v

    return {
        "target": str(target),
        "channel_order": channel_order,
        "interval": {"level": stats.LEVEL, "method": stats.BOOTSTRAP, "resamples": stats.RESAMPLES,
                     "seed": CI_SEED},
        "methods": {
            m: {
                "target": targets[m],
                "metrics": {
                    k: {"mean": num(table[m][k]), "ci95": [num(intervals[m][k][0]), num(intervals[m][k][1])],
                        "n": int(sum(not math.isnan(v) for v in values[m][k]))}
                    for k in table[m]
                },
            }
            for m in table
        },
    }


def plot_table(
    table: dict[str, dict[str, float]],
    higher: dict[str, bool],
    path: Path,
    title: str,
    intervals: dict[str, dict[str, tuple[float, float]]] | None = None,
) -> None:
    """One bar panel per metric comparing the methods; error bars = the 95 % intervals when given."""
    from matplotlib.figure import Figure  # not pyplot: the caller's backend (a notebook's inline one) stays as is

    methods = list(table)
    metrics = list(next(iter(table.values()))) if table else []
    fig = Figure(figsize=(3.2 * max(1, len(metrics)), 3.4))
    axes = fig.subplots(1, max(1, len(metrics)), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        vals = np.array([table[m][metric] for m in methods], dtype=float)
        yerr = None
        if intervals:
            lo = np.array([intervals[m][metric][0] for m in methods], dtype=float)
            hi = np.array([intervals[m][metric][1] for m in methods], dtype=float)
            yerr = np.nan_to_num(np.stack([vals - lo, hi - vals]).clip(min=0))
        ax.bar(range(len(methods)), vals, yerr=yerr, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{metric} {'↑' if higher.get(metric, True) else '↓'}", fontsize=9)
    if intervals:
        title += " · bars: 95 % bootstrap interval over images"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def format_table(
    table: dict[str, dict[str, float]],
    higher: dict[str, bool],
    intervals: dict[str, dict[str, tuple[float, float]]] | None = None,
    targets: dict[str, str] | None = None,
) -> str:
    """Plain-text table: rows methods, columns metrics (``mean [95 % low, high]`` with intervals), best starred."""
    methods = list(table)
    metrics = list(next(iter(table.values()))) if table else []
    best = {}
    for metric in metrics:
        vals = [(table[m][metric], m) for m in methods if not math.isnan(table[m][metric])]
        if vals:
            best[metric] = (max if higher.get(metric, True) else min)(vals)[1]
    def cell(m: str, k: str) -> str:
        text = f"{table[m][k]:.4f}"
        if intervals:
            lo, hi = intervals[m][k]
            text += f" [{lo:.4f}, {hi:.4f}]"
        return text + ("*" if best.get(k) == m else " ")

    heads = [f"{m} {'↑' if higher.get(m, True) else '↓'}" for m in metrics]
    width = max([len("method")] + [len(m) for m in methods])
    cells = {m: [cell(m, k) for k in metrics] for m in methods}
    cols = [max([9, len(h)] + [len(cells[m][i]) for m in methods]) for i, h in enumerate(heads)]
    lines = ["  ".join([f"{'method':<{width}}"] + [f"{h:>{c}}" for h, c in zip(heads, cols)])]
    for m in methods:
        lines.append("  ".join([f"{m:<{width}}"] + [f"{v:>{c}}" for v, c in zip(cells[m], cols)]))
    if intervals:
        lines.append("(* best per column; [..] 95 % percentile-bootstrap interval over images)")
    if targets:
        lines.append("target: " + "; ".join(f"{m}: {t}" for m, t in targets.items()))
    return "\n".join(lines)


def compute_saliency(
    *,
    model: str,
    weights: str | None = None,
    data: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    methods: list[str] | tuple[str, ...] = DEFAULT_METHODS,
    metrics: list[str] | tuple[str, ...] | None = None,
    img_size: int | None = None,
    workers: int = 1,
    batch_size: int = 16,
    save_maps: bool = False,
    out: str | Path = "saliency-eval",
    target: str | int = "gt",
    channel_order: str = "rgb",
) -> SaliencyResult:
    """Explain and score every image, write the output files; no MLflow (see :func:`evaluate_saliency`).

    ``target``: the class the target-taking methods explain — ``"gt"`` (default, the thesis protocol),
    ``"predicted"`` or a class index; the gradient-free attention methods take none (recorded as such).
    ``channel_order``: ``rgb`` or ``bgr_legacy`` (thesis bug B1).

    Raises:
        UserError: unknown method/metric or bad keys, labels or masks missing for the metrics asked, maps
            of the wrong shape or with NaN, bad data — before any output file is written.
    """
    import torch

    from mimlab.explain import build_explainer
    from mimlab.explain.base import NO_TARGET, check_target_index, parse_target
    from mimlab.metrics import DEFAULT_METRICS, build_metric
    from mimlab.models.loading import load_model

    metrics = list(metrics or DEFAULT_METRICS)
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise UserError("no --method given")
    if workers < 0 or batch_size < 1:
        raise UserError(f"--workers must be >= 0 (0 = in-process) and --batch-size >= 1, got {workers} and "
                        f"{batch_size}")
    target = parse_target(target)
    check_channel_order(channel_order)
    metric_objs = [build_metric(m) for m in metrics]
    names = [m.name for m in metric_objs]
    if len(set(names)) != len(names):
        raise UserError(f"--metrics lists a metric twice: {', '.join(names)}")
    loaded = load_model(model, weights, img_size=img_size)  # validates model + methods before any Ray work
    explainers = [build_explainer(text, loaded) for text in methods]
    size = int(loaded.img_size)
    if isinstance(target, int):
        with torch.no_grad():
            check_target_index(target, int(loaded.module(torch.zeros(1, 3, size, size)).shape[-1]))
    targets_of = {m: (str(target) if e.takes_target else NO_TARGET) for m, e in zip(methods, explainers)}
    del loaded
    records, skipped = usable_records(data, split, limit)
    _validate(records, metric_objs, data, target, explainers)

    slices = batch_slices(len(records), batch_size)
    batches = [records[lo:hi] for lo, hi in slices]
    actor_kwargs = dict(
        model=model, weights=weights, img_size=size, methods=methods, metrics=metrics, save_maps=save_maps,
        target=target, channel_order=channel_order,
    )
    results = _fan_out(batches, workers, actor_kwargs)

    predicted = [p for r in results for p in r["predicted"]]
    explained = [t for r in results for t in r["targets"]]
    values = {m: {k: [v for r in results for v in r["values"][m][k]] for k in names} for m in methods}
    table = {m: {k: nanmean(values[m][k]) for k in names} for m in methods}
    intervals = {m: {k: bootstrap_ci(values[m][k], CI_SEED) for k in names} for m in methods}
    higher = {m.name: m.higher_is_better for m in metric_objs}
    summary = results_summary(table, intervals, values, targets_of, target=target, channel_order=channel_order)
    summary.update(num_images=len(records), skipped_images=len(skipped), skipped_paths=skipped)
    rows = []
    for m in methods:
        for i, rec in enumerate(records):
            row = {
                "path": rec.path,
                "label": "" if rec.label is None else rec.label,
                "predicted": predicted[i],
                "method": m,
                "target": explained[i] if targets_of[m] != NO_TARGET else "",
            }
            row.update({k: values[m][k][i] for k in names})
            rows.append(row)

    def write(tmp: Path) -> None:
        with open(tmp / "per_image.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "label", "predicted", "method", "target", *names])
            writer.writeheader()
            writer.writerows(rows)
        if save_maps:
            arrays = {m: np.concatenate([r["maps"][m] for r in results]).astype(np.float32) for m in methods}
            np.savez(tmp / "maps.npz", **arrays)
        plot_table(table, higher, tmp / "metrics.png", f"{model} · {len(records)} images", intervals)
        (tmp / "results.json").write_text(json.dumps(summary, indent=2) + "\n")

    files = _atomic_outputs(Path(out), write)
    return SaliencyResult(table=table, rows=rows, out_dir=Path(out), files=files, higher_is_better=higher,
                          intervals=intervals, values=values, targets=targets_of, summary=summary)


def log_result(result: SaliencyResult, *, prefix_methods: bool = True) -> None:
    """Log ``method/metric`` means (and ``…/ci95_low``, ``…/ci95_high``) and the output files into the active run."""
    import mlflow

    metrics = {}
    for method, row in result.table.items():
        for metric, value in row.items():
            if not math.isnan(value):
                key = f"{method}/{metric}" if prefix_methods else metric
                metrics[mlflow_key(key)] = value
                lo, hi = result.intervals.get(method, {}).get(metric, (math.nan, math.nan))
                if not (math.isnan(lo) or math.isnan(hi)):
                    metrics[mlflow_key(f"{key}/ci95_low")] = lo
                    metrics[mlflow_key(f"{key}/ci95_high")] = hi
    mlflow.log_metrics(metrics)
    for path in result.files:
        mlflow.log_artifact(str(path))


def evaluate_saliency(
    *,
    tracking_uri: str | None = None,
    experiment: str = "mimlab",
    run_name: str | None = None,
    **options: Any,
) -> SaliencyResult:
    """:func:`compute_saliency` (``options`` are its keyword arguments), then one MLflow run: params,
    ``method/metric`` means, the files."""
    from mimlab.metrics import DEFAULT_METRICS
    from mimlab.runtime import tracking

    tracking.tracking_uri(tracking_uri)  # fail early on an unwritable store
    options["metrics"] = list(options.get("metrics") or DEFAULT_METRICS)
    options.setdefault("methods", DEFAULT_METHODS)
    result = compute_saliency(**options)
    model = options["model"]
    params = {key: options.get(key) for key in ("model", "weights", "split", "limit", "img_size", "workers",
                                                 "batch_size")}
    params.update(data=options.get("data") or "embedded", methods=",".join(options["methods"]),
                  metrics=",".join(options["metrics"]),
                  num_images=len(result.rows) // max(1, len(options["methods"])),
                  skipped_images=result.summary["skipped_images"],
                  target=result.summary["target"], channel_order=result.summary["channel_order"],
                  method_targets="; ".join(f"{m}: {t}" for m, t in result.targets.items()))
    with tracking.run(
        run_name or f"saliency-{Path(str(model)).name}",
        uri=tracking_uri,
        experiment=experiment,
        params=params,
        tags={"mimlab.kind": "saliency-eval"},
    ) as active:
        log_result(result)
        result.run_id = active.info.run_id
    return result


# -- studies -------------------------------------------------------------------------------------------------
@dataclass
class StudyResult:
    """``results``: ``{model label: {method label: {metric: mean}}}``; ``text``: the printed table."""

    results: dict[str, dict[str, dict[str, float]]]
    text: str
    out_dir: Path
    run_id: str | None = None
    child_run_ids: list[str] = field(default_factory=list)
    intervals: dict[str, dict[str, dict[str, tuple[float, float]]]] = field(default_factory=dict)
    significance: dict[str, Any] = field(default_factory=dict)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "model"


def run_study(
    cfg: Any,
    *,
    workers: int = 1,
    out: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = "mimlab",
) -> StudyResult:
    """Score every (model, method) pair of a :class:`~mimlab.metrics.study.StudyConfig`.

    One MLflow parent run (params: the study, tag ``mimlab.kind=saliency-study``) holding a child run per pair
    (params model/method, metrics = the pair's means). Each model is evaluated once for all its methods (its
    actors load it once); its files go to ``out/<model label>/``. The combined table (means, 95 % intervals and
    which methods are not significantly different from the best of their column, by a paired test over the same
    images) is printed and logged (``study.txt``, ``study.json``).
    """
    import mlflow

    from mimlab import stats
    from mimlab.metrics.study import format_study, significance
    from mimlab.runtime import tracking

    tracking.tracking_uri(tracking_uri)
    out_dir = Path(out) if out is not None else Path(f"study-{_safe_name(cfg.name)}")
    labels = [m.label for m in cfg.models]
    if len(set(labels)) != len(labels):
        raise UserError(f"study '{cfg.name}': model labels must be unique, got {', '.join(labels)}")
    method_rows: list[str] = []
    for _, meth in cfg.pairs():
        if meth.name not in method_rows:
            method_rows.append(meth.name)
    results: dict[str, dict[str, dict[str, float]]] = {}
    intervals: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    per_image: dict[str, dict[str, dict[str, list[float]]]] = {}
    higher: dict[str, bool] = {}
    child_ids: list[str] = []
    params = {
        "study": cfg.name,
        "data": cfg.data or "embedded",
        "split": cfg.split,
        "limit": cfg.limit,
        "img_size": cfg.img_size,
        "metrics": ",".join(cfg.metrics),
        "target": str(cfg.target),
        "channel_order": cfg.channel_order,
        "workers": workers,
        "models": ",".join(labels),
        "methods": ",".join(method_rows),
        **{f"param.{k}": v for k, v in cfg.params.items()},
    }
    with tracking.run(
        f"study-{cfg.name}",
        uri=tracking_uri,
        experiment=experiment,
        params=params,
        tags={"mimlab.kind": "saliency-study"},
    ) as parent:
        for model in cfg.models:
            methods = model.methods or cfg.methods
            res = compute_saliency(
                model=model.model,
                weights=model.weights,
                data=cfg.data,
                split=cfg.split,
                limit=cfg.limit,
                methods=[m.spec for m in methods],
                metrics=cfg.metrics,
                img_size=cfg.img_size,
                workers=workers,
                batch_size=cfg.batch_size,
                out=out_dir / _safe_name(model.label),
                target=cfg.target,
                channel_order=cfg.channel_order,
            )
            higher.update(res.higher_is_better)
            results[model.label] = {m.name: res.table[m.spec] for m in methods}
            intervals[model.label] = {m.name: res.intervals[m.spec] for m in methods}
            per_image[model.label] = {m.name: res.values[m.spec] for m in methods}
            for meth in methods:
                with mlflow.start_run(
                    run_name=f"{model.label} · {meth.name}",
                    nested=True,
                    tags={"mimlab.kind": "saliency-pair"},
                ) as child:
                    tracking.log_params(
                        {
                            "model_label": model.label,
                            "model": model.model,
                            "weights": model.weights,
                            "method": meth.spec,
                            "method_label": meth.name,
                            "target": res.targets[meth.spec],
                            "channel_order": cfg.channel_order,
                        }
                    )
                    logged = {}
                    for k, v in res.table[meth.spec].items():
                        lo, hi = res.intervals[meth.spec][k]
                        for key, val in ((k, v), (f"{k}/ci95_low", lo), (f"{k}/ci95_high", hi)):
                            if not math.isnan(val):
                                logged[mlflow_key(key)] = val
                    mlflow.log_metrics(logged)
                    child_ids.append(child.info.run_id)
            for path in res.files:
                mlflow.log_artifact(str(path), artifact_path=_safe_name(model.label))
        sig = significance(per_image, method_rows, higher)
        text = format_study(results, method_rows, higher, intervals=intervals, significance=sig)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "study.txt").write_text(text + "\n")
        tmp = out_dir / ".study.json.partial"
        doc = {
            "results": results,
            "ci95": intervals,
            "interval": {"level": stats.LEVEL, "method": stats.BOOTSTRAP, "resamples": stats.RESAMPLES,
                         "seed": CI_SEED},
            "significance": sig,
            "target": str(cfg.target),
            "channel_order": cfg.channel_order,
        }
        tmp.write_text(json.dumps(doc, indent=2, default=_json_safe) + "\n")
        os.replace(tmp, out_dir / "study.json")
        mlflow.log_artifact(str(out_dir / "study.txt"))
        mlflow.log_artifact(str(out_dir / "study.json"))
        run_id = parent.info.run_id
    return StudyResult(results=results, text=text, out_dir=out_dir, run_id=run_id, child_run_ids=child_ids,
                       intervals=intervals, significance=sig)


def _json_safe(obj: Any) -> Any:
    return list(obj) if isinstance(obj, tuple) else str(obj)
