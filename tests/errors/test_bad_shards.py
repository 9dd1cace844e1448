"""Shards with missing columns, wrong column types or null labels: one error line naming the shard and column, in
every command that reads shards (null labels are legal only where no label is needed, e.g. pretraining)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from error_inputs import png_bytes, write_table

TUNE_EXPERIMENTS = Path(__file__).parents[1] / "tune" / "experiments"


def _columns(kind: str) -> dict:
    n = 8
    images = pa.array([png_bytes(i) for i in range(n)], pa.binary())
    labels = pa.array([i % 2 for i in range(n)], pa.int64())
    paths = pa.array([f"p{i}.png" for i in range(n)], pa.string())
    if kind == "missing-image":
        return {"label": labels, "path": paths}
    if kind == "missing-label":
        return {"image": images, "path": paths}
    if kind == "label-is-string":
        return {"image": images, "label": pa.array([str(i % 2) for i in range(n)]), "path": paths}
    if kind == "image-is-int":
        return {"image": pa.array(list(range(n)), pa.int64()), "label": labels, "path": paths}
    if kind == "null-labels":
        return {"image": images, "label": pa.array([None] * n, pa.int64()), "path": paths}
    raise AssertionError(kind)


KINDS = {
    "missing-image": ["'image'", "column"],
    "missing-label": ["'label'", "column"],
    "label-is-string": ["'label'", "int64"],
    "image-is-int": ["'image'", "binary"],
    "null-labels": ["without labels"],
}

COMMANDS = {
    "data-info": (["data", "info", "{bad}/val"], {"null-labels"}),
    "knn-in-process": (["eval", "knn", "{ckpt}", "--train", "{bad}/train", "--val", "{bad}/val", "--k", "2",
                        "--workers", "0", "--no-mlflow"], set()),
    "knn-ray-data": (["eval", "knn", "{ckpt}", "--train", "{bad}/train", "--val", "{bad}/val", "--k", "2",
                      "--workers", "1", "--no-mlflow"], set()),
    "linear": (["eval", "linear", "{ckpt}", "--train", "{bad}/train", "--val", "{bad}/val", "--epochs", "1",
                "--workers", "0", "--no-mlflow"], set()),
    "saliency": (["evaluate", "saliency", "--model", "{ckpt}", "--data", "{bad}/val", "--out", "{tmp}/o",
                  "--limit", "2"], {"null-labels"}),
    "pretrain": (["pretrain", "{recipe}", "--data", "{bad}/train", "--workers", "0", "--storage-path",
                  "{tmp}/runs"], {"null-labels"}),
    "tune": (["tune", "tiny-sweep", "--data", "{bad}"], set()),
}

CASES = [(c, k) for c, (_, legal) in COMMANDS.items() for k in KINDS if k not in legal]


@pytest.mark.parametrize("command,kind", CASES, ids=[f"{c}-{k}" for c, k in CASES])
def test_bad_shard_is_one_error_line(command, kind, cli_error, ckpt, recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("MIMLAB_EXPERIMENTS_DIR", str(TUNE_EXPERIMENTS))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    bad = tmp_path / "bad"
    for split in ("train", "val"):
        write_table(bad / split / "part-00000.parquet", _columns(kind))
    argv = [a.format(bad=bad, ckpt=ckpt, recipe=recipe, tmp=tmp_path) for a in COMMANDS[command][0]]
    cli_error(argv, *KINDS[kind], protect=[bad, ckpt, recipe], timeout=60)
