"""``platform evaluate sanity``: the model-parameter randomisation test on Ray actors, outputs, one MLflow run.

The work is split as in :mod:`mimlab.runtime.saliency` (fixed batches, contiguous groups per actor, results
back in image order), and each actor runs :func:`mimlab.explain.sanity.sanity_batch` on its own in-memory copy
of the model: the seeded re-initialisation makes the randomised weights the same on every actor, and the
weights file is only ever read.

Outputs in ``out`` (written to a temporary folder and moved into place, ``sanity.json`` last):

* ``sanity.json`` — ``{"steps": [block names, output first], "methods": {method: {"target", "flagged",
  "cascading"|"independent": [{"block", "spearman": {"mean", "ci95", "n"}, "ssim": {...}}, ...]}}, ...}``;
* ``sanity_per_image.csv`` — ``path, method, mode, step, block, spearman, ssim``;
* ``sanity.png`` — mean Spearman and SSIM of the cascading randomisation per method, with 95 % intervals
  (Adebayo et al. 2018, Fig. 2).

A method is **flagged** when, with every block randomised (the last cascading step), the mean Spearman
correlation with its original maps is still ≥ ``FLAG_SPEARMAN`` (0.5): its maps barely depend on the weights.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mimlab import stats
from mimlab.errors import UserError
from mimlab.explain.sanity import FLAG_SPEARMAN, MODES
from mimlab.runtime.saliency import (
    CI_SEED,
    _atomic_outputs,
    _fan_out,
    _validate,
    batch_slices,
    check_channel_order,
    prepare_batch,
    usable_records,
)

DEFAULT_METHODS = ("gradcam",)
MEASURES = ("spearman", "ssim")


class SanityWorker:
    """Model and explainers built once per actor; :meth:`run` randomises and compares on one batch."""

    def __init__(self, *, model: str, weights: str | None, img_size: int | None, methods: list[str],
                 target: str | int, channel_order: str, seed: int, modes: list[str]) -> None:
        import torch

        from mimlab.explain import build_explainer
        from mimlab.models.loading import load_model

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.loaded = load_model(model, weights, img_size=img_size)
        self.loaded.module.to(self.device)
        self.size = int(self.loaded.img_size)
        self.explainers = {m: build_explainer(m, self.loaded) for m in methods}
        self.target, self.channel_order, self.seed, self.modes = target, channel_order, seed, modes

    def run(self, records: list) -> dict[str, Any]:
        """``{"values": {mode: {method: {measure: float64 [steps, B]}}}, "steps": [names]}``."""
        import torch

        from mimlab.explain.base import resolve_targets
        from mimlab.explain.sanity import sanity_batch

        images, labels, _ = prepare_batch(records, self.size, self.loaded.mean, self.loaded.std,
                                          self.channel_order)
        images = images.to(self.device)
        with torch.no_grad():
            predicted = self.loaded.module(images).argmax(1)
        targets = predicted  # unused when no method takes a class
        if any(getattr(e, "takes_target", True) for e in self.explainers.values()):
            gt = labels.to(self.device) if labels is not None else None
            targets = resolve_targets(self.target, predicted, gt)
        out = sanity_batch(self.loaded.module, self.explainers, images, targets, seed=self.seed, modes=self.modes)
        return {"values": out.values, "steps": out.steps}

    def run_many(self, batches: list[list]) -> list[dict[str, Any]]:
        return [self.run(b) for b in batches]


@dataclass
class SanityResult:
    """``summary``: the ``sanity.json`` document; ``flagged``: methods whose maps survive randomisation."""

    summary: dict[str, Any]
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)
    run_id: str | None = None
    seconds: float = 0.0


def _cell(values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    lo, hi = stats.bootstrap_ci(values, CI_SEED)
    mean = float(finite.mean()) if finite.size else math.nan
    return {"mean": None if math.isnan(mean) else mean,
            "ci95": [None if math.isnan(lo) else lo, None if math.isnan(hi) else hi], "n": int(finite.size)}


def plot_sanity(summary: dict[str, Any], path: Path, title: str) -> None:
    """Cascading curves (Adebayo Fig. 2): x = blocks randomised so far (output first), y = similarity."""
    from matplotlib.figure import Figure  # not pyplot: the caller's backend (a notebook's inline one) stays as is

    steps = ["original", *summary["steps"]]
    fig = Figure(figsize=(max(6.0, 0.45 * len(steps) * 2), 3.8))
    axes = fig.subplots(1, 2, squeeze=False)
    for ax, measure in zip(axes[0], MEASURES):
        for method, row in summary["methods"].items():
            if "cascading" not in row:
                continue
            cells = [c[measure] for c in row["cascading"]]
            mean = np.array([1.0] + [np.nan if c["mean"] is None else c["mean"] for c in cells])
            lo = np.array([1.0] + [np.nan if c["ci95"][0] is None else c["ci95"][0] for c in cells])
            hi = np.array([1.0] + [np.nan if c["ci95"][1] is None else c["ci95"][1] for c in cells])
            label = method + (" (flagged)" if row["flagged"] else "")
            (line,) = ax.plot(range(len(steps)), mean, marker="o", ms=3, label=label)
            ax.fill_between(range(len(steps)), lo, hi, color=line.get_color(), alpha=0.2)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_xticks(range(len(steps)), steps, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(-1.05, 1.05)  # both measures lie in [-1, 1]
        ax.set_title(f"{measure} with the original maps (cascading)", fontsize=9)
        ax.set_xlabel("randomised down to block", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title + " · bands: 95 % bootstrap interval over images", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def format_sanity(summary: dict[str, Any]) -> str:
    """Text table: per method and mode, mean Spearman [95 % CI] / SSIM at each step."""
    lines = []
    width = max(len(s) for s in summary["steps"])
    for method, row in summary["methods"].items():
        flag = "  <- FLAGGED: maps barely change when the weights do" if row["flagged"] else ""
        lines.append(f"{method} (target: {row['target']}){flag}")
        for mode in (m for m in MODES if m in row):
            lines.append(f"  {mode}: {'block':<{width}}  {'spearman [95 % CI]':>28}  {'ssim [95 % CI]':>28}")
            for cell in row[mode]:
                parts = []
                for measure in MEASURES:
                    c = cell[measure]
                    parts.append("-" if c["mean"] is None else f"{c['mean']:.3f} [{c['ci95'][0]:.3f}, "
                                                                f"{c['ci95'][1]:.3f}]")
                lines.append(f"  {'':<{len(mode)}}  {cell['block']:<{width}}  {parts[0]:>28}  {parts[1]:>28}")
    lines.append(f"(flagged: mean Spearman >= {FLAG_SPEARMAN} with every block randomised; [..] 95 % "
                 f"percentile-bootstrap interval over {summary['num_images']} images)")
    return "\n".join(lines)


def compute_sanity(
    *,
    model: str,
    weights: str | None = None,
    data: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    methods: list[str] | tuple[str, ...] = DEFAULT_METHODS,
    img_size: int | None = None,
    workers: int = 1,
    batch_size: int = 16,
    out: str | Path = "sanity-check",
    target: str | int = "gt",
    channel_order: str = "rgb",
    seed: int = 0,
    modes: list[str] | tuple[str, ...] = MODES,
) -> SanityResult:
    """Run the randomisation test and write the outputs; no MLflow (see :func:`evaluate_sanity`).

    Raises:
        UserError: bad model/method/target/data, before any output is written.
    """
    import time

    import torch

    from mimlab.explain import build_explainer
    from mimlab.explain.base import NO_TARGET, check_target_index, parse_target
    from mimlab.explain.sanity import randomisation_blocks
    from mimlab.models.loading import load_model

    methods = list(dict.fromkeys(methods))
    if not methods:
        raise UserError("no --method given")
    if workers < 1 or batch_size < 1:
        raise UserError(f"--workers and --batch-size must be >= 1, got {workers} and {batch_size}")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise UserError(f"--mode must be one of {', '.join(MODES)}, got '{','.join(bad) or 'none'}'")
    target = parse_target(target)
    check_channel_order(channel_order)
    loaded = load_model(model, weights, img_size=img_size)
    explainers = [build_explainer(m, loaded) for m in methods]
    size = int(loaded.img_size)
    if isinstance(target, int):
        with torch.no_grad():
            check_target_index(target, int(loaded.module(torch.zeros(1, 3, size, size)).shape[-1]))
    targets_of = {m: (str(target) if e.takes_target else NO_TARGET) for m, e in zip(methods, explainers)}
    num_blocks = len(randomisation_blocks(loaded.module))
    records, skipped = usable_records(data, split, limit)
    _validate(records, [], data, target, explainers)
    del loaded, explainers

    batches = [records[lo:hi] for lo, hi in batch_slices(len(records), batch_size)]
    kwargs = dict(model=model, weights=weights, img_size=size, methods=methods, target=target,
                  channel_order=channel_order, seed=seed, modes=list(modes))
    start = time.perf_counter()
    results = _fan_out(batches, workers, kwargs, SanityWorker)
    seconds = time.perf_counter() - start
    steps = results[0]["steps"]
    assert len(steps) == num_blocks

    per: dict[str, dict[str, dict[str, np.ndarray]]] = {
        mode: {m: {k: np.concatenate([r["values"][mode][m][k] for r in results], axis=1) for k in MEASURES}
               for m in methods}
        for mode in modes
    }  # [steps, N]
    summary: dict[str, Any] = {
        "model": model, "weights": weights, "num_images": len(records), "skipped_images": len(skipped),
        "skipped_paths": skipped, "seed": seed, "target": str(target),
        "channel_order": channel_order, "steps": steps, "flag_spearman": FLAG_SPEARMAN,
        "interval": {"level": stats.LEVEL, "method": stats.BOOTSTRAP, "resamples": stats.RESAMPLES,
                     "seed": CI_SEED},
        "randomisation": "cascading: blocks re-initialised from the output down, cumulatively; independent: "
                         "one block at a time; block k drawn from seed + k (module reset_parameters, "
                         "N(0, 0.02^2) for loose parameters)",
        "methods": {},
    }
    flagged = []
    for m in methods:
        row: dict[str, Any] = {"target": targets_of[m]}
        for mode in modes:
            row[mode] = [{"block": steps[k], **{meas: _cell(per[mode][m][meas][k]) for meas in MEASURES}}
                         for k in range(len(steps))]
        reference = per["cascading" if "cascading" in modes else modes[0]][m]["spearman"][-1]
        final = reference[np.isfinite(reference)]
        row["flagged"] = bool(final.size and final.mean() >= FLAG_SPEARMAN)
        if row["flagged"]:
            flagged.append(m)
        summary["methods"][m] = row

    def write(tmp: Path) -> None:
        with open(tmp / "sanity_per_image.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "method", "mode", "step", "block", *MEASURES])
            for mode in modes:
                for m in methods:
                    for k, block in enumerate(steps):
                        for i, rec in enumerate(records):
                            w.writerow([rec.path, m, mode, k + 1, block,
                                        *(f"{per[mode][m][meas][k, i]:.6g}" for meas in MEASURES)])
        plot_sanity(summary, tmp / "sanity.png", f"{model} · {len(records)} images")
        (tmp / "sanity.json").write_text(json.dumps(summary, indent=2) + "\n")

    files = _atomic_outputs(Path(out), write, last="sanity.json")
    return SanityResult(summary=summary, out_dir=Path(out), files=files, flagged=flagged, seconds=seconds)


def evaluate_sanity(
    *,
    tracking_uri: str | None = None,
    experiment: str = "mimlab",
    run_name: str | None = None,
    **options: Any,
) -> SanityResult:
    """:func:`compute_sanity` (``options`` are its keyword arguments), then one MLflow run: params, the
    similarity curves as stepped metrics (``method/mode/spearman`` at step k = k blocks randomised), flags, files."""
    import mlflow

    from mimlab.runtime import tracking

    tracking.tracking_uri(tracking_uri)
    options.setdefault("methods", DEFAULT_METHODS)
    result = compute_sanity(**options)
    s = result.summary
    params = {key: options.get(key) for key in ("model", "weights", "split", "limit", "img_size", "workers",
                                                 "batch_size")}
    params.update(data=options.get("data") or "embedded", methods=",".join(options["methods"]),
                  seed=s["seed"], target=s["target"], channel_order=s["channel_order"],
                  modes=",".join(m for m in MODES if m in next(iter(s["methods"].values()))),
                  num_images=s["num_images"], steps=",".join(s["steps"]))
    with tracking.run(run_name or f"sanity-{Path(str(options['model'])).name}", uri=tracking_uri,
                      experiment=experiment, params=params, tags={"mimlab.kind": "saliency-sanity"}) as active:
        from mimlab.runtime.saliency import mlflow_key

        for m, row in s["methods"].items():
            mlflow.log_metric(mlflow_key(f"{m}/flagged"), float(row["flagged"]))
            for mode in (x for x in MODES if x in row):
                for k, cell in enumerate(row[mode], start=1):
                    for meas in MEASURES:
                        c = cell[meas]
                        if c["mean"] is not None:
                            mlflow.log_metric(mlflow_key(f"{m}/{mode}/{meas}"), c["mean"], step=k)
                            mlflow.log_metric(mlflow_key(f"{m}/{mode}/{meas}/ci95_low"), c["ci95"][0], step=k)
                            mlflow.log_metric(mlflow_key(f"{m}/{mode}/{meas}/ci95_high"), c["ci95"][1], step=k)
        for path in result.files:
            mlflow.log_artifact(str(path))
        result.run_id = active.info.run_id
    return result
