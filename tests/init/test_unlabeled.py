"""Unlabeled images: `data shard --unlabeled`, null labels in shards, pretraining without labels, and the one-line
refusal of k-NN / linear probing."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from mimlab.cli import app
from mimlab.data.sources import load_records
from mimlab.runtime.train import run_pretrain


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def tree(tmp_path):
    """40 images: 24 flat at the top, 16 two folders deep, a dot-file to ignore."""
    root = tmp_path / "photos"
    (root / "2024" / "june").mkdir(parents=True)
    for i in range(24):
        (root / f"img_{i:02d}.png").write_bytes(_png(i))
    for i in range(16):
        (root / "2024" / "june" / f"p{i:02d}.png").write_bytes(_png(100 + i))
    (root / ".DS_Store").write_bytes(b"junk")
    return root


@pytest.fixture()
def shards(tree, tmp_path):
    out = tmp_path / "shards"
    res = CliRunner().invoke(app, ["data", "shard", str(tree), str(out), "--unlabeled", "--shard-size", "16"])
    assert res.exit_code == 0, res.output
    assert "40 images, unlabeled → 3 shards" in res.output
    return out


def test_shard_unlabeled_takes_every_image_of_the_tree_with_null_labels(shards, tree):
    tables = [pq.read_table(p) for p in sorted(shards.glob("part-*.parquet"))]
    table = pa.concat_tables(tables)
    assert table.num_rows == 40 and table.column("label").null_count == 40
    paths = table.column("path").to_pylist()
    # rows in the seeded random order of `data shard` (default); every image once
    assert len(set(paths)) == 40 and sorted(paths)[0] == "2024/june/p00.png" and "img_23.png" in paths
    assert table.column("image").to_pylist()[paths.index("img_05.png")] == (tree / "img_05.png").read_bytes()
    records = load_records(str(shards))
    assert len(records) == 40 and all(r.label is None for r in records)
    info = CliRunner().invoke(app, ["data", "info", str(shards)])
    assert info.exit_code == 0, info.output
    assert "classes: 0  unlabeled: 40" in info.output


def test_shard_unlabeled_refuses_a_non_image_file_and_per_class_limit(tree, tmp_path, cli_error):
    cli_error(["data", "shard", tree, tmp_path / "o1", "--unlabeled", "--per-class-limit", "3"],
              "--per-class-limit", "--unlabeled")
    (tree / "2024" / "notes.txt").write_text("hello")
    cli_error(["data", "shard", tree, tmp_path / "o2", "--unlabeled"], "notes.txt", "is not an image file",
              protect=[tree])


def test_an_all_null_label_column_of_another_tool_is_read_as_unlabeled(tmp_path):
    table = pa.table({"image": pa.array([_png(1), _png(2)], pa.binary()), "label": pa.nulls(2),
                      "path": pa.array(["a.png", "b.png"])})
    assert table.schema.field("label").type == pa.null()
    (tmp_path / "s").mkdir()
    pq.write_table(table, tmp_path / "s" / "part-00000.parquet")
    assert [r.label for r in load_records(str(tmp_path / "s"))] == [None, None]


def test_pretraining_on_unlabeled_shards_runs_and_skips_the_online_knn_in_one_line(shards, micro_cfg, tmp_path,
                                                                                     capsys, mlflow_uri):
    res = run_pretrain(micro_cfg("eval.knn_every=1"), data=str(shards), name="run", storage_path=str(tmp_path),
                       workers=0)
    err = capsys.readouterr().err
    assert err.count("note: online k-NN skipped") == 1 and "without labels" in err
    assert res.metrics["epoch"] == 0 and np.isfinite(res.metrics["loss"])
    assert "knn_top1" not in res.metrics and "knn_top1_init" not in res.metrics
    assert (tmp_path / "run" / "checkpoint-0000" / "teacher_backbone.safetensors").is_file()


@pytest.mark.parametrize("command", [["knn"], ["linear", "--epochs", "1"]])
def test_knn_and_linear_probe_on_unlabeled_data_are_one_line(command, shards, cli_error):
    cli_error(["eval", *command, "resnet18", "--train", shards, "--val", shards, "--workers", "0", "--no-mlflow"],
              str(shards), "without labels", "need labelled data", protect=[shards])
