from pathlib import Path

from typer.testing import CliRunner

from mimlab.cli import app
from mimlab.pretrain.loop import PretrainResult

DEMO = Path(__file__).resolve().parents[2] / "experiments" / "pretrain-demo.yaml"


def test_pretrain_command_is_thin(monkeypatch):
    calls = {}

    def fake(cfg, **kwargs):
        calls["cfg"], calls["kwargs"] = cfg, kwargs
        return PretrainResult("/x/checkpoint", {"epoch": 1, "knn_top1": 40.0})

    monkeypatch.setattr("mimlab.runtime.train.run_pretrain", fake)
    res = CliRunner().invoke(app, ["pretrain", str(DEMO), "--set", "optim.lr=0.01", "--set", "masking.prob=1",
                                   "--epochs", "3", "--workers", "2", "--gpus-per-worker", "0.5",
                                   "--data", "/d", "--name", "n1", "--storage-path", "/s"])
    assert res.exit_code == 0, res.output
    cfg = calls["cfg"]
    assert (cfg.optim.lr, cfg.masking.prob, cfg.optim.epochs) == (0.01, 1.0, 3)
    assert calls["kwargs"] == {"data": "/d", "name": "n1", "storage_path": "/s", "workers": 2,
                               "gpus_per_worker": 0.5, "tracking_uri": None}
    assert "checkpoint: /x/checkpoint" in res.output
    calls.clear()
    res = CliRunner().invoke(app, ["pretrain", str(DEMO)])
    assert calls["kwargs"]["name"] == "pretrain-demo"


def test_bad_input_exits_2_with_one_line(tmp_path):
    res = CliRunner().invoke(app, ["pretrain", str(DEMO), "--set", "optim.lrr=1"])
    assert res.exit_code == 2
    assert "unknown key 'optim.lrr'" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["pretrain", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = CliRunner().invoke(app, ["pretrain", str(DEMO), "--set", "masking.strategy=[attmask-high]"])
    assert res.exit_code == 2 and "one spec per global crop" in res.output
