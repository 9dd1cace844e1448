from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mimlab.data.shapes import SHAPE_ORDER, SHAPES
from mimlab.data.sources import decode_mask, decode_rgb, load_records
from mimlab.data.synth import DARK, LIGHT, default_dataset, render, texture, write_synthetic
from mimlab.data.textures import TEXTURE_ORDER
from mimlab.errors import UserError


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_shards(tmp_path):
    kwargs = dict(num_images=30, size=24, classes=5, split_val=0.2, shard_size=10)
    write_synthetic(tmp_path / "a", seed=3, **kwargs)
    write_synthetic(f"file://{tmp_path / 'b'}", seed=3, **kwargs)
    write_synthetic(tmp_path / "c", seed=4, **kwargs)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert sorted(a) == ["dataset.json", "train/classes.json", "train/part-00000.parquet",
                         "train/part-00001.parquet", "train/part-00002.parquet", "val/classes.json",
                         "val/part-00000.parquet"]
    assert a == b
    assert a["train/part-00000.parquet"] != c["train/part-00000.parquet"]


def test_images_masks_aligned_and_classes_balanced(small_synth):
    records = load_records(small_synth, split="train")
    assert len(records) == 48
    assert [r.label for r in records[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]
    for rec in records:
        img, mask = decode_rgb(rec.image), decode_mask(rec.mask)
        assert img.shape == (32, 32, 3) and mask.shape == (32, 32)
        assert 10 <= mask.sum() <= 0.9 * mask.size
        # the object is painted in exactly the two palette colours where the mask is set, and only there
        inside = {tuple(c) for c in np.unique(img[mask], axis=0)}
        assert inside <= {tuple(LIGHT), tuple(DARK)}
        assert not np.isin(img[~mask].view([("", img.dtype)] * 3), np.array([tuple(LIGHT), tuple(DARK)],
                           dtype=[("", img.dtype)] * 3)).any()
        # class 0 (solid) is all light; every other class shows both colours
        assert (inside == {tuple(LIGHT)}) == (rec.label == 0)
        assert SHAPE_ORDER[rec.label] in rec.path


def test_shapes_differ_in_form():
    """Each class has its own silhouette: ring has a hole at the centre, a disc does not, etc."""
    masks = {}
    for name in SHAPE_ORDER:
        from PIL import Image, ImageDraw

        canvas = Image.new("L", (64, 64), 0)
        SHAPES.get(name)(ImageDraw.Draw(canvas), 32.0, 32.0, 24.0, 0.0)
        masks[name] = np.asarray(canvas) > 0
    assert masks["circle"][32, 32] and not masks["ring"][32, 32]
    assert masks["ring"][32, 32 - 18]
    filled = {name: m.mean() for name, m in masks.items()}
    assert len({round(v, 3) for v in filled.values()}) == len(SHAPE_ORDER)  # all silhouettes differ
    # circle area ≈ π r² / 64²; an independent closed form for one shape keeps the drawing honest
    assert abs(filled["circle"] - np.pi * 24 ** 2 / 64 ** 2) < 0.02


def test_textures_differ_and_survive_a_horizontal_flip():
    """Each class's texture has its own dark-pixel pattern; flipping an image (as the crop pipeline does) keeps
    the texture's statistics, so a flip never turns one class's texture into another's."""
    size = 64
    stats = {}
    for name in TEXTURE_ORDER:
        dark = texture(np.random.default_rng(0), name, size, (32.0, 32.0))
        # fraction of dark pixels, and how often a pixel equals its right / lower neighbour: a signature that
        # separates stripes from their rotation, checker from dots, etc. (computed here, not from the module)
        horiz = (dark[:, 1:] == dark[:, :-1]).mean()
        vert = (dark[1:, :] == dark[:-1, :]).mean()
        # a horizontal flip swaps the two diagonals: equal diagonal statistics = a flip leaves the texture's look
        down_right = (dark[1:, 1:] == dark[:-1, :-1]).mean()
        down_left = (dark[1:, :-1] == dark[:-1, 1:]).mean()
        assert abs(down_right - down_left) < 0.05, name
        stats[name] = (round(float(dark.mean()), 2), round(float(horiz), 2), round(float(vert), 2))
    assert stats["solid"] == (0.0, 1.0, 1.0)
    assert stats["hstripes"][1] == 1.0 and stats["hstripes"][2] < 0.9  # constant along rows, varies down columns
    assert stats["vstripes"][2] == 1.0 and stats["vstripes"][1] < 0.9
    assert 0.4 < stats["speckle"][0] < 0.6 and stats["speckle"][1] < 0.6  # no spatial structure
    assert len(set(stats.values())) == len(TEXTURE_ORDER)  # all signatures differ


def test_render_is_a_function_of_the_generator():
    a = render(np.random.default_rng([1, 2]), "star", 32)
    b = render(np.random.default_rng([1, 2]), "star", 32)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_default_dataset_cached_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMLAB_CACHE_DIR", str(tmp_path))
    root = default_dataset(num_images=40, classes=3)
    assert default_dataset(num_images=40, classes=3) == root
    entries = [p.name for p in tmp_path.iterdir()]
    assert entries == [root.rsplit("/", 1)[1]]  # no leftover temp folder
    assert len(load_records(root, split="train")) == 32
    assert len(load_records(root, split="val")) == 8
    assert len(load_records(root)) == 8  # a root with splits and no split= means val


def test_load_records_none_uses_embedded_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMLAB_CACHE_DIR", str(tmp_path))
    import mimlab.data.synth as synth

    monkeypatch.setattr(synth, "DEFAULTS", {**synth.DEFAULTS, "num_images": 50})
    records = load_records(None, split="train", limit=7)
    assert len(records) == 7 and records[0].mask is not None


@pytest.mark.parametrize("kwargs,needle", [
    ({"classes": 11}, "--classes"), ({"size": 4}, "--size"), ({"split_val": 1.0}, "--split-val"),
    ({"num_images": 0}, "--num-images"), ({"num_images": 1, "split_val": 0.6}, "no training image"),
])
def test_bad_parameters(tmp_path, kwargs, needle):
    with pytest.raises(UserError, match=needle):
        write_synthetic(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())
