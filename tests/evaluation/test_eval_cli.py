"""``platform eval knn|linear``: thin commands, printed tables, one-line errors with exit 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mimlab.cli import app
from mimlab.cli.represent import parse_ks
from mimlab.errors import UserError

runner = CliRunner()


def test_knn_command_prints_table_and_writes_json(tiny_checkpoint, tmp_path):
    out = tmp_path / "res"
    r = runner.invoke(app, ["eval", "knn", str(tiny_checkpoint), "--k", "5,10", "--limit", "50", "--workers", "0",
                            "--out", str(out), "--no-mlflow"])
    assert r.exit_code == 0, r.output
    assert "top-1 %" in r.output and "bank=50" in r.output
    data = json.loads((out / "knn.json").read_text())
    assert list(data["results"]) == ["5", "10"]
    assert f"{data['results']['10']['top1']:.2f}" in r.output


def test_linear_command_cached_reach(tiny_checkpoint, tmp_path):
    r = runner.invoke(app, ["eval", "linear", str(tiny_checkpoint), "--epochs", "3", "--reach", "0",
                            "--cached-features", "--limit", "50", "--workers", "0", "--out", str(tmp_path),
                            "--no-mlflow"])
    assert r.exit_code == 0, r.output
    assert "mode: cached-features" in r.output
    assert "reach 0.0%: epoch 1" in r.output
    data = json.loads((tmp_path / "linear.json").read_text())
    assert data["cached_features"] is True and len(data["curve"]) == 3
    assert f"best: {data['best_top1']:.2f}% at epoch {data['best_epoch']}" in r.output


@pytest.mark.parametrize("args, message", [
    (["eval", "knn", "{bad}", "--workers", "0", "--no-mlflow"], "is not a pretrain checkpoint"),
    (["eval", "knn", "{ckpt}", "--k", "10,500", "--limit", "40", "--workers", "0", "--no-mlflow"],
     "bank has 40 images but k=500"),
    (["eval", "knn", "{ckpt}", "--k", "ten", "--no-mlflow"], "--k expects"),
    (["eval", "linear", "{ckpt}", "--epochs", "0", "--limit", "10", "--workers", "0", "--no-mlflow",
      "--cached-features"], "--epochs must be >= 1"),
    (["eval", "knn", "{ckpt}", "--train", "{missing}", "--workers", "0", "--no-mlflow"], "no such file"),
])
def test_bad_input_one_line_exit_2(tiny_checkpoint, tmp_path, args, message, cli_error):
    bad = tmp_path / "not_a_ckpt"
    bad.mkdir()
    (bad / "weights.txt").write_text("hello")
    subs = {"{bad}": str(bad), "{ckpt}": str(tiny_checkpoint), "{missing}": str(tmp_path / "nope")}
    cli_error([subs.get(a, a) for a in args], message, protect=[tiny_checkpoint, bad])


def test_parse_ks():
    assert parse_ks("10,20, 100") == [10, 20, 100]
    with pytest.raises(UserError):
        parse_ks("0,5")
