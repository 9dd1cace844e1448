"""The pure helpers around the one train function: batch_classes, k-NN carry-forward, safe resume by name, paths."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mimlab.errors import UserError
from mimlab.pretrain.loop import BatchClasses, carry_forward


def test_batch_classes_is_the_mean_number_of_distinct_labels_per_batch():
    counter = BatchClasses()
    batches = [{"label": torch.tensor([0, 0, 1, 1])}, {"label": np.array([3, 3, 3, 3])},
               {"label": torch.tensor([0, 1, 2, 3])}, {"label": torch.tensor([5, 6, 7, 8])}]
    for b in batches:
        assert counter.see(b) is b   # passes batches through unchanged
    # by hand: 2, 1, 4 distinct labels in the first three batches -> 7/3; the fourth is past the last step
    assert counter.mean(3) == pytest.approx(7 / 3)
    assert counter.mean() == pytest.approx(11 / 4)


def test_batch_classes_skips_unlabelled_batches():
    counter = BatchClasses()
    counter.see({"label": torch.tensor([-1, -1, 2])})
    counter.see({"image": torch.zeros(2)})
    assert counter.mean() is None


def test_carry_forward_fills_knn_from_history_but_returns_only_what_was_measured():
    history = {"knn_top1_init": 10.0, "last": {"knn_top1": 30.0}}
    metrics = {"loss": 1.5}
    measured = carry_forward(metrics, history)
    assert measured == {"loss": 1.5}
    assert metrics == {"loss": 1.5, "knn_top1_init": 10.0, "knn_top1": 30.0}
    fresh = {"loss": 1.0, "knn_top1": 40.0}
    carry_forward(fresh, history)
    assert fresh["knn_top1"] == 40.0   # a measured value is never overwritten


def test_same_name_with_another_config_is_refused_naming_the_keys(tmp_path):
    from mimlab.runtime.train import check_same_run

    from .helpers import micro_cfg

    first = {"cfg": micro_cfg().resolved(), "data": "/d"}
    check_same_run(str(tmp_path), "run", first)        # fresh: writes the fingerprint
    assert (tmp_path / "run" / "mimlab-run.json").is_file()
    check_same_run(str(tmp_path), "run", first)        # same config: fine
    more = {"cfg": micro_cfg("optim.epochs=5").resolved(), "data": "/d"}
    check_same_run(str(tmp_path), "run", more)         # more epochs: the one allowed change
    workers = {"cfg": micro_cfg("train.num_workers=3").resolved(), "data": "/d"}
    check_same_run(str(tmp_path), "run", workers)      # how it runs is not what it computes
    changed = {"cfg": micro_cfg(strategy="random").resolved(), "data": "/e"}
    with pytest.raises(UserError, match=r"run 'run' under .* another config \(differs in: "
                                        r"masking.strategy, data\); use a new --name, or delete .*run to start"):
        check_same_run(str(tmp_path), "run", changed)
    fewer = {"cfg": micro_cfg("optim.epochs=1").resolved(), "data": "/d"}
    with pytest.raises(UserError, match=r"optim.epochs \(only more epochs may be added\)"):
        check_same_run(str(tmp_path), "run", fewer)


def test_relative_paths_resolve_against_the_callers_folder(tmp_path, monkeypatch):
    from mimlab.runtime.tracking import artifact_root, tracking_uri
    from mimlab.runtime.train import local_path

    monkeypatch.chdir(tmp_path)
    assert local_path("data/x") == str(tmp_path / "data" / "x")
    assert local_path("s3://bucket/x") == "s3://bucket/x" and local_path(None) is None
    assert tracking_uri("sqlite:///rel.db") == f"sqlite:///{tmp_path / 'rel.db'}"
    assert tracking_uri(f"sqlite:///{tmp_path}/abs.db") == f"sqlite:///{tmp_path}/abs.db"
    assert artifact_root(f"sqlite:///{tmp_path}/abs.db") == (tmp_path / "mlruns").as_uri()


def test_checkpoint_uri_keeps_the_scheme():
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    from mimlab.runtime.train import checkpoint_uri

    s3 = pafs.S3FileSystem(anonymous=True, region="us-east-1")
    assert checkpoint_uri(Checkpoint("bucket/sweep/ckpt", filesystem=s3)) == "s3://bucket/sweep/ckpt"
    assert checkpoint_uri(Checkpoint("/tmp/x", filesystem=pafs.LocalFileSystem())) == "/tmp/x"
    assert Path(checkpoint_uri(Checkpoint("/tmp/y"))) == Path("/tmp/y")
