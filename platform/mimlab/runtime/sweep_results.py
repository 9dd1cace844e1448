"""The MLflow side of a sweep: the parent run, and the results table (mean ± std over seeds) read back from its
child runs — at the end of a sweep and later by ``platform runs compare``."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
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
    client = client_for(uri)
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
