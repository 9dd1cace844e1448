"""The MLflow side of a sweep: the parent run, and the results table read back from its child runs — at the end of a
sweep and later by ``platform runs compare``: mean ± std over seeds with a 95 % interval per cell, an ``untrained``
first row, which rows are separable from the block baseline, and a paired comparison with block matched on seed."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimlab.config.experiment import Experiment, load_experiment
from mimlab.errors import UserError
from mimlab.runtime.tracking import EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING, mark_training

ROLE_TAG = "mimlab.role"
TABLE_METRICS = ("knn_top1", "linear_top1")


# --------------------------------------------------------------------------------------------------- MLflow side
def mlflow_experiment_name(sweep: str) -> str:
    return f"tune-{sweep}"


def client_for(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def open_parent(exp: Experiment, uri: str, sweep_dir: str, seeds: int,
                 previous: dict[str, Any] | None) -> tuple[str, str]:
    """Create (or on resume reopen) the sweep's parent run; returns (run id, MLflow experiment name)."""
    client = client_for(uri)
    name = mlflow_experiment_name(exp.name)
    found = client.get_experiment_by_name(name)
    if found is None:
        exp_id = client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND_TRAINING})
    else:
        exp_id = found.experiment_id
        mark_training(client, found)
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


def close_parent(exp: Experiment, uri: str, parent_id: str, table: SweepTable, interrupted: bool,
                  num_errors: int, seconds: float) -> None:
    """Log the results table (markdown, JSON, per-point means, figure) to the parent run and end it."""
    client = client_for(uri)
    client.log_text(parent_id, table.to_markdown(), "results.md")
    client.log_dict(parent_id, table.to_json(), "results.json")
    client.log_metric(parent_id, "trials_finished", table.finished)
    client.log_metric(parent_id, "trials_failed", table.failed)
    client.log_metric(parent_id, "sweep_seconds", seconds)
    for row in table.rows:
        for metric, (mean, _std, _n) in row.stats.items():
            if mean is not None:
                client.log_metric(parent_id, f"{metric}.{row.index:02d}", mean)
    if table.untrained is not None:
        for metric, (mean, _std, _n) in table.untrained.stats.items():
            if mean is not None:
                client.log_metric(parent_id, f"{metric}.untrained", mean)
    fig = plot_table(exp, table)
    if fig is not None:
        client.log_figure(parent_id, fig, "results.png")
    status = "KILLED" if interrupted else ("FAILED" if table.finished == 0 else "FINISHED")
    client.set_terminated(parent_id, status=status)


# ------------------------------------------------------------------------------------------------ results table
NUM_VAL_KEYS = ("eval.num_val", "knn_num_queries", "knn_n_val", "n_val")
"""Child metric or param holding the number of validation images a trial was evaluated on (first one found)."""
INIT_SUFFIX = "_init"
"""``knn_top1_init`` on a child = the same evaluation of the untrained model (the ``untrained`` row)."""
UNTRAINED_TAG = "sweep.untrained"
"""A child run tagged ``sweep.untrained=true`` is the untrained model evaluated like the trials."""
LOCALISATION_METRICS = ("cls_pointing", "cls_energy", "pointing", "energy")
"""Localisation of the final [cls] attention; added as columns when any child logs them."""
BLOCK_STRATEGY = "block"
LEVEL = 0.95


def z_value(level: float = LEVEL) -> float:
    """Two-sided normal quantile (1.96 for 95 %)."""
    return statistics.NormalDist().inv_cdf(0.5 + level / 2)


def binomial_interval(value: float, n: int, scale: float = 100.0, level: float = LEVEL) -> tuple[float, float]:
    """Wald interval of a proportion measured on ``n`` images: ``value ± z·scale·√(q(1−q)/n)``, q = value/scale.

    Args:
        value: the accuracy, in percent when ``scale`` is 100 (a fraction when 1).
        n: number of images it was measured on.
    """
    q = min(max(value / scale, 0.0), 1.0)
    half = z_value(level) * scale * math.sqrt(q * (1 - q) / n)
    return value - half, value + half


def t_interval(values: list[float], level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean over ``len(values) >= 2`` seeds: ``mean ± t·sd/√n`` (sample sd)."""
    from scipy import stats

    n = len(values)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    mean = statistics.fmean(values)
    return mean - half, mean + half


def _scale(metric: str) -> float:
    return 100.0 if "top1" in metric or "top5" in metric else 1.0


def _is_proportion(metric: str) -> bool:
    """Metrics that are a share of images (binomial over the val set): accuracies, the pointing game."""
    return "top1" in metric or "top5" in metric or "pointing" in metric


@dataclass
class Paired:
    """Row minus block, matched on seed."""

    diff: float
    low: float | None
    high: float | None
    seeds: int

    @property
    def holds(self) -> str:
        """``higher`` / ``lower`` when the interval excludes 0, else ``no`` (``?`` without an interval)."""
        if self.low is None or self.high is None:
            return "?"
        return "higher" if self.low > 0 else ("lower" if self.high < 0 else "no")


@dataclass
class TableRow:
    index: int
    label: str
    stats: dict[str, tuple[float | None, float | None, int]]   # metric -> (mean, std, n)
    failed: int
    intervals: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    by_seed: dict[str, dict[int, float]] = field(default_factory=dict)
    strategy: str | None = None
    separable: dict[str, bool | None] = field(default_factory=dict)
    """metric -> False when the interval overlaps the block baseline's (None: no comparison)."""
    paired: dict[str, Paired | None] = field(default_factory=dict)


def _row_from(index: int, label: str, values: dict[str, dict[int, float]], failed: int, num_val: int | None,
              metrics: list[str], strategy: str | None = None,
              ses: dict[str, dict[int, float]] | None = None) -> TableRow:
    """Mean, sample std, n and the 95 % interval per metric from ``{metric: {seed: value}}``."""
    stats: dict[str, tuple[float | None, float | None, int]] = {}
    intervals: dict[str, tuple[float, float] | None] = {}
    for m in metrics:
        vals = list(values.get(m, {}).values())
        if not vals:
            stats[m], intervals[m] = (None, None, 0), None
            continue
        mean = statistics.fmean(vals)
        stats[m] = (mean, statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))
        if len(vals) > 1:
            intervals[m] = t_interval(vals)
        elif _is_proportion(m) and num_val:
            intervals[m] = binomial_interval(vals[0], num_val, _scale(m))
        elif ses and ses.get(m):
            se = next(iter(ses[m].values()))
            intervals[m] = (vals[0] - z_value() * se, vals[0] + z_value() * se)
        else:
            intervals[m] = None
    return TableRow(index, label, stats, failed, intervals, {m: dict(values.get(m, {})) for m in metrics}, strategy)


def _paired(row: TableRow, block: TableRow, metric: str, num_val: int | None) -> Paired | None:
    a, b = row.by_seed.get(metric, {}), block.by_seed.get(metric, {})
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) > 1:
        lo, hi = t_interval(diffs)
        return Paired(mean, lo, hi, len(diffs))
    if _is_proportion(metric) and num_val:
        # one seed: two binomials on the same val images treated as independent (conservative)
        sc = _scale(metric)
        var = sum((v / sc) * (1 - v / sc) / num_val for v in (a[seeds[0]], b[seeds[0]]))
        half = z_value() * sc * math.sqrt(var)
        return Paired(mean, mean - half, mean + half, 1)
    return Paired(mean, None, None, 1)


def _compare_to_block(rows: list[TableRow], block: TableRow | None, metrics: list[str], num_val: int | None) -> None:
    if block is None:
        return
    for row in rows:
        if row is block:
            continue
        for m in metrics:
            mine, theirs = row.intervals.get(m), block.intervals.get(m)
            row.separable[m] = None if mine is None or theirs is None else not (
                mine[0] <= theirs[1] and theirs[0] <= mine[1])
            row.paired[m] = _paired(row, block, m, num_val)


@dataclass
class SweepTable:
    """Per sweep point: mean ± std over seeds and a 95 % interval, from the child runs of a parent run.

    ``untrained`` is the untrained model evaluated like the trials (None when the children carry no such numbers);
    ``block`` the row the others are compared with (the ``block`` masking strategy, when swept).
    """

    metrics: list[str]
    rows: list[TableRow]
    finished: int
    failed: int
    untrained: TableRow | None = None
    block_label: str | None = None
    num_val: int | None = None

    def all_rows(self) -> list[TableRow]:
        return ([self.untrained] if self.untrained is not None else []) + self.rows

    @staticmethod
    def _cell(mean: float | None, std: float | None, n: int, interval: tuple[float, float] | None = None,
              separable: bool | None = None) -> str:
        if mean is None:
            return "—"
        text = f"{mean:.2f} ± {std:.2f}" if (std is not None and n > 1) else f"{mean:.2f}"
        if interval is not None:
            text += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
        if separable is False:
            text += " ~"
        return text

    @staticmethod
    def _paired_cell(p: Paired | None) -> str:
        if p is None:
            return "—"
        text = f"{p.diff:+.2f}"
        if p.low is not None and p.high is not None:
            text += f" [{p.low:+.2f}, {p.high:+.2f}]"
        return f"{text} {p.holds}"

    def _has_paired(self) -> bool:
        return any(r.paired.get(m) is not None for r in self.all_rows() for m in self.metrics)

    def to_rows(self) -> list[list[str]]:
        out = []
        paired = self._has_paired()
        for row in self.all_rows():
            n = max((s[2] for s in row.stats.values()), default=0)
            cells = [self._cell(*row.stats.get(m, (None, None, 0)), row.intervals.get(m), row.separable.get(m))
                     for m in self.metrics]
            extra = [self._paired_cell(row.paired.get(m)) for m in self.metrics] if paired else []
            out.append([row.label, *cells, str(n), str(row.failed), *extra])
        return out

    def header(self) -> list[str]:
        paired = [f"Δ{m} vs {self.block_label} (paired)" for m in self.metrics] if self._has_paired() else []
        return ["point", *self.metrics, "seeds", "failed", *paired]

    def legend(self) -> str:
        """What the cells mean (printed under the table)."""
        n = f"{self.num_val} val images" if self.num_val else "the val images"
        lines = [f"cells: mean (± sample std over seeds) [95 % interval: binomial over {n} for one seed, "
                 "Student t over seeds for several]"]
        if self.block_label:
            lines.append(f"~ = interval overlaps the block baseline's ('{self.block_label}'): not separable")
        if self._has_paired():
            lines.append(f"Δ = row − '{self.block_label}' matched on seed [95 % t-interval over seeds; one seed: "
                         "two independent binomials]; higher/lower = the interval excludes 0, no = it does not")
        if any(0 < n < 2 for row in self.rows for (_mean, _std, n) in row.stats.values()):
            lines.append("one seed: its intervals hold the evaluation's sampling noise only, not the run-to-run spread "
                         "of training; to rank strategies, run seeds (--seeds 3)")
        return "\n".join(lines)

    def to_text(self) -> str:
        rows = [self.header(), *self.to_rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines) + "\n" + self.legend()

    def to_markdown(self) -> str:
        head = self.header()
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in self.to_rows()]
        return "\n".join(lines) + "\n\n" + self.legend() + "\n"

    def to_json(self) -> dict[str, Any]:
        def row_json(r: TableRow) -> dict[str, Any]:
            return {"index": r.index, "label": r.label, "failed": r.failed,
                    "stats": {m: {"mean": s[0], "std": s[1], "n": s[2],
                                  "interval95": list(r.intervals[m]) if r.intervals.get(m) else None,
                                  "separable_from_block": r.separable.get(m),
                                  "paired_vs_block": None if r.paired.get(m) is None else {
                                      "diff": r.paired[m].diff, "low": r.paired[m].low, "high": r.paired[m].high,
                                      "seeds": r.paired[m].seeds, "holds": r.paired[m].holds}}
                              for m, s in r.stats.items()}}

        return {"metrics": self.metrics, "finished": self.finished, "failed": self.failed,
                "num_val": self.num_val, "block": self.block_label,
                "untrained": row_json(self.untrained) if self.untrained is not None else None,
                "rows": [row_json(r) for r in self.rows]}


def child_runs(uri: str, parent_run_id: str) -> list[Any]:
    """All child runs of a parent (any status)."""
    client = client_for(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=5000)


def _num_val(run: Any) -> int | None:
    for key in NUM_VAL_KEYS:
        value = run.data.metrics.get(key, run.data.params.get(key))
        if value is not None:
            try:
                return int(float(value))
            except ValueError:
                continue
    return None


def _seed(run: Any, fallback: int) -> int:
    try:
        return int(run.data.params.get("sweep.seed", run.data.params.get("train.seed", fallback)))
    except ValueError:
        return fallback


def results_table(uri: str, parent_run_id: str, metrics: list[str] | None = None) -> SweepTable:
    """Group the finished child runs by sweep point; 95 % intervals; the untrained row; comparison with block.

    Reads from each child: the table metrics (``knn_top1``, ``linear_top1``, and any of
    :data:`LOCALISATION_METRICS` it logs), ``sweep.point``/``sweep.label``/``sweep.seed``/``masking.strategy``
    params, the val count (:data:`NUM_VAL_KEYS`), the untrained model's numbers (``<metric>_init`` metrics, or a
    child tagged ``sweep.untrained=true``) and optional one-seed standard errors ``<metric>_se``.
    """
    metrics = list(metrics or TABLE_METRICS)
    runs = child_runs(uri, parent_run_id)
    # keep the latest run per trial key (a resumed trial leaves its interrupted attempt behind)
    latest: dict[str, Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        latest[run.data.tags.get("mimlab.trial_key", run.info.run_id)] = run
    finished_runs = [r for r in latest.values() if r.info.status == "FINISHED"]
    metrics += [m for m in LOCALISATION_METRICS if m not in metrics
                and any(m in r.data.metrics for r in finished_runs)]
    groups: dict[int, dict[str, Any]] = {}
    untrained: dict[str, dict[int, float]] = {}
    finished = failed = 0
    num_vals: list[int] = []
    for i, run in enumerate(latest.values()):
        seed = _seed(run, i)
        if run.data.tags.get(UNTRAINED_TAG, "").lower() == "true":
            if run.info.status == "FINISHED":
                for m in metrics:
                    if m in run.data.metrics:
                        untrained.setdefault(m, {})[seed] = float(run.data.metrics[m])
            continue
        idx = int(run.data.params.get("sweep.point", -1))
        group = groups.setdefault(idx, {"label": run.data.params.get("sweep.label", str(idx)), "values": {},
                                        "ses": {}, "failed": 0, "strategy": run.data.params.get("masking.strategy")})
        if run.info.status == "FINISHED":
            finished += 1
            n = _num_val(run)
            if n:
                num_vals.append(n)
            for m in metrics:
                if m in run.data.metrics:
                    group["values"].setdefault(m, {})[seed] = float(run.data.metrics[m])
                if f"{m}_se" in run.data.metrics:
                    group["ses"].setdefault(m, {})[seed] = float(run.data.metrics[f"{m}_se"])
                if f"{m}{INIT_SUFFIX}" in run.data.metrics:   # same untrained model for every point of a seed
                    untrained.setdefault(m, {}).setdefault(seed, float(run.data.metrics[f"{m}{INIT_SUFFIX}"]))
        elif run.info.status == "FAILED":
            failed += 1
            group["failed"] += 1
    num_val = min(num_vals) if num_vals else None
    rows = [_row_from(idx, g["label"], g["values"], g["failed"], num_val, metrics, g["strategy"], g["ses"])
            for idx, g in sorted(groups.items())]
    untrained_row = _row_from(-1, "untrained", untrained, 0, num_val, metrics) if untrained else None
    block = next((r for r in rows if r.strategy == BLOCK_STRATEGY), None) or next(
        (r for r in rows if r.label == BLOCK_STRATEGY), None)
    _compare_to_block(([untrained_row] if untrained_row else []) + rows, block, metrics, num_val)
    return SweepTable(metrics, rows, finished, failed, untrained_row, block.label if block else None, num_val)


def plot_table(exp: Experiment, table: SweepTable) -> Any:
    """A figure shaped like the thesis's: one panel per metric, sweep points along x with their 95 % intervals,
    baselines (and the untrained model) as lines with their interval as a band."""
    if not table.rows:
        return None
    from matplotlib.figure import Figure  # not pyplot: the caller's backend (a notebook's inline one) stays as is

    spec = exp.spec.plot
    baselines = set(spec.baselines) | ({table.block_label} if table.block_label else set())
    paired = table._has_paired()
    fig = Figure(figsize=(5.5 * len(table.metrics), 8 if paired else 4))
    axes = fig.subplots(2 if paired else 1, len(table.metrics), squeeze=False)
    for ax, metric in zip(axes[0], table.metrics, strict=True):
        series = [r for r in table.rows if r.label not in baselines and r.stats[metric][0] is not None]
        xs = list(range(len(series)))
        means = [r.stats[metric][0] for r in series]
        lows = [m - (r.intervals[metric][0] if r.intervals.get(metric) else m) for m, r in zip(means, series)]
        highs = [(r.intervals[metric][1] if r.intervals.get(metric) else m) - m for m, r in zip(means, series)]
        ax.errorbar(xs, means, yerr=[lows, highs], marker="o", capsize=3, label=f"{exp.name} (95 % interval)")
        ax.set_xticks(xs, [r.label for r in series], rotation=45, ha="right", fontsize=8)
        lines = [r for r in table.rows if r.label in baselines]
        if table.untrained is not None:
            lines.append(table.untrained)
        for i, r in enumerate(lines):
            mean = r.stats[metric][0]
            if mean is None:
                continue
            color = f"C{i + 1}"
            ax.axhline(mean, linestyle=("--", ":", "-.")[i % 3], color=color, label=r.label)
            if r.intervals.get(metric):
                ax.axhspan(*r.intervals[metric], color=color, alpha=0.15)
        ax.set_title(f"{metric} ({exp.profile_name})")
        ax.set_xlabel(spec.xlabel or (spec.x or "sweep point"))
        ax.set_ylabel("top-1 (%)" if _scale(metric) == 100 else metric)
        ax.legend(fontsize=8)
    if paired:
        for ax, metric in zip(axes[1], table.metrics, strict=True):
            _plot_paired(ax, table, metric)
    fig.tight_layout()
    return fig


def _plot_paired(ax: Any, table: SweepTable, metric: str) -> None:
    """Row − block matched on seed, with its 95 % interval, per row (the untrained row first)."""
    rows = [r for r in table.all_rows() if r.paired.get(metric) is not None]
    xs = list(range(len(rows)))
    diffs = [r.paired[metric].diff for r in rows]
    lows = [d - (r.paired[metric].low if r.paired[metric].low is not None else d) for d, r in zip(diffs, rows)]
    highs = [(r.paired[metric].high if r.paired[metric].high is not None else d) - d for d, r in zip(diffs, rows)]
    ax.errorbar(xs, diffs, yerr=[lows, highs], fmt="o", capsize=3, color="C3")
    ax.axhline(0.0, color="k", linewidth=0.8)
    ax.set_xticks(xs, [r.label for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_title(f"Δ{metric} vs {table.block_label}\n(paired on seed, 95 % interval)", fontsize=9)
    ax.set_ylabel("points" if _scale(metric) == 100 else metric)


def find_parent(uri: str, sweep: str, run_id: str | None = None) -> Any:
    """The latest parent run of sweep ``sweep`` (or the given run id)."""
    client = client_for(uri)
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


def compare(*, name: str, tracking_uri: str | None = None,
            run_id: str | None = None) -> tuple[Any, SweepTable, Experiment | None]:
    """The results table of the latest (or given) sweep of ``name``, read back from the tracking store, with the
    experiment at the sweep's profile (``None`` when its YAML is gone or no longer loads)."""
    from mimlab.runtime import tracking
    from mimlab.runtime.ray_env import apply_default_env

    apply_default_env()
    uri = tracking.tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UserError(f"MLflow store '{uri}' does not exist yet — run `platform tune NAME` first")
    parent = find_parent(uri, name, run_id)
    exp: Experiment | None = None
    try:
        exp = load_experiment(name, parent.data.tags.get("mimlab.profile"), validate_masking=False)
    except UserError:
        pass
    return parent, results_table(uri, parent.info.run_id, metrics=exp.spec.plot.metrics if exp else None), exp
