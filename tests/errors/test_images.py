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
    readers, ``_DecodeBatch``) drops and counts each refused image."""
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
