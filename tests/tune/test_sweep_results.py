"""The MLflow side of a sweep without running one: the experiment-kind tag and the results table maths."""

from __future__ import annotations

import pytest

from mimlab.runtime import tracking
from mimlab.runtime.sweep_results import open_parent


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_sweep_parent_creates_its_experiment_tagged_for_model_training(exp_dir, mlflow_uri):
    """The UI opens a `custom_model_development` experiment on its runs table (not the GenAI traces page)."""
    from mimlab.config.experiment import load_experiment

    exp = load_experiment("tiny-sweep")
    _, name = open_parent(exp, mlflow_uri, "sweep-dir", seeds=1, previous=None)
    tags = _client(mlflow_uri).get_experiment_by_name(name).tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_sweep_parent_tags_an_experiment_that_existed_untagged(exp_dir, mlflow_uri):
    from mimlab.config.experiment import load_experiment

    client = _client(mlflow_uri)
    client.create_experiment("tune-tiny-sweep")
    exp = load_experiment("tiny-sweep")
    open_parent(exp, mlflow_uri, "sweep-dir", seeds=1, previous=None)
    assert client.get_experiment_by_name("tune-tiny-sweep").tags["mlflow.experimentKind"] == "custom_model_development"


def test_tracking_setup_tags_new_experiments_and_keeps_an_existing_kind(mlflow_uri):
    client = _client(mlflow_uri)
    tracking.setup(mlflow_uri, "fresh")
    assert client.get_experiment_by_name("fresh").tags["mlflow.experimentKind"] == "custom_model_development"
    client.create_experiment("genai", tags={"mlflow.experimentKind": "genai_development"})
    tracking.setup(mlflow_uri, "genai")
    assert client.get_experiment_by_name("genai").tags["mlflow.experimentKind"] == "genai_development"


def test_the_kind_value_is_one_the_installed_mlflow_ui_defines():
    """Independent check against the installed MLflow: its UI bundle's ExperimentKind enum holds the value."""
    from pathlib import Path

    import mlflow

    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    text = "".join(p.read_text(errors="ignore") for p in bundle.glob("main.*.js"))
    assert f'CUSTOM_MODEL_DEVELOPMENT="{tracking.EXPERIMENT_KIND_TRAINING}"' in text


# ------------------------------------------------------------------------------------------ the results table
# Golden numbers below are hand computations with textbook constants, independent of the code under test (which
# uses scipy and statistics.NormalDist): z(0.975) = 1.959964, t(0.975, df=1) = 12.706205, t(0.975, df=2) = 4.302653.
Z = 1.959964
T1 = 12.706205
T2 = 4.302653


def _sweep(mlflow_uri, children, untrained_runs=()):
    """A parent run (the real open_parent) with hand-made FINISHED children.

    ``children``: (point, label, strategy, seed, metrics dict); ``untrained_runs``: (seed, metrics) tagged
    sweep.untrained=true.
    """
    from mimlab.config.experiment import load_experiment

    client = _client(mlflow_uri)
    parent, name = open_parent(load_experiment("tiny-sweep"), mlflow_uri, "sweep-dir", seeds=3, previous=None)
    exp_id = client.get_experiment_by_name(name).experiment_id
    rows = [(p, lab, strat, seed, m, {}) for p, lab, strat, seed, m in children]
    rows += [(-1, "untrained", "none", seed, m, {"sweep.untrained": "true"}) for seed, m in untrained_runs]
    for point, label, strategy, seed, metrics, tags in rows:
        run = client.create_run(exp_id, tags={"mlflow.parentRunId": parent, "mimlab.trial_key": f"{label}-{seed}",
                                              **tags}).info.run_id
        for key, value in {"sweep.point": point, "sweep.label": label, "sweep.seed": seed,
                           "masking.strategy": strategy}.items():
            client.log_param(run, key, value)
        for key, value in metrics.items():
            client.log_metric(run, key, value)
        client.set_terminated(run, status="FINISHED")
    return parent


def test_one_seed_rows_get_binomial_intervals_over_the_val_count_and_the_untrained_run_is_the_first_row(
        exp_dir, mlflow_uri):
    from mimlab.runtime.sweep_results import results_table

    parent = _sweep(mlflow_uri, [(0, "block", "block", 0, {"knn_top1": 60.0, "eval.num_val": 400})],
                    untrained_runs=[(0, {"knn_top1": 50.0})])
    table = results_table(mlflow_uri, parent, metrics=["knn_top1"])
    block, untrained = table.rows[0], table.untrained
    half_block = Z * 100 * (0.6 * 0.4 / 400) ** 0.5          # 4.80086
    half_untrained = Z * 100 * (0.5 * 0.5 / 400) ** 0.5      # 4.89991
    assert block.intervals["knn_top1"] == pytest.approx((60 - half_block, 60 + half_block), abs=1e-4)
    assert untrained.intervals["knn_top1"] == pytest.approx((50 - half_untrained, 50 + half_untrained), abs=1e-4)
    assert untrained.separable["knn_top1"] is True            # 54.90 < 55.20: the intervals do not overlap
    paired = untrained.paired["knn_top1"]                     # one seed: two independent binomials
    half = Z * 100 * (0.6 * 0.4 / 400 + 0.5 * 0.5 / 400) ** 0.5
    assert (paired.diff, paired.low, paired.high) == pytest.approx((-10, -10 - half, -10 + half), abs=1e-4)
    assert paired.holds == "lower"
    text = table.to_text().splitlines()
    assert text[2].startswith("untrained") and text[3].startswith("block")   # header, rule, untrained first
    assert "60.00 [55.20, 64.80]" in table.to_markdown()
    assert "one seed: its intervals hold the evaluation's sampling noise only" in table.legend()


def test_several_seeds_get_t_intervals_overlap_marks_not_separable_and_the_paired_difference_can_still_hold(
        exp_dir, mlflow_uri):
    from mimlab.runtime.sweep_results import results_table

    block, high, init = [50.0, 52.0, 57.0], [55.0, 58.0, 60.0], [40.0, 41.0, 45.0]
    children = [(0, "block", "block", s, {"knn_top1": block[s], "knn_top1_init": init[s]}) for s in range(3)]
    children += [(1, "AttMask", "attmask-high", s, {"knn_top1": high[s], "knn_top1_init": init[s]})
                 for s in range(3)]
    table = results_table(mlflow_uri, _sweep(mlflow_uri, children), metrics=["knn_top1"])
    rows = {r.label: r for r in table.rows}
    # block: mean 53, sd √13 = 3.60555 -> half 4.302653·3.60555/√3 = 8.95663
    assert rows["block"].intervals["knn_top1"] == pytest.approx((44.04337, 61.95663), abs=1e-4)
    # AttMask: mean 57.6667, sd √(19/3) = 2.51661 -> half 6.25160; overlaps block's -> not separable
    assert rows["AttMask"].intervals["knn_top1"] == pytest.approx((51.41507, 63.91827), abs=1e-4)
    assert rows["AttMask"].separable["knn_top1"] is False
    # paired on seed: differences 5, 6, 3 -> mean 4.6667, sd √(7/3) = 1.52753, half 3.79464 -> excludes 0
    p = rows["AttMask"].paired["knn_top1"]
    assert (p.diff, p.low, p.high, p.seeds) == pytest.approx((4.66667, 0.87203, 8.46131, 3), abs=1e-4)
    assert p.holds == "higher"
    # untrained from the children's *_init metrics, one value per seed: mean 42, sd √7 -> half 6.57237
    assert table.untrained.stats["knn_top1"] == pytest.approx((42.0, 7 ** 0.5, 3))
    assert table.untrained.intervals["knn_top1"] == pytest.approx((35.42763, 48.57237), abs=1e-4)
    assert "57.67 ± 2.52 [51.42, 63.92] ~" in table.to_text()
    assert "+4.67 [+0.87, +8.46] higher" in table.to_markdown()
    assert "sampling noise only" not in table.legend()         # three seeds: the t-interval holds training's spread


def test_two_seeds_use_the_t_quantile_with_one_degree_of_freedom(exp_dir, mlflow_uri):
    from mimlab.runtime.sweep_results import results_table

    children = [(0, "block", "block", s, {"knn_top1": v}) for s, v in enumerate([40.0, 43.0])]
    row = results_table(mlflow_uri, _sweep(mlflow_uri, children), metrics=["knn_top1"]).rows[0]
    half = T1 * (4.5 ** 0.5) / 2 ** 0.5                        # sd = 3/√2 -> half 19.0593
    assert row.intervals["knn_top1"] == pytest.approx((41.5 - half, 41.5 + half), abs=1e-4)


def test_localisation_metrics_on_children_become_columns_and_runs_compare_prints_the_table(exp_dir, mlflow_uri):
    from typer.testing import CliRunner

    from mimlab.cli import app

    children = [(0, "block", "block", 0, {"knn_top1": 60.0, "knn_top1_init": 50.0, "cls_pointing": 0.5,
                                          "eval.num_val": 400}),
                (1, "Raw_2", "attmask-raw:layer=2", 0, {"knn_top1": 70.0, "knn_top1_init": 50.0,
                                                        "cls_pointing": 0.7, "eval.num_val": 400})]
    _sweep(mlflow_uri, children)
    out = CliRunner().invoke(app, ["runs", "compare", "tiny-sweep", "--tracking-uri", mlflow_uri])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    header = next(line for line in lines if line.startswith("point"))
    assert "cls_pointing" in header and "Δknn_top1 vs block (paired)" in header
    untrained = next(line for line in lines if line.startswith("untrained"))
    assert "50.00 [45.10, 54.90]" in untrained                 # binomial over 400 val images
    raw2 = next(line for line in lines if line.startswith("Raw_2"))
    # pointing 0.7 over 400 images: half = 1.959964·√(0.21/400) = 0.04491
    assert "0.70 [0.66, 0.74]" in raw2 and "+10.00" in raw2
