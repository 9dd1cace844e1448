from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mimlab.cli import app
from mimlab.data.imagefolder import shard_imagefolder
from mimlab.data.info import dataset_info
from mimlab.data.sample import batch_classes
from mimlab.errors import UserError



def _rows(folder) -> list[dict]:
    out = []
    for f in sorted(folder.glob("part-*.parquet")):
        out.extend(pq.read_table(f, columns=["label", "path"]).to_pylist())
    return out


def test_per_class_limit_keeps_first_k_sorted(tmp_path, make_imagefolder):
    make_imagefolder(tmp_path / "src", {"b": 5, "a": 4, "c": 2})
    summary = shard_imagefolder(tmp_path / "src", tmp_path / "out", shard_size=3, per_class_limit=3, seed=None)
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
    summary = shard_imagefolder(tmp_path / "src", tmp_path / "out", shard_size=2, seed=None)
    assert [p.rsplit("/", 1)[-1] for p in summary["bad_images"]] == ["img_001.jpg"]
    assert summary["images"] == 3
    assert [pq.read_table(tmp_path / "out" / n).num_rows for n in ("part-00000.parquet", "part-00001.parquet")] == [2, 1]


def test_cli_shard_then_info_counts_the_images(tmp_path, make_imagefolder):
    make_imagefolder(tmp_path / "src", {"a": 2, "b": 1})
    runner = CliRunner()
    res = runner.invoke(app, ["data", "shard", str(tmp_path / "src"), str(tmp_path / "out"), "--per-class-limit", "1"])
    assert res.exit_code == 0, res.output
    assert "2 images, 2 classes" in res.output
    res = runner.invoke(app, ["data", "info", str(tmp_path / "out")])
    assert res.exit_code == 0 and "images: 2" in res.output


def test_cli_shard_of_a_tree_with_a_non_image_is_one_error_line(tmp_path, make_imagefolder, cli_error):
    make_imagefolder(tmp_path / "src", {"a": 2, "b": 1})
    (tmp_path / "src" / "a" / "readme.txt").write_text("x")
    cli_error(["data", "shard", tmp_path / "src", tmp_path / "o2"], "readme.txt", "not an image file",
              protect=[tmp_path / "src"])


@pytest.mark.parametrize(("args", "expected"), [
    (["data", "info", "{tmp}/missing"], ["{tmp}/missing", "no such file or folder"]),
    (["data", "info", "foo://bucket/x"], ["foo://bucket/x", "unknown URL scheme"]),
    (["data", "synth", "{tmp}/s", "--classes", "20"], ["--classes"]),
])
def test_cli_info_and_synth_bad_input_is_one_error_line(tmp_path, args, expected, cli_error):
    fill = lambda items: [a.replace("{tmp}", str(tmp_path)) for a in items]  # noqa: E731
    cli_error(fill(args), *fill(expected))
    assert not (tmp_path / "s").exists()


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


SORTED_TREE = {f"c{k}": 40 for k in range(10)}  # 10 classes x 40 images, class folders sorted c0..c9


def _windows(labels: list[int], size: int = 64) -> list[list[int]]:
    return [labels[i:i + size] for i in range(0, len(labels) - size + 1, size)]


def test_shard_mixes_classes_by_default_and_no_shuffle_keeps_sorted_order(tmp_path, make_imagefolder):
    make_imagefolder(tmp_path / "src", SORTED_TREE, size=8)
    shard_imagefolder(tmp_path / "src", tmp_path / "mixed", shard_size=100)
    shard_imagefolder(tmp_path / "src", tmp_path / "sorted", shard_size=100, seed=None)
    mixed, ordered = _rows(tmp_path / "mixed"), _rows(tmp_path / "sorted")
    assert len(list((tmp_path / "mixed").glob("part-*.parquet"))) == 4
    # same rows, different order
    assert sorted(map(tuple, (r.values() for r in mixed))) == sorted(map(tuple, (r.values() for r in ordered)))
    labels = [r["label"] for r in mixed]
    # 64 uniform draws from 10 classes hold 10 * (1 - 0.9**64) = 9.99 distinct labels on average
    assert batch_classes(_windows(labels)) >= 8
    assert ordered == sorted(ordered, key=lambda r: (r["label"], r["path"]))  # sorted class, then file order
    # 64 consecutive rows of a 40-per-class sorted run span 2 or 3 classes
    assert batch_classes(_windows([r["label"] for r in ordered])) <= 3


def test_interrupted_then_resumed_shard_equals_uninterrupted_run(tmp_path, make_imagefolder):
    make_imagefolder(tmp_path / "src", {"a": 9, "b": 7, "c": 5}, size=8)
    shard_imagefolder(tmp_path / "src", tmp_path / "whole", shard_size=4, seed=3)

    def stop_after_two(done: int, total: int) -> None:
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        shard_imagefolder(tmp_path / "src", tmp_path / "resumed", shard_size=4, seed=3, progress=stop_after_two)
    assert len(list((tmp_path / "resumed").glob("part-*.parquet"))) == 2
    again = shard_imagefolder(tmp_path / "src", tmp_path / "resumed", shard_size=4, seed=3)
    assert (again["written"], again["skipped"]) == (4, 2)
    whole = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert whole == sorted(p.name for p in (tmp_path / "resumed").iterdir())
    for name in whole:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name
    with pytest.raises(UserError, match="different run"):  # another seed is another layout
        shard_imagefolder(tmp_path / "src", tmp_path / "resumed", shard_size=4, seed=4)


def test_cli_shard_seed_and_no_shuffle(tmp_path, make_imagefolder, cli_error):
    make_imagefolder(tmp_path / "src", {"a": 6, "b": 6}, size=8)
    runner = CliRunner()
    for name, extra in (("s1", ["--seed", "1"]), ("s1b", ["--seed", "1"]), ("s2", ["--seed", "2"]),
                        ("plain", ["--no-shuffle"])):
        res = runner.invoke(app, ["data", "shard", str(tmp_path / "src"), str(tmp_path / name), *extra])
        assert res.exit_code == 0, res.output
    order = {name: [r["path"] for r in _rows(tmp_path / name)] for name in ("s1", "s1b", "s2", "plain")}
    assert order["s1"] == order["s1b"] != order["s2"]
    assert order["plain"] == sorted(order["plain"])
    cli_error(["data", "shard", str(tmp_path / "src"), str(tmp_path / "neg"), "--seed", "-1"], "--seed", ">= 0")
