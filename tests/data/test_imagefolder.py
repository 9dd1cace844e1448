from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mimlab.cli import app
from mimlab.data.imagefolder import shard_imagefolder
from mimlab.data.info import dataset_info
from mimlab.errors import UserError



def _rows(folder) -> list[dict]:
    out = []
    for f in sorted(folder.glob("part-*.parquet")):
        out.extend(pq.read_table(f, columns=["label", "path"]).to_pylist())
    return out


def test_per_class_limit_keeps_first_k_sorted(tmp_path, make_imagefolder):
    make_imagefolder(tmp_path / "src", {"b": 5, "a": 4, "c": 2})
    summary = shard_imagefolder(tmp_path / "src", tmp_path / "out", shard_size=3, per_class_limit=3)
    assert summary["images"] == 8 and summary["shards"] == 3 and summary["classes"] == ["a", "b", "c"]
    assert _rows(tmp_path / "out") == [
        {"label": 0, "path": "a/img_000.jpg"}, {"label": 0, "path": "a/img_001.jpg"},
        {"label": 0, "path": "a/img_002.jpg"}, {"label": 1, "path": "b/img_000.jpg"},
        {"label": 1, "path": "b/img_001.jpg"}, {"label": 1, "path": "b/img_002.jpg"},
        {"label": 2, "path": "c/img_000.jpg"}, {"label": 2, "path": "c/img_001.jpg"}]


def test_resumable_and_resize(tmp_path, make_imagefolder):
    make_imagefolder(tmp_path / "src", {"a": 3, "b": 3})
    out = tmp_path / "out"
    first = shard_imagefolder(tmp_path / "src", f"file://{out}", shard_size=2, resize=8)
    assert (first["written"], first["skipped"]) == (3, 0)
    (out / "part-00001.parquet").unlink()
    second = shard_imagefolder(tmp_path / "src", out, shard_size=2, resize=8)
    assert (second["written"], second["skipped"]) == (1, 2)
    info = dataset_info(out)["splits"]["."]
    assert info["images"] == 6 and info["classes"] == 2
    assert info["sizes"] == {"8x11": 6}  # 12x16 → shorter side 8, longer round(16 * 8 / 12) = round(10.67) = 11
    with pytest.raises(UserError, match="different run"):
        shard_imagefolder(tmp_path / "src", out, shard_size=3)


def test_undecodable_image_is_skipped_and_counted(tmp_path, make_imagefolder):
    """Issue 14: a bad image in a dataset is skipped and counted (its shard holds the others), not a fatal error."""
    import pyarrow.parquet as pq

    make_imagefolder(tmp_path / "src", {"a": 2, "b": 2})
    (tmp_path / "src" / "b" / "img_001.jpg").write_bytes(b"not a jpeg")
    summary = shard_imagefolder(tmp_path / "src", tmp_path / "out", shard_size=2)
    assert [p.rsplit("/", 1)[-1] for p in summary["bad_images"]] == ["img_001.jpg"]
    assert summary["images"] == 3
    assert [pq.read_table(tmp_path / "out" / n).num_rows for n in ("part-00000.parquet", "part-00001.parquet")] == [2, 1]


def test_cli_shard_info_and_errors(tmp_path, make_imagefolder):
    make_imagefolder(tmp_path / "src", {"a": 2, "b": 1})
    runner = CliRunner()
    res = runner.invoke(app, ["data", "shard", str(tmp_path / "src"), str(tmp_path / "out"), "--per-class-limit", "1"])
    assert res.exit_code == 0, res.output
    assert "2 images, 2 classes" in res.output
    res = runner.invoke(app, ["data", "info", str(tmp_path / "out")])
    assert res.exit_code == 0 and "images: 2" in res.output
    (tmp_path / "src" / "a" / "readme.txt").write_text("x")
    for args, needle in ([["data", "shard", str(tmp_path / "src"), str(tmp_path / "o2")], "not an image file"],
                         [["data", "info", str(tmp_path / "missing")], "no such file or folder"],
                         [["data", "info", "foo://bucket/x"], "unknown URL scheme"],
                         [["data", "synth", str(tmp_path / "s"), "--classes", "20"], "--classes"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert needle in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1


def test_cli_synth_twice_identical(tmp_path):
    runner = CliRunner()
    for name in ("a", "b"):
        res = runner.invoke(app, ["data", "synth", str(tmp_path / name), "--num-images", "20", "--seed", "5"])
        assert res.exit_code == 0, res.output
    for f in ("train/part-00000.parquet", "val/part-00000.parquet"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_info_counts_all_labels_but_samples_sizes(small_synth):
    info = dataset_info(small_synth, sample=5)["splits"]
    assert sorted(info) == ["train", "val"]
    assert info["train"]["images"] == 48 and info["train"]["per_class"] == {0: 12, 1: 12, 2: 12, 3: 12}
    assert info["train"]["sizes"] == {"32x32": 5} and info["train"]["sized"] == 5
    assert info["val"]["class_names"] == ["circle", "square", "triangle", "star"] and info["val"]["with_mask"]
