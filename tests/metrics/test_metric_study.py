"""``platform evaluate study``: YAML params, a parent MLflow run with a child per pair, combined table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mimlab.cli import app
from mimlab.errors import UserError
from mimlab.metrics.study import format_study, load_study

STUDIES = Path(__file__).resolve().parents[2] / "experiments" / "studies"

STUDY = """
name: tiny
params: {ckpt: null, limit: 4}
limit: ${limit}
batch_size: 2
metrics: [ad, deletion]
models:
  - {label: A, model: "${ckpt}"}
  - {label: B, model: "${ckpt}", methods: [raw]}
methods: [raw, {label: Rollout, spec: rollout}]
"""


def test_study_runs_parent_and_child_runs_and_prints_the_combined_table(
    ray_local, tiny_checkpoint, tmp_path, mlflow_uri
):
    import mlflow

    path = tmp_path / "tiny.yaml"
    path.write_text(STUDY)
    res = CliRunner().invoke(
        app,
        ["evaluate", "study", str(path), "--param", f"ckpt={tiny_checkpoint}", "--out", str(tmp_path / "s")],
    )
    assert res.exit_code == 0, res.output
    assert "ad ↓ lower is better" in res.output and "Rollout" in res.output
    doc = json.loads((tmp_path / "s" / "study.json").read_text())
    results = doc["results"]
    assert doc["target"] == "gt" and "Wilcoxon" in doc["significance"]["test"] and "Wilcoxon" in res.output
    assert doc["ci95"]["A"]["raw"]["ad"][0] <= results["A"]["raw"]["ad"] <= doc["ci95"]["A"]["raw"]["ad"][1]
    assert (
        list(results) == ["A", "B"]
        and list(results["A"]) == ["raw", "Rollout"]
        and list(results["B"]) == ["raw"]
    )
    # same checkpoint, same images: model B's raw row equals model A's
    assert results["A"]["raw"] == results["B"]["raw"]

    mlflow.set_tracking_uri(mlflow_uri)
    parent = mlflow.search_runs(
        experiment_names=["mimlab"], filter_string="tags.`mimlab.kind` = 'saliency-study'"
    )
    assert len(parent) == 1
    pid = parent.iloc[0]["run_id"]
    children = mlflow.search_runs(
        experiment_names=["mimlab"], filter_string=f"tags.mlflow.parentRunId = '{pid}'"
    )
    assert len(children) == 3
    assert set(children["params.method_label"]) == {"raw", "Rollout"}
    row = children[(children["params.model_label"] == "A") & (children["params.method"] == "rollout")].iloc[0]
    assert row["metrics.deletion"] == pytest.approx(results["A"]["Rollout"]["deletion"])


def test_format_study_marks_the_best_per_column():
    results = {
        "M1": {"x": {"ad": 0.5, "ai": 0.1}, "y": {"ad": 0.2, "ai": 0.3}},
        "M2": {"x": {"ad": 0.1, "ai": 0.4}, "y": {"ad": 0.3, "ai": 0.2}},
    }
    text = format_study(results, ["x", "y"], {"ad": False, "ai": True})
    ad_block, ai_block = text.split("\n\n")
    assert "0.2000*" in ad_block and "0.1000*" in ad_block and "0.5000*" not in ad_block
    assert "0.3000*" in ai_block and "0.4000*" in ai_block


def test_study_yaml_errors_name_the_key(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(STUDY.replace("batch_size: 2", "batch_sise: 2"))
    with pytest.raises(UserError, match="key 'batch_sise'"):
        load_study(path, ["ckpt=x"])
    path.write_text(STUDY)
    with pytest.raises(UserError, match="no param 'ckp'"):
        load_study(path, ["ckp=x"])
    path.write_text(STUDY.replace("${ckpt}", "${model}"))
    with pytest.raises(UserError, match=r"'\$\{model\}' is not in params"):
        load_study(path)


@pytest.mark.parametrize("name", sorted(p.name for p in STUDIES.glob("*.yaml")))
def test_shipped_thesis_studies_load(name):
    cfg = load_study(STUDIES / name)
    assert cfg.pairs()


def test_study_target_and_channel_order_are_validated(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(STUDY + "target: predicted\nchannel_order: bgr_legacy\n")
    cfg = load_study(path, ["ckpt=x"])
    assert cfg.target == "predicted" and cfg.channel_order == "bgr_legacy"
    assert load_study(STUDIES / "table5_cams.yaml").target == "gt"  # the thesis protocol by default
    path.write_text(STUDY + "target: 3\n")
    assert load_study(path, ["ckpt=x"]).target == 3
    path.write_text(STUDY + "target: top1\n")
    with pytest.raises(UserError, match="key 'target'.*gt, predicted or a class index"):
        load_study(path, ["ckpt=x"])
    path.write_text(STUDY + "channel_order: bgr\n")
    with pytest.raises(UserError, match="key 'channel_order'"):
        load_study(path, ["ckpt=x"])


def test_significance_marks_methods_not_different_from_the_best():
    from mimlab.metrics.study import significance

    rng = [0.01 * ((i * 37) % 11) for i in range(40)]  # fixed pseudo-noise
    values = {"M": {"x": {"ai": [0.5 + r for r in rng]},
                    "y": {"ai": [0.5 + r + 0.002 * ((-1) ** i) for i, r in enumerate(rng)]},  # a tie with x
                    "z": {"ai": [0.2 + r for r in rng]}}}  # clearly worse
    sig = significance(values, ["x", "y", "z"], {"ai": True})
    tests = sig["tests"]["ai"]["M"]
    best = tests["z"]["vs"]
    assert best in ("x", "y") and best not in tests and "Wilcoxon" in sig["test"]
    other = "x" if best == "y" else "y"
    assert not tests[other]["significant"] and tests["z"]["significant"] and tests["z"]["p"] < 1e-6
    means = {"M": {m: {"ai": sum(v["ai"]) / 40} for m, v in values["M"].items()}}
    text = format_study(means, ["x", "y", "z"], {"ai": True}, significance=sig)
    row = {line.split()[0]: line for line in text.splitlines() if line.split() and line.split()[0] in "xyz"}
    assert row[best].endswith("*") and row[other].endswith("=") and not row["z"].endswith(("=", "*"))
    assert "Wilcoxon" in text
