from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mimlab.data.pipeline import eval_dataset, multicrop_dataset, read_shards, skipped_images
from mimlab.data.schema import records_table
from mimlab.data.transforms import MultiCropConfig
from mimlab.errors import UserError

CFG = MultiCropConfig(global_crops=3, global_size=16, local_crops=2, local_size=8)


def _epoch(ds) -> tuple[dict[str, list[np.ndarray]], list[int]]:
    crops: dict[str, list[np.ndarray]] = {}
    labels: list[int] = []
    for batch in ds.iter_batches(batch_size=16, batch_format="numpy"):
        for name, value in batch.items():
            if name == "label":
                labels.extend(value.tolist())
            else:
                crops.setdefault(name, []).extend(value)
    return crops, labels


def _digests(arrays) -> set[str]:
    return {hashlib.sha1(a.tobytes()).hexdigest() for a in arrays}


def test_multicrop_shapes_and_per_epoch_redraw(ray_local, small_synth):
    ds = multicrop_dataset(small_synth, CFG, split="train", batch_size=16)
    first, labels = _epoch(ds)
    assert sorted(first) == ["global_0", "global_1", "global_2", "local_0", "local_1"]
    assert sorted(labels) == sorted([i % 4 for i in range(48)])
    for name, arrays in first.items():
        side = 16 if name.startswith("global") else 8
        assert len(arrays) == 48
        assert all(a.shape == (side, side, 3) and a.dtype == np.uint8 for a in arrays)
    second, _ = _epoch(ds)  # a second pass over the same (lazy) dataset draws new crops
    assert len(_digests(first["global_0"]) & _digests(second["global_0"])) < 5


def test_multicrop_limit_is_exact_and_redrawn_per_pass(ray_local, small_synth):
    ds = multicrop_dataset(small_synth, CFG, split="train", batch_size=16, limit=20)
    first, labels = _epoch(ds)
    assert len(labels) == 20 and all(len(a) == 20 for a in first.values())
    second, _ = _epoch(ds)
    assert len(_digests(first["global_0"]) & _digests(second["global_0"])) < 5


def test_seeded_pipeline_repeats_and_plain_path_equals_file_url(ray_local, small_synth):
    a, _ = _epoch(multicrop_dataset(small_synth / "train", CFG, seed=1, batch_size=16))
    b, _ = _epoch(multicrop_dataset(f"file://{small_synth}/train", CFG, seed=1, batch_size=16, workers=1))
    assert _digests(a["local_1"]) == _digests(b["local_1"])
    rows_url = read_shards(f"file://{small_synth}", split="val").take_all()
    expected = pq.read_table(small_synth / "val" / "part-00000.parquet").to_pylist()  # plain pyarrow read
    assert sorted((r["path"], r["label"], r["image"], r["mask"]) for r in rows_url) == sorted(
        (r["path"], r["label"], r["image"], r["mask"]) for r in expected)


def test_corrupt_images_are_skipped_and_counted(ray_local, small_synth, tmp_path):
    good = pq.read_table(small_synth / "val" / "part-00000.parquet").slice(0, 3)
    bad = records_table([b"\xff\xd8 truncated jpeg", b"hello"], [0, 1], ["bad/0.jpg", "bad/1.jpg"])
    pq.write_table(pa.concat_tables([good.drop(["mask"]), bad]), tmp_path / "part-00000.parquet")
    ds = multicrop_dataset(tmp_path, CFG, batch_size=8)
    crops, labels = _epoch(ds)
    assert len(labels) == 3 and all(len(v) == 3 for v in crops.values())
    assert skipped_images(ds.skip_tag) == 2
    ev = eval_dataset(tmp_path, 24)
    rows = ev.take_all()
    assert len(rows) == 3 and rows[0]["image"].shape == (24, 24, 3) and rows[0]["image"].dtype == np.uint8
    assert sorted(r["path"] for r in rows) == sorted(good.column("path").to_pylist())
    assert skipped_images(ev.skip_tag) == 2


def test_bad_inputs_fail_before_ray_work(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        read_shards(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty dataset"):
        multicrop_dataset(tmp_path / "empty")
    pq.write_table(pa.table({"image": pa.array([b"x"], pa.binary()), "label": pa.array([1], pa.int64())}),
                   tmp_path / "p.parquet")
    with pytest.raises(UserError, match="no 'path' column"):
        eval_dataset(tmp_path / "p.parquet", 8)


def test_root_with_splits_defaults_train_for_training_val_for_eval(small_synth):
    from mimlab.data.pipeline import shard_files

    _, train = shard_files(small_synth)
    _, val = shard_files(f"file://{small_synth}", default_split="val")
    assert [f.rsplit("/", 2)[1] for f in train] == ["train"] * 3
    assert [f.rsplit("/", 2)[1] for f in val] == ["val"]
