"""Images PIL refuses (decompression bomb, truncated, bit-flipped, not an image): one error line where the user named
the file; skipped and counted where a dataset is read (ImageFolder sharding, Ray Data shard readers)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from error_inputs import BAD_IMAGES, jpeg_bytes, png_bytes


def pil_refuses(data: bytes) -> bool:
    """The oracle, independent of mimlab: plain PIL with bomb warnings as errors."""
    import io

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                img.convert("RGB")
        return False
    except Exception:  # noqa: BLE001 - the oracle: anything PIL raises means "refused"
        return True


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_explain_names_the_refused_image_in_one_error_line(kind, cli_error, ckpt, tmp_path):
    bad = tmp_path / f"{kind}.png"
    bad.write_bytes(BAD_IMAGES[kind]())
    assert pil_refuses(bad.read_bytes())
    cli_error(["explain", bad, "-m", ckpt, "--out", tmp_path / "out"], str(bad), protect=[bad, ckpt])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_data_shard_skips_and_counts_a_refused_image(kind, tmp_path):
    from cli_contract import run_cli

    import pyarrow.parquet as pq

    src = tmp_path / "src"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(2):
            (src / cls / f"{i}.png").write_bytes(png_bytes(i + (cls == "b") * 10))
    (src / "a" / "bad.png").write_bytes(BAD_IMAGES[kind]())
    r = run_cli(["data", "shard", src, tmp_path / "out"])
    assert r.exit_code == 0, r.stderr
    assert "skipped 1 undecodable image(s)" in r.stderr and "bad.png" in r.stderr
    rows = sum(pq.read_table(p).num_rows for p in (tmp_path / "out").glob("part-*.parquet"))
    assert rows == 4


def corrupt_variants(seed: int, count: int) -> list[bytes]:
    """Seeded corruptions of real PNG and JPEG bytes: truncated, bit-flipped, wrong header, bomb header."""
    from error_inputs import bomb_png

    rng = np.random.default_rng(seed)
    out: list[bytes] = []
    for i in range(count):
        base = bytearray(png_bytes(i) if i % 2 == 0 else jpeg_bytes(i))
        how = i % 4
        if how == 0:  # truncated
            base = base[: int(rng.integers(1, len(base) - 1))]
        elif how == 1:  # bit flips
            for pos in rng.integers(0, len(base), size=int(rng.integers(1, 40))):
                base[int(pos)] ^= 1 << int(rng.integers(0, 8))
        elif how == 2:  # wrong header
            base[: 8] = rng.integers(0, 256, size=8, dtype=np.uint8).tobytes()
        else:
            base = bytearray(bomb_png(int(rng.integers(20_000, 100_000))))
        out.append(bytes(base))
    return out


def test_fuzzed_images_through_data_shard_are_skipped_and_counted(tmp_path):
    """24 seeded corruptions + 4 good images: `platform data shard` does not crash and skips exactly the refused."""
    from cli_contract import run_cli

    import pyarrow.parquet as pq

    variants = corrupt_variants(seed=14, count=24)
    refused = sum(pil_refuses(v) for v in variants)
    assert refused >= 12  # the corpus really is mostly bad (bombs, headers, most truncations)
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    for i, data in enumerate(variants):
        (src / "x" / f"f{i:02d}.{'png' if i % 2 == 0 else 'jpg'}").write_bytes(data)
    for i in range(4):
        (src / "x" / f"good{i}.png").write_bytes(png_bytes(100 + i))
    r = run_cli(["data", "shard", src, tmp_path / "out", "--shard-size", "7"])
    assert r.exit_code == 0, r.stderr
    assert f"skipped {refused} undecodable image(s)" in r.stderr
    rows = sum(pq.read_table(p).num_rows for p in (tmp_path / "out").glob("part-*.parquet"))
    assert rows == 28 - refused


def test_fuzzed_images_through_the_ray_data_readers_are_skipped_and_counted(tmp_path, ray_local):
    """The corpus written straight into a shard: the Ray Data decode stage (shared by the eval and multi-crop
    readers, ``decode_kept``) drops and counts each refused image."""
    from mimlab.data.pipeline import eval_dataset, skipped_images
    from mimlab.data.schema import records_table
    from mimlab.data.shards import write_shard

    import fsspec

    variants = corrupt_variants(seed=15, count=16) + [png_bytes(200 + i) for i in range(4)]
    refused = sum(pil_refuses(v) for v in variants)
    folder = tmp_path / "shards"
    folder.mkdir()
    write_shard(fsspec.filesystem("file"), str(folder / "part-00000.parquet"),
                records_table(variants, [i % 2 for i in range(len(variants))], [f"v{i}" for i in range(len(variants))]))
    ds = eval_dataset(folder, 16, batch_size=8)
    assert ds.count() == len(variants) - refused
    assert skipped_images(ds.skip_tag) == refused


def test_fuzzed_images_through_the_pretraining_multicrop_reader_are_skipped_and_counted(tmp_path, ray_local):
    """The pretraining crop stage decodes by itself (JPEG draft scale): bombs, truncations and bit flips are
    dropped and counted there too, never a crashed task."""
    from mimlab.data.pipeline import multicrop_dataset, skipped_images
    from mimlab.data.schema import records_table
    from mimlab.data.shards import write_shard
    from mimlab.data.transforms import MultiCropConfig

    import fsspec

    variants = corrupt_variants(seed=16, count=12) + [png_bytes(300 + i) for i in range(4)]
    refused = sum(pil_refuses(v) for v in variants)
    assert refused >= 6
    folder = tmp_path / "shards"
    folder.mkdir()
    write_shard(fsspec.filesystem("file"), str(folder / "part-00000.parquet"),
                records_table(variants, [i % 2 for i in range(len(variants))], [f"v{i}" for i in range(len(variants))]))
    ds = multicrop_dataset(folder, MultiCropConfig(global_size=16, local_crops=1, local_size=8), batch_size=8,
                           shuffle_buffer=0)
    assert ds.count() == len(variants) - refused
    assert skipped_images(ds.skip_tag) == refused


# ------------------------------------------------------------------ evaluation: a dataset's bad image is counted
def _truncated_jpeg() -> bytes:
    return jpeg_bytes(7)[:300]


def _bit_flipped_png() -> bytes:
    return bytes(b ^ 0xA5 if 60 <= i < 120 else b for i, b in enumerate(png_bytes(8)))


@pytest.fixture()
def tree_with_bad_images(tmp_path):
    """An ImageFolder tree: 2 classes x 3 good 32 px PNGs, plus a truncated JPEG in a/ and a bit-flipped PNG in b/."""
    root = tmp_path / "tree"
    for c, cls in enumerate(("a", "b")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}.png").write_bytes(png_bytes(20 + 10 * c + i))
    (root / "a" / "bad.jpg").write_bytes(_truncated_jpeg())
    (root / "b" / "bad.png").write_bytes(_bit_flipped_png())
    assert pil_refuses((root / "a" / "bad.jpg").read_bytes()) and pil_refuses((root / "b" / "bad.png").read_bytes())
    return root


def _one_skip_line(stderr: str, count: int) -> str:
    # the command's own lines; a Ray worker of an earlier test in this process may still forward its log lines,
    # prefixed "(MapBatches… pid=…)", into the captured stderr
    lines = [ln for ln in stderr.splitlines()
             if "undecodable" in ln and not ln.lstrip("\x1b[0123456789m").startswith("(")]
    assert len(lines) == 1 and lines[0].startswith(f"warning: skipped {count} undecodable image(s)"), stderr
    assert "error:" not in stderr and "Traceback" not in stderr, stderr
    return lines[0]


def test_saliency_evaluation_skips_and_counts_bad_images_of_an_imagefolder(tree_with_bad_images, ckpt, tmp_path):
    import csv
    import json

    from cli_contract import run_cli

    out = tmp_path / "out"
    r = run_cli(["evaluate", "saliency", "--model", ckpt, "--data", tree_with_bad_images, "--metrics", "ad",
                 "--workers", "0", "--out", out, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert r.exit_code == 0, r.stderr
    line = _one_skip_line(r.stderr, 2)
    assert "bad.jpg" in line and "bad.png" in line
    summary = json.loads((out / "results.json").read_text())
    assert summary["skipped_images"] == 2 and summary["num_images"] == 6
    assert sorted(p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in summary["skipped_paths"]) == \
        ["a/bad.jpg", "b/bad.png"]
    with open(out / "per_image.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6  # one method: one row per good image


@pytest.mark.parametrize("command", ["knn", "linear"])
def test_representation_evaluation_in_process_skips_and_counts_bad_images(command, tree_with_bad_images, ckpt,
                                                                           tmp_path):
    import json

    from cli_contract import run_cli

    out = tmp_path / "out"
    extra = ["--k", "3"] if command == "knn" else ["--epochs", "1", "--batch-size", "4"]
    r = run_cli(["eval", command, ckpt, "--train", tree_with_bad_images, "--val", tree_with_bad_images, *extra,
                 "--workers", "0", "--no-mlflow", "--out", out])
    assert r.exit_code == 0, r.stderr
    assert "(train 2, val 2)" in _one_skip_line(r.stderr, 4)
    result = json.loads((out / f"{command}.json").read_text())
    assert result["skipped_images"] == 4 and result["skipped_by_split"] == {"train": 2, "val": 2}
    assert result["n_train"] == 6 and result["n_val"] == 6


def test_knn_on_ray_data_skips_and_counts_bad_images_of_an_imagefolder_and_of_shards(tree_with_bad_images, ckpt,
                                                                                    tmp_path):
    """The Ray Data readers: ImageFolder items (train) and shards (val) with the same two bad images. In a child
    process: an in-process Ray keeps logging to the stream of whichever earlier CliRunner call started it."""
    import json

    import fsspec

    from cli_contract import run_cli
    from mimlab.data.schema import records_table
    from mimlab.data.shards import write_shard

    files = sorted(p for p in tree_with_bad_images.rglob("*") if p.is_file())
    shards = tmp_path / "val-shards"
    shards.mkdir()
    write_shard(fsspec.filesystem("file"), str(shards / "part-00000.parquet"),
                records_table([f.read_bytes() for f in files], [int(f.parent.name == "b") for f in files],
                              [str(f) for f in files]))
    out = tmp_path / "out"
    r = run_cli(["eval", "knn", ckpt, "--train", tree_with_bad_images, "--val", shards, "--k", "3",
                 "--workers", "1", "--batch-size", "4", "--no-mlflow", "--out", out], timeout=120, subprocess=True)
    assert r.exit_code == 0, r.stderr
    assert "(train 2, val 2)" in _one_skip_line(r.stderr, 4)
    result = json.loads((out / "knn.json").read_text())
    assert result["skipped_images"] == 4 and result["n_train"] == 6 and result["n_val"] == 6
