"""End to end: ``platform evaluate saliency`` on the embedded dataset (Ray actors, MLflow), bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mimlab.cli import app
from mimlab.errors import UserError
from mimlab.runtime.saliency import SaliencyEvaluator, compute_saliency

METHODS = ["raw", "rollout"]
METRICS = "ad,ai,insertion,deletion,pointing,energy,iou:k=25"


def test_cli_writes_every_output_and_a_findable_mlflow_run_and_workers_do_not_change_results(
    ray_local, tiny_checkpoint, tmp_path, mlflow_uri
):
    import mlflow

    out2 = tmp_path / "k2"
    args = [
        "evaluate",
        "saliency",
        "--model",
        str(tiny_checkpoint),
        "--limit",
        "10",
        "--batch-size",
        "3",
        "--metrics",
        METRICS,
        "--save-maps",
        "--workers",
        "2",
        "--out",
        str(out2),
    ]
    for m in METHODS:
        args += ["--method", m]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "rollout" in res.output and "*" in res.output  # the printed table marks the best

    doc = json.loads((out2 / "results.json").read_text())
    names = ["ad", "ai", "insertion", "deletion", "pointing", "energy", "iou:k=25"]
    assert list(doc["methods"]) == METHODS and all(list(doc["methods"][m]["metrics"]) == names for m in METHODS)
    assert doc["target"] == "gt" and doc["channel_order"] == "rgb" and doc["interval"]["resamples"] == 1000
    assert all(doc["methods"][m]["target"].startswith("none") for m in METHODS)  # attention maps take no class
    rows = list(csv.DictReader(open(out2 / "per_image.csv")))
    assert len(rows) == 20 and list(rows[0]) == ["path", "label", "predicted", "method", "target", *names]
    assert all(r["target"] == "" for r in rows)
    for m in METHODS:  # the means are the means of the per-image rows, inside their bootstrap interval
        vals = [float(r["ad"]) for r in rows if r["method"] == m]
        cell = doc["methods"][m]["metrics"]["ad"]
        assert cell["mean"] == pytest.approx(sum(vals) / len(vals), abs=1e-6) and cell["n"] == 10
        assert cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1] and cell["ci95"][0] < cell["ci95"][1]
    table = {m: {k: c["mean"] for k, c in doc["methods"][m]["metrics"].items()} for m in METHODS}
    maps = np.load(out2 / "maps.npz")
    assert sorted(maps.files) == sorted(METHODS)
    assert maps["raw"].shape == (10, 32, 32) and maps["raw"].dtype == np.float32
    assert (out2 / "metrics.png").stat().st_size > 0
    assert not list(out2.glob(".partial-*"))

    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(
        experiment_names=["mimlab"], filter_string="tags.`mimlab.kind` = 'saliency-eval'"
    )
    assert len(runs) == 1
    assert runs.iloc[0]["metrics.raw/ad"] == pytest.approx(table["raw"]["ad"])
    assert runs.iloc[0]["params.workers"] == "2" and runs.iloc[0]["params.target"] == "gt"
    low = doc["methods"]["raw"]["metrics"]["ad"]["ci95"][0]
    assert runs.iloc[0]["metrics.raw/ad/ci95_low"] == pytest.approx(low)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs.iloc[0]["run_id"])}
    assert {"results.json", "per_image.csv", "maps.npz", "metrics.png"} <= artifacts

    # the same evaluation on one actor gives a byte-identical results.json and per-image table
    out1 = tmp_path / "k1"
    compute_saliency(
        model=str(tiny_checkpoint),
        limit=10,
        batch_size=3,
        methods=METHODS,
        metrics=names,
        workers=1,
        out=out1,
    )
    assert (out1 / "results.json").read_bytes() == (out2 / "results.json").read_bytes()
    assert (out1 / "per_image.csv").read_bytes() == (out2 / "per_image.csv").read_bytes()


def test_unknown_metric_and_method_fail_in_one_line_without_results(tiny_checkpoint, tmp_path, mlflow_uri,
                                                                    cli_error):
    out = tmp_path / "bad"
    base = ["evaluate", "saliency", "--model", str(tiny_checkpoint), "--out", str(out)]
    cli_error([*base, "--metrics", "ad,insertoin"], "unknown metric 'insertoin'")
    cli_error([*base, "--method", "rawx"], "unknown method 'rawx'")
    assert not out.exists()


def test_mask_metric_on_data_without_masks_fails(tiny_checkpoint, tmp_path, mlflow_uri, cli_error):
    tree = tmp_path / "tree"
    for cls in ("a", "b"):
        (tree / cls).mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 80, np.uint8)).save(tree / cls / "x.png")
    out = tmp_path / "o"
    cli_error(["evaluate", "saliency", "--model", str(tiny_checkpoint), "--data", str(tree), "--metrics",
               "ad,pointing", "--method", "raw", "--out", str(out)], "no foreground masks", "pointing",
              protect=[tree])
    assert not (out / "results.json").exists()


def test_labels_missing_for_ad_fails(tiny_checkpoint, tmp_path, mlflow_uri, cli_error):
    from mimlab.data.sources import encode_png

    img = encode_png(np.full((32, 32, 3), 80, np.uint8))
    shard = tmp_path / "shards"
    shard.mkdir()
    table = pa.table(
        {
            "image": pa.array([img, img], pa.binary()),
            "label": pa.array([None, None], pa.int64()),
            "path": pa.array(["u0.png", "u1.png"]),
        }
    )
    pq.write_table(table, shard / "part-00000.parquet")
    out = tmp_path / "o"
    cli_error(["evaluate", "saliency", "--model", str(tiny_checkpoint), "--data", str(shard), "--metrics", "ad,ai",
               "--method", "raw", "--out", str(out)], "u0.png", "has no label", protect=[shard])
    assert not (out / "results.json").exists()


def test_nan_or_misshapen_maps_are_a_user_error(tiny_checkpoint):
    from mimlab.data.sources import load_records

    evaluator = SaliencyEvaluator(
        model=str(tiny_checkpoint),
        weights=None,
        img_size=None,
        methods=["raw"],
        metrics=["ad", "deletion"],
        save_maps=False,
    )
    records = load_records(None, limit=2)
    evaluator.explainers["raw"] = lambda images, targets: torch.full((2, 32, 32), float("nan"))
    with pytest.raises(UserError, match="method 'raw': saliency maps contain NaN"):
        evaluator.run(records)
    evaluator.explainers["raw"] = lambda images, targets: torch.zeros(2, 16, 16)
    with pytest.raises(UserError, match="shape"):
        evaluator.run(records)


def test_evaluator_explains_the_gt_class_by_default_and_predicted_on_request(tiny_checkpoint):
    from mimlab.data.sources import load_records

    records = load_records(None, limit=6)
    outs = {}
    for target in ("gt", "predicted", 0):
        evaluator = SaliencyEvaluator(model=str(tiny_checkpoint), weights=None, img_size=None,
                                      methods=["gradcam", "raw"], metrics=["ad"], save_maps=True, target=target)
        outs[target] = evaluator.run(records)
    labels = [r.label for r in records]
    predicted = outs["gt"]["predicted"]
    assert outs["gt"]["targets"] == labels and outs["predicted"]["targets"] == predicted
    assert outs[0]["targets"] == [0] * 6
    wrong = [i for i in range(6) if labels[i] != predicted[i]]
    assert wrong  # a random 10-class head is wrong on most images
    gt, pred = outs["gt"]["maps"]["gradcam"], outs["predicted"]["maps"]["gradcam"]
    assert max(np.abs(gt[i] - pred[i]).max() for i in wrong) > 0.1
    right = [i for i in range(6) if i not in wrong]
    assert all(np.array_equal(gt[i], pred[i]) for i in right)
    assert np.array_equal(outs["gt"]["maps"]["raw"], outs["predicted"]["maps"]["raw"])  # raw takes no class


def test_bgr_legacy_feeds_the_channels_swapped(tiny_checkpoint):
    from mimlab.data.sources import load_records
    from mimlab.runtime.saliency import prepare_batch

    records = load_records(None, limit=2)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    rgb, _, _ = prepare_batch(records, 32, mean, std)
    bgr, _, _ = prepare_batch(records, 32, mean, std, "bgr_legacy")
    m, s = torch.tensor(mean)[None, :, None, None], torch.tensor(std)[None, :, None, None]
    # pixel space: the legacy input's channel c is the RGB input's channel 2 - c
    torch.testing.assert_close(bgr * s + m, (rgb * s + m).flip(1))


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--target", "gtt"], ("--target must be gt, predicted or a class index", "gtt")),
        (["--target", "99"], ("--target 99 is outside 0..9",)),
        (["--channel-order", "bgr"], ("--channel-order must be one of rgb, bgr_legacy", "bgr")),
    ],
)
def test_bad_target_and_channel_order_are_one_error_line(tiny_checkpoint, tmp_path, cli_error, extra, expected):
    cli_error(["evaluate", "saliency", "--model", str(tiny_checkpoint), "--limit", "2",
               "--out", str(tmp_path / "o"), *extra], *expected)
    assert not (tmp_path / "o" / "results.json").exists()


def test_gt_target_on_unlabelled_data_names_the_image(tiny_checkpoint, tmp_path, cli_error):
    from mimlab.data.sources import encode_png

    img = encode_png(np.full((32, 32, 3), 80, np.uint8))
    shard = tmp_path / "shards"
    shard.mkdir()
    pq.write_table(pa.table({"image": pa.array([img], pa.binary()), "label": pa.array([None], pa.int64()),
                             "path": pa.array(["u0.png"])}), shard / "part-00000.parquet")
    cli_error(["evaluate", "saliency", "--model", str(tiny_checkpoint), "--data", str(shard), "--metrics",
               "deletion", "--method", "gradcam", "--out", str(tmp_path / "o")], "u0.png", "--target gt")


def test_gt_target_needs_no_labels_when_no_method_takes_a_class(tiny_checkpoint, tmp_path):
    from mimlab.data.sources import encode_png, load_records

    img = encode_png(np.full((32, 32, 3), 80, np.uint8))
    shard = tmp_path / "shards"
    shard.mkdir()
    pq.write_table(pa.table({"image": pa.array([img], pa.binary()), "label": pa.array([None], pa.int64()),
                             "path": pa.array(["u0.png"])}), shard / "part-00000.parquet")
    evaluator = SaliencyEvaluator(model=str(tiny_checkpoint), weights=None, img_size=None, methods=["raw"],
                                  metrics=["deletion"], save_maps=False, target="gt")
    out = evaluator.run(load_records(str(shard)))
    assert len(out["values"]["raw"]["deletion"]) == 1
