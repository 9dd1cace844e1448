"""Epoch plans, row reads and batch mixing (pure parts of mimlab.data.sample, then the Ray stream built on them)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mimlab.data.pipeline import epoch_rows, multicrop_dataset
from mimlab.data.sample import MIX_FILES, ShardCounts, batch_classes, epoch_windows, read_rows, row_counts
from mimlab.data.transforms import MultiCropConfig
from mimlab.errors import UserError

TEN_SORTED = [1000] * 10  # 10 class-sorted shards of 1,000 rows


def _rows(windows) -> list[tuple[int, int]]:
    return [(f, int(r)) for w in windows for f, rows in w for r in rows]


def test_whole_split_epoch_reads_every_row_once_and_every_window_mixes_all_files():
    windows = epoch_windows(TEN_SORTED, None, seed=0, epoch=0, buffer=4096)
    rows = _rows(windows)
    assert len(rows) == 10_000 and len(set(rows)) == 10_000
    assert len(windows) == math.ceil(10_000 / 4096) == 3
    # passes = ceil(min(16, 10) * 1000 / 4096) = 3 parts per file, one per window: each window holds all 10 files
    assert all(len({f for f, _ in w}) == 10 for w in windows)
    assert all(320 <= len(rs) <= 350 for w in windows for _, rs in w)  # ~1/3 of each file per window


def test_a_file_is_read_by_at_most_passes_windows():
    counts = [1000] * 100  # 100k rows, 25 windows of 4096
    windows = epoch_windows(counts, None, seed=1, epoch=0, buffer=4096)
    passes = math.ceil(MIX_FILES * 1000 / 4096)  # = 4
    readers = {f: sum(any(g == f for g, _ in w) for w in windows) for f in range(100)}
    assert max(readers.values()) <= passes + 1  # a part may straddle a window boundary
    assert min(len({f for f, _ in w}) for w in windows) >= MIX_FILES - 1


def test_epochs_draw_fresh_reproducible_samples_of_the_whole_split():
    counts = [100] * 10
    seen: set[tuple[int, int]] = set()
    for epoch in range(5):
        rows = _rows(epoch_windows(counts, 100, seed=7, epoch=epoch, buffer=64))
        assert len(rows) == len(set(rows)) == 100  # without replacement inside an epoch
        assert rows == _rows(epoch_windows(counts, 100, seed=7, epoch=epoch, buffer=64))  # (seed, epoch) fixes it
        seen |= set(rows)
    # 5 independent uniform samples of 10 % of 1,000 rows: E[distinct] = 1000 (1 - 0.9^5) = 409.5, sd ~ 10;
    # the first rows of a read would give 100
    assert 370 <= len(seen) <= 450  # simulated: 20,000 runs gave 382..437
    other = set(_rows(epoch_windows(counts, 100, seed=8, epoch=0, buffer=64)))
    assert other != set(_rows(epoch_windows(counts, 100, seed=7, epoch=0, buffer=64)))


def test_shards_of_an_epoch_are_disjoint_and_cover_it():
    full = set(_rows(epoch_windows(TEN_SORTED, 1283, seed=0, epoch=3, buffer=500)))  # 3 windows: 428, 428, 427
    parts = [_rows(epoch_windows(TEN_SORTED, 1283, seed=0, epoch=3, buffer=500, shard=(r, 3))) for r in range(3)]
    assert all(set(a).isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1:])
    assert set().union(*map(set, parts)) == full
    assert sorted(map(len, parts)) == [427, 428, 428]  # 1283 = 3 x 427 + 2: equal to within one row
    two = [_rows(epoch_windows(TEN_SORTED, 1280, seed=0, epoch=3, buffer=500, shard=(r, 2))) for r in range(2)]
    assert list(map(len, two)) == [640, 640]  # lockstep DDP: every rank gets exactly steps x batch rows


def test_zero_buffer_keeps_files_whole_and_rows_in_file_order():
    windows = epoch_windows([5, 3, 4], None, seed=0, epoch=0, buffer=0)
    assert sorted(f for w in windows for f, _ in w) == [0, 1, 2] and all(len(w) == 1 for w in windows)
    assert all(list(rows) == list(range(n)) for w in windows for f, rows in w for n in [[5, 3, 4][f]])


def test_read_rows_takes_rows_across_row_groups(tmp_path):
    import fsspec

    table = pa.table({"x": np.arange(30), "s": [f"r{i}" for i in range(30)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=7)
    fs = fsspec.filesystem("file")
    (counts,) = row_counts(fs, [str(tmp_path / "t.parquet")])
    assert counts == ShardCounts(str(tmp_path / "t.parquet"), 30, (7, 7, 7, 7, 2))
    rows = np.array([0, 6, 7, 20, 29])
    assert read_rows(fs, counts, rows, ["x", "s"]).to_pylist() == table.take(pa.array(rows)).to_pylist()


def test_batch_classes_counts_distinct_labels_and_ignores_unlabelled():
    assert batch_classes([np.array([0, 0, 1]), [2, 2, 2], np.array([-1, -1])]) == 1.5  # (2 + 1) / 2
    assert math.isnan(batch_classes([[-1]]))


def test_stream_of_class_sorted_shards_gives_mixed_batches(ray_local, class_sorted_shards):
    cfg = MultiCropConfig(global_crops=1, global_size=8, local_crops=0, local_size=8)
    mixed = multicrop_dataset(class_sorted_shards, cfg, limit=640, epoch=0)
    batches = [b["label"] for b in mixed.iter_batches(batch_size=64, batch_format="numpy", drop_last=True)]
    assert len(batches) == 10
    # uniform draws: 10 * (1 - 0.9^64) = 9.99 distinct per 64; one-class shards read in order give 1-2
    assert batch_classes(batches) >= 8
    plain = multicrop_dataset(class_sorted_shards, cfg, limit=640, epoch=0, shuffle_buffer=0)
    assert batch_classes(b["label"] for b in plain.iter_batches(batch_size=64, batch_format="numpy")) <= 2.5


def test_epochs_of_the_stream_see_fresh_images(ray_local, class_sorted_shards):
    def paths(epoch: int) -> list[str]:
        ds = epoch_rows(class_sorted_shards, limit=128, epoch=epoch, sample_seed=5)
        return [p for b in ds.iter_batches(batch_size=64, batch_format="numpy") for p in b["path"].tolist()]

    epochs = [paths(e) for e in range(4)]
    assert all(len(p) == len(set(p)) == 128 for p in epochs)
    seen = set().union(*epochs)
    # 4 samples of 128 of 3,000 rows: E[distinct] = 3000 (1 - (1 - 128/3000)^4) = 480.3 (sd 5.1, min 457 in 20,000
    # simulated runs); the leading rows of one file would give 128
    assert len(seen) >= 450
    assert sorted(paths(2)) == sorted(epochs[2])  # (seed, epoch) fixes the sample
    assert all(len({p.split("/")[0] for p in e}) == 10 for e in epochs)  # every class in every epoch


def test_stream_rejects_bad_limit_and_buffer(small_synth):
    with pytest.raises(UserError, match="limit must be >= 1"):
        multicrop_dataset(small_synth, limit=0)
    with pytest.raises(UserError, match="shuffle_buffer must be >= 0"):
        multicrop_dataset(small_synth, shuffle_buffer=-1)
