"""Profiles that set the seeds, trials that score the [cls] attention's localisation, and `runs compare` writing
the Table 11 kind of result (Markdown and the figure with the paired differences)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mimlab.cli import app
from mimlab.config.experiment import load_experiment
from mimlab.runtime.sweep_results import child_runs
from mimlab.runtime.tune import run_sweep


def test_demo_long_runs_table_11_baselines_at_three_seeds_with_localisation():
    exp = load_experiment("masking-rollout", "demo-long")
    assert [p.overrides["masking.strategy"] for p in exp.points] == ["block", "attmask-low", "attmask-high"]
    assert exp.profile.seeds == 3
    assert exp.evaluation.localisation is True
    # the recipe of experiments/pretrain-demo.yaml: 400 steps of 64 images
    cfg = exp.points[0].config
    assert cfg["optim"]["epochs"] * cfg["train"]["steps_per_epoch"] == 400
    assert cfg["optim"]["batch_size_per_worker"] == 64 and cfg["model"]["kwargs"]["depth"] == 6


def test_sweep_takes_the_profiles_seeds_and_logs_cls_localisation(ray_local, exp_dir, mlflow_uri, tmp_path):
    (exp_dir / "seeded.yaml").write_text("name: seeded\ndefault_profile: tiny-seeds\n"
                                         "sweep:\n  masking.strategy: [attmask-high, block]\n")
    # only the second point (--point block): it keeps its index in the whole sweep and measures the untrained row
    result = run_sweep(name="seeded", tracking_uri=mlflow_uri, storage_path=str(tmp_path / "runs"),
                       points=["block"], echo=lambda s: None)
    assert result.num_errors == 0 and not result.interrupted
    children = [c for c in child_runs(mlflow_uri, result.parent_run_id)]
    assert sorted(int(c.data.params["sweep.seed"]) for c in children) == [0, 1]   # seeds: 2 in the profile
    assert {c.data.params["sweep.point"] for c in children} == {"1"}
    assert {c.data.params["masking.strategy"] for c in children} == {"block"}
    for child in children:
        for name in ("cls_pointing", "cls_energy", "cls_pointing_init", "cls_energy_init"):
            assert 0.0 <= child.data.metrics[name] <= 1.0, name
    # the trial's number is the saliency evaluation of its checkpoint on the val images its k-NN queried (a wiring
    # check; the pointing game's own golden is in tests/metrics)
    import mimlab

    child = children[0]
    ckpt = child.data.tags["mimlab.checkpoint"]
    n_val = int(child.data.metrics["eval.num_val"])
    again = mimlab.evaluate_saliency(ckpt, methods=["raw"], metrics=["pointing", "energy"], limit=n_val)
    assert child.data.metrics["cls_pointing"] == pytest.approx(again.table["raw"]["pointing"], abs=1e-6)
    assert child.data.metrics["cls_energy"] == pytest.approx(again.table["raw"]["energy"], abs=1e-6)

    table = result.table
    assert "cls_pointing" in table.metrics and table.untrained is not None
    assert table.rows[0].stats["cls_pointing"][2] == 2          # two seeds -> a t-interval
    assert table.untrained.paired["knn_top1"] is not None and table.untrained.paired["knn_top1"].seeds == 2

    png = tmp_path / "table.png"
    out = CliRunner().invoke(app, ["runs", "compare", "seeded", "--tracking-uri", mlflow_uri, "--markdown",
                                   "--plot", str(png)])
    assert out.exit_code == 0, out.output
    assert "| untrained |" in out.output and "Δknn_top1 vs block (paired)" in out.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_plot_into_a_folder_is_refused_before_reading_the_store(cli_error, tmp_path):
    cli_error(["runs", "compare", "seeded", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}",
               "--plot", str(tmp_path)], "--plot", "existing folder")


def test_unknown_point_label_is_one_line_listing_the_points(cli_error, tmp_path):
    cli_error(["tune", "masking-rollout", "--profile", "demo-long", "--point", "blok",
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage-path", str(tmp_path / "runs")],
              "unknown sweep point", "'blok'", "random block-wise", protect=[tmp_path])


@pytest.mark.parametrize(("seconds", "text"), [(0, "00:00"), (59.9, "00:59"), (3599, "59:59"), (3600, "1:00:00"),
                                               (3779, "1:02:59")])
def test_progress_clock_counts_hours(seconds, text):
    from mimlab.runtime.tune import clock

    assert clock(seconds) == text
