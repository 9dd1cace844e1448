"""Outputs: an --out that is a file or holds another run's outputs is refused before computing; synth/shard never
delete or adopt shards they did not write; overlays of two inputs with the same file name never overwrite."""

from __future__ import annotations

import pytest

from error_inputs import png_bytes, write_table

# (id, what to create in {out} before the run, argv, substrings of the error line)
CASES = [
    ("explain-out-is-a-file", "file", ["explain", "{img}", "-m", "{ckpt}", "--out", "{out}"], ["--out", "existing file"]),
    ("explain-out-holds-a-grid", "grid.png", ["explain", "{img}", "-m", "{ckpt}", "--out", "{out}"],
     ["--out", "grid.png", "another run"]),
    ("explain-save-maps-is-a-folder", "folder", ["explain", "{img}", "-m", "{ckpt}", "--out", "{tmp}/new",
                                                 "--save-maps", "{out}"], ["--save-maps", "existing folder"]),
    ("saliency-out-is-a-file", "file", ["evaluate", "saliency", "--model", "{ckpt}", "--data", "{shards}",
                                        "--out", "{out}"], ["--out", "existing file"]),
    ("saliency-stale-maps", "maps.npz", ["evaluate", "saliency", "--model", "{ckpt}", "--data", "{shards}",
                                         "--out", "{out}"], ["maps.npz", "another run"]),
    ("saliency-old-results", "results.json", ["evaluate", "saliency", "--model", "{ckpt}", "--data", "{shards}",
                                              "--out", "{out}"], ["results.json", "another run"]),
    ("study-out-holds-a-study", "study.json", ["evaluate", "study", "{tmp}/nostudy.yaml", "--out", "{out}"],
     ["study.json", "another run"]),
    ("knn-out-is-a-file", "file", ["eval", "knn", "{ckpt}", "--out", "{out}", "--no-mlflow"], ["--out", "existing file"]),
    ("knn-out-holds-results", "knn.json", ["eval", "knn", "{ckpt}", "--out", "{out}", "--no-mlflow"],
     ["knn.json", "another run"]),
    ("linear-out-holds-results", "linear.json", ["eval", "linear", "{ckpt}", "--out", "{out}", "--no-mlflow"],
     ["linear.json", "another run"]),
    ("synth-out-is-a-file", "file", ["data", "synth", "{out}", "--num-images", "4"], ["existing file"]),
    ("synth-into-foreign-shards", "foreign-shards", ["data", "synth", "{out}", "--num-images", "4"],
     ["did not write", "part-00000.parquet"]),
    ("shard-out-is-a-file", "file", ["data", "shard", "{src}", "{out}"], ["existing file"]),
    ("shard-into-part-files-without-plan", "part-file", ["data", "shard", "{src}", "{out}"],
     ["part-*.parquet", "_plan.json"]),
]


def _prepare(kind: str, out):
    if kind == "file":
        out.write_bytes(b"user's file")
    elif kind == "folder":
        out.mkdir()
    elif kind == "foreign-shards":
        write_table(out / "train" / "part-00000.parquet", {"x": [1, 2]})
    elif kind == "part-file":
        write_table(out / "part-00000.parquet", {"x": [1, 2]})
    else:
        out.mkdir()
        (out / kind).write_bytes(b"an earlier run's output")


@pytest.mark.parametrize("kind,argv,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_unsafe_output_is_refused_before_any_work(kind, argv, expected, cli_error, ckpt, shards, image_file,
                                                  tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "out"
    _prepare(kind, out)
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "0.png").write_bytes(png_bytes(0))
    subs = dict(img=image_file, ckpt=ckpt, shards=shards, out=out, tmp=tmp_path, src=src)
    cli_error([a.format(**subs) for a in argv], *expected, protect=[out, shards, ckpt, image_file, src], timeout=60)


def test_overlays_of_two_inputs_with_the_same_name_do_not_overwrite_each_other(ckpt, tmp_path):
    from cli_contract import run_cli

    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").write_bytes(png_bytes(seed))
    r = run_cli(["explain", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "-m", ckpt, "--method", "raw",
                 "--out", tmp_path / "out"])
    assert r.exit_code == 0, r.stderr
    overlays = sorted(p.name for p in (tmp_path / "out").glob("*__*.png"))
    assert overlays == ["001-x__raw.png", "002-x__raw.png"]
    assert (tmp_path / "out" / overlays[0]).read_bytes() != (tmp_path / "out" / overlays[1]).read_bytes()
