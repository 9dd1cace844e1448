"""The online k-NN monitor's bank and queries: seeded random samples, streamed (only sampled rows decoded)."""

from __future__ import annotations

import pyarrow.parquet as pq

import mimlab.data.sources as sources
from mimlab.config.pretrain import load_pretrain_config
from mimlab.pretrain.monitor import OnlineMonitor


def _cfg(*overrides: str):
    return load_pretrain_config(None, ["crops.global_size=8", "model.kwargs.patch_size=4", "eval.knn_k=5", "eval.probe_images=2", *overrides])


def test_bank_of_class_sorted_shards_covers_every_class_and_decodes_only_the_sample(class_sorted_shards,
                                                                                    monkeypatch):
    decoded = []
    real = sources.decode_rgb
    monkeypatch.setattr(sources, "decode_rgb", lambda data: decoded.append(1) or real(data))
    mon = OnlineMonitor(_cfg("eval.knn_train_limit=200", "eval.knn_val_limit=40"), str(class_sorted_shards))
    assert mon.bank.shape == (200, 8, 8, 3) and mon.queries.shape == (40, 8, 8, 3) and len(decoded) == 240
    # the first 200 rows of these shards are all class 0; a uniform sample of 200 of 3,000 misses one of the 10
    # classes with probability <= 10 * 0.9^200 = 7e-9
    assert sorted(set(mon.bank_y.tolist())) == list(range(10))
    assert set(mon.bank_paths).isdisjoint(mon.query_paths)  # one folder: disjoint bank and held-out queries
    assert mon.labelled and mon.probes.shape == (2, 8, 8, 3)
    again = OnlineMonitor(_cfg("eval.knn_train_limit=200", "eval.knn_val_limit=40"), str(class_sorted_shards))
    assert again.bank_paths == mon.bank_paths  # seeded by train.seed
    other = OnlineMonitor(_cfg("eval.knn_train_limit=200", "eval.knn_val_limit=40", "train.seed=1"),
                          str(class_sorted_shards))
    assert other.bank_paths != mon.bank_paths


def test_root_with_splits_gives_train_bank_and_val_queries(small_synth):
    mon = OnlineMonitor(_cfg("eval.knn_train_limit=30", "eval.knn_val_limit=100"), str(small_synth))
    assert len(mon.bank_paths) == 30 and len(mon.query_paths) == 12  # val holds 12 rows: all of them
    train = {p for f in (small_synth / "train").glob("part-*.parquet")
             for p in pq.read_table(f, columns=["path"]).column("path").to_pylist()}
    assert set(mon.bank_paths) <= train and set(mon.query_paths).isdisjoint(train)
