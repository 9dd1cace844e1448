from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mimlab.data.fs import resolve
from mimlab.data.schema import records_table
from mimlab.data.shards import write_shard
from mimlab.data.sources import Record, decode_mask, decode_rgb, encode_png, load_records
from mimlab.errors import UserError



def test_shard_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(5 + i, 7, 3), dtype=np.uint8) for i in range(4)]
    masks = [img[..., 0] > 128 for img in images]
    table = records_table([encode_png(i) for i in images], [3, 1, 4, 1], [f"x/{i}.png" for i in range(4)],
                          [encode_png(m) for m in masks])
    fs, path = resolve(tmp_path / "s")
    fs.makedirs(path)
    write_shard(fs, f"{path}/part-00000.parquet", table)
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["part-00000.parquet"]  # no temp file left
    schema = pq.read_schema(tmp_path / "s" / "part-00000.parquet")
    assert schema.field("image").type == pa.binary() and schema.field("label").type == pa.int64()
    for url in (tmp_path / "s", f"file://{tmp_path / 's'}", tmp_path / "s" / "part-00000.parquet"):
        records = load_records(url)
        assert [r.label for r in records] == [3, 1, 4, 1]
        assert [r.path for r in records] == [f"x/{i}.png" for i in range(4)]
        for rec, img, mask in zip(records, images, masks):
            assert np.array_equal(decode_rgb(rec.image), img)
            assert np.array_equal(decode_mask(rec.mask), mask)
    assert len(load_records(tmp_path / "s", limit=2)) == 2


def test_shards_without_mask_column(tmp_path, png_bytes):
    table = records_table([png_bytes(np.zeros((2, 2, 3), np.uint8))], [0], ["a.png"])
    pq.write_table(table, tmp_path / "p.parquet")
    (rec,) = load_records(tmp_path)
    assert rec == Record(image=rec.image, label=0, path="a.png", mask=None)


def test_missing_column_named(tmp_path):
    pq.write_table(pa.table({"image": pa.array([b"x"], pa.binary()), "path": ["a"]}), tmp_path / "p.parquet")
    with pytest.raises(UserError, match="has no 'label' column"):
        load_records(tmp_path)


def test_imagefolder_labels_sorted_classes(tmp_path, make_imagefolder):
    make_imagefolder(tmp_path, {"zebra": 2, "ant": 3})
    records = load_records(tmp_path)
    assert [r.label for r in records] == [0, 0, 0, 1, 1]
    assert [r.path.rsplit("/", 2)[1:] for r in records][:2] == [["ant", "img_000.jpg"], ["ant", "img_001.jpg"]]
    assert decode_rgb(records[0].image).shape == (12, 16, 3)


def test_flat_imagenet_val_folder(tmp_path, png_bytes):
    img = png_bytes(np.zeros((4, 4, 3), np.uint8), "JPEG")
    for name in ("ILSVRC_ignored.txt", "n02000000_2.JPEG", "n01000000_9.JPEG", "n02000000_1.JPEG"):
        (tmp_path / name).write_bytes(img)
    records = load_records(tmp_path)
    assert [(r.path.rsplit("/", 1)[1], r.label) for r in records] == [
        ("n01000000_9.JPEG", 0), ("n02000000_1.JPEG", 1), ("n02000000_2.JPEG", 1)]


@pytest.mark.parametrize("make,needle", [
    (lambda p: None, "no such file or folder"),
    (lambda p: p.mkdir(), "empty dataset"),
    (lambda p: (p.mkdir(), (p / "cls").mkdir(), (p / "cls" / "notes.txt").write_text("hi")), "not an image file"),
])
def test_bad_sources(tmp_path, make, needle):
    target = tmp_path / "src"
    make(target)
    with pytest.raises(UserError, match=needle):
        load_records(target)


def test_unknown_split_and_scheme(small_synth):
    with pytest.raises(UserError, match="no 'test/' subfolder"):
        load_records(small_synth, split="test")
    with pytest.raises(UserError, match="unknown URL scheme 'nope://'"):
        load_records("nope://x")
    if not _has("s3fs"):
        with pytest.raises(UserError, match="needs s3fs"):
            resolve("s3://bucket/shards")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
