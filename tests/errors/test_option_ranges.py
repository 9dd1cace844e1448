"""Option values out of range: every command group answers with one error line naming the option and the range."""

from __future__ import annotations

import pytest

# (id, argv with {ckpt}/{shards}/{img}/{recipe}/{tmp} placeholders, substrings of the error line)
CASES = [
    ("synth-negative-count", ["data", "synth", "{tmp}/s", "--num-images", "-3"], ["--num-images", ">= 1", "-3"]),
    ("synth-zero-size", ["data", "synth", "{tmp}/s", "--size", "0"], ["--size", ">= 8"]),
    ("shard-negative-size", ["data", "shard", "{tmp}", "{tmp}/o", "--shard-size", "-1"], ["--shard-size", ">= 1"]),
    ("shard-zero-resize", ["data", "shard", "{tmp}", "{tmp}/o", "--resize", "0"], ["--resize", ">= 1"]),
    ("info-negative-sample", ["data", "info", "{shards}", "--sample", "-5"], ["--sample", ">= 0", "-5"]),
    ("explain-zero-img-size", ["explain", "{img}", "-m", "{ckpt}", "--img-size", "0", "--out", "{tmp}/o"],
     ["--img-size", "0"]),
    ("explain-img-size-below-patch", ["explain", "{img}", "-m", "{ckpt}", "--img-size", "4", "--out", "{tmp}/o"],
     ["--img-size", "4", "patch", "8"]),
    ("saliency-negative-limit", ["evaluate", "saliency", "--model", "{ckpt}", "--data", "{shards}", "--limit", "-2",
                                 "--out", "{tmp}/o"], ["--limit", ">= 1", "-2"]),
    ("saliency-negative-workers", ["evaluate", "saliency", "--model", "{ckpt}", "--data", "{shards}", "--workers",
                                   "-1", "--out", "{tmp}/o"], ["--workers", "-1"]),
    ("saliency-zero-batch", ["evaluate", "saliency", "--model", "{ckpt}", "--data", "{shards}", "--batch-size", "0",
                             "--out", "{tmp}/o"], ["--batch-size", ">= 1"]),
    ("saliency-img-size-below-patch", ["evaluate", "saliency", "--model", "{ckpt}", "--data", "{shards}",
                                       "--img-size", "4", "--out", "{tmp}/o"], ["--img-size", "4", "patch"]),
    ("study-negative-limit", ["evaluate", "study", "{study}", "--limit", "-1", "--out", "{tmp}/o"],
     ["--limit", ">= 1", "-1"]),
    ("study-negative-workers", ["evaluate", "study", "{study}", "--workers", "-4", "--out", "{tmp}/o"],
     ["--workers", "-4"]),
    ("knn-negative-limit", ["eval", "knn", "{ckpt}", "--train", "{shards}/train", "--val", "{shards}/val",
                            "--limit", "-1", "--no-mlflow"], ["--limit", ">= 1", "-1"]),
    ("knn-zero-temperature", ["eval", "knn", "{ckpt}", "--train", "{shards}/train", "--val", "{shards}/val",
                              "--temperature", "0", "--no-mlflow"], ["--temperature", "> 0"]),
    ("knn-negative-workers", ["eval", "knn", "{ckpt}", "--workers", "-1", "--no-mlflow"], ["--workers", "-1"]),
    ("knn-zero-k", ["eval", "knn", "{ckpt}", "--k", "0", "--no-mlflow"], ["--k", "positive"]),
    ("linear-negative-epochs", ["eval", "linear", "{ckpt}", "--train", "{shards}/train", "--val", "{shards}/val",
                                "--epochs", "-1", "--no-mlflow"], ["--epochs", ">= 1", "-1"]),
    ("linear-zero-lr", ["eval", "linear", "{ckpt}", "--lr", "0", "--no-mlflow"], ["--lr", "> 0"]),
    ("linear-zero-batch", ["eval", "linear", "{ckpt}", "--batch-size", "0", "--no-mlflow"], ["--batch-size", ">= 1"]),
    ("pretrain-negative-workers", ["pretrain", "{recipe}", "--workers", "-1", "--storage-path", "{tmp}/r"],
     ["--workers", ">= 0", "-1"]),
    ("pretrain-negative-epochs", ["pretrain", "{recipe}", "--epochs", "-2", "--storage-path", "{tmp}/r"],
     ["--epochs", ">= 1", "-2"]),
    ("pretrain-negative-gpus", ["pretrain", "{recipe}", "--gpus-per-worker", "-1", "--storage-path", "{tmp}/r"],
     ["--gpus-per-worker", "-1"]),
    ("pretrain-zero-gpus-with-use-gpu", ["pretrain", "{recipe}", "--set", "train.use_gpu=true", "--gpus-per-worker",
                                         "0", "--storage-path", "{tmp}/r"], ["--gpus-per-worker", "0", "> 0"]),
    ("pretrain-image-size-below-patch", ["pretrain", "{recipe}", "--set", "model.kwargs.patch_size=32", "--storage-path",
                                         "{tmp}/r"], ["crops.global_size", "16", "patch"]),
    ("tune-zero-seeds", ["tune", "tiny-sweep", "--seeds", "0"], ["--seeds", ">= 1"]),
    ("tune-zero-max-concurrent", ["tune", "tiny-sweep", "--max-concurrent", "0"], ["--max-concurrent", ">= 1", "0"]),
    ("tune-negative-gpus", ["tune", "tiny-sweep", "--gpus-per-trial", "-1"], ["--gpus-per-trial", "-1"]),
    ("tune-zero-cpus", ["tune", "tiny-sweep", "--cpus-per-trial", "0"], ["--cpus-per-trial", "> 0"]),
    ("tune-zero-workers-per-trial", ["tune", "tiny-sweep", "--workers-per-trial", "0"],
     ["--workers-per-trial", ">= 1"]),
]

STUDY = """\
name: tiny
data: {data}
limit: 4
models:
  - {{model: {ckpt}, label: tiny}}
methods: [raw]
metrics: [ad]
"""


@pytest.mark.parametrize("argv,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_out_of_range_option_is_one_error_line(argv, expected, cli_error, ckpt, shards, image_file, recipe,
                                               tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("MIMLAB_EXPERIMENTS_DIR", str(Path(__file__).parents[1] / "tune" / "experiments"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(data=shards / "val", ckpt=ckpt))
    subs = {"ckpt": ckpt, "shards": shards, "img": image_file, "recipe": recipe, "tmp": tmp_path, "study": study}
    args = [a.format(**subs) for a in argv]
    cli_error(args, *expected, protect=[shards, ckpt, image_file, recipe, study], timeout=60)


def test_tiny_knn_temperature_votes_for_the_nearest_neighbour_instead_of_tying():
    """exp(sim/T) overflows to inf for T=1e-6 (every class ties); the vote must still rank by similarity."""
    import torch

    from mimlab.evaluation.knn import vote

    sims = torch.tensor([[0.9, 0.8, 0.7], [0.95, 0.5, 0.4]])  # sorted decreasing, as topk_neighbours returns
    labels = torch.tensor([[1, 0, 0], [2, 1, 1]])
    ranked = vote(sims, labels, [3], num_classes=3, temperature=1e-6)
    # independent expectation: as T -> 0 the weight of the nearest neighbour dominates any sum of the others
    assert ranked[3][:, 0].tolist() == [1, 2]
