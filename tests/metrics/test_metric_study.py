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
    results = json.loads((tmp_path / "s" / "study.json").read_text())
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
