"""``platform evaluate sanity`` end to end: Ray actors, outputs, one MLflow run, the weights file untouched."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mimlab.cli import app
from mimlab.data.sources import load_records
from mimlab.runtime.sanity import SanityWorker


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_sanity_cli_writes_curves_json_and_one_run_and_never_touches_the_weights(
    ray_local, tiny_checkpoint, tmp_path, mlflow_uri
):
    import mlflow

    before = _digest(tiny_checkpoint)
    out = tmp_path / "s"
    res = CliRunner().invoke(app, ["evaluate", "sanity", "--model", str(tiny_checkpoint), "--method", "gradcam",
                                   "--method", "raw", "--limit", "2", "--batch-size", "1", "--workers", "2",
                                   "--target", "predicted", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert _digest(tiny_checkpoint) == before  # weights only read
    doc = json.loads((out / "sanity.json").read_text())
    assert doc["steps"] == ["head", "norm", "blocks.3", "blocks.2", "blocks.1", "blocks.0", "patch_embed"]
    assert doc["num_images"] == 2 and doc["target"] == "predicted"
    for m in ("gradcam", "raw"):
        for mode in ("cascading", "independent"):
            cells = doc["methods"][m][mode]
            assert [c["block"] for c in cells] == doc["steps"]
            for c in cells:
                for meas in ("spearman", "ssim"):
                    lo, hi = c[meas]["ci95"]
                    assert lo <= c[meas]["mean"] <= hi and c[meas]["n"] == 2
    assert doc["methods"]["raw"]["target"].startswith("none")
    assert not doc["methods"]["gradcam"]["flagged"]  # a random model's CAM does change
    assert (out / "sanity.png").stat().st_size > 0 and (out / "sanity_per_image.csv").exists()
    assert "cascading" in res.output and "spearman" in res.output

    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["mimlab"], filter_string="tags.`mimlab.kind` = 'saliency-sanity'")
    assert len(runs) == 1 and runs.iloc[0]["params.target"] == "predicted"
    history = mlflow.MlflowClient().get_metric_history(runs.iloc[0]["run_id"], "gradcam/cascading/spearman")
    assert [h.step for h in history] == list(range(1, 8))
    last = doc["methods"]["gradcam"]["cascading"][-1]["spearman"]["mean"]
    assert sorted(history, key=lambda h: h.step)[-1].value == pytest.approx(last)

    # the seeded randomisation gives the same numbers in-process, on one batch of 2 instead of two actors x 1
    worker = SanityWorker(model=str(tiny_checkpoint), weights=None, img_size=None, methods=["gradcam"],
                          target="predicted", channel_order="rgb", seed=0, modes=["cascading"])
    mine = worker.run(load_records(None, limit=2))["values"]["cascading"]["gradcam"]["spearman"]  # [steps, 2]
    rows = [r for r in csv.DictReader(open(out / "sanity_per_image.csv"))
            if r["method"] == "gradcam" and r["mode"] == "cascading"]
    theirs = np.array([float(r["spearman"]) for r in rows]).reshape(7, 2)
    np.testing.assert_allclose(mine, theirs, rtol=1e-5)


def test_sanity_bad_input_is_one_error_line(tiny_checkpoint, tmp_path, cli_error):
    args = ["evaluate", "sanity", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o")]
    cli_error([*args, "--method", "rolout"], "unknown method 'rolout'")
    cli_error([*args, "--mode", "cascade"], "--mode must be one of cascading, independent", "cascade")
    cli_error([*args, "--target", "42"], "--target 42 is outside 0..9")
    assert not (tmp_path / "o" / "sanity.json").exists()
