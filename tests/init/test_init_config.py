"""model.init / model.init_from in the config, --init on `platform pretrain`, model.init as a sweep key."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from mimlab.cli import app
from mimlab.config.experiment import load_experiment
from mimlab.pretrain.loop import PretrainResult

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "experiments" / "pretrain-demo.yaml"


def test_init_defaults_to_random_and_the_teacher(micro_cfg):
    cfg = micro_cfg()
    assert cfg.model.init is None and cfg.model.init_from == "teacher"


def test_a_relative_init_path_is_made_absolute_at_load_time(micro_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = micro_cfg("model.init=weights/dino.pth", "model.init_from=student")
    assert cfg.model.init == str(tmp_path / "weights" / "dino.pth")
    assert cfg.model.init_from == "student"
    assert cfg.resolved()["model"]["init"] == str(tmp_path / "weights" / "dino.pth")  # what trials receive


def test_pretrain_init_option_becomes_model_init(monkeypatch, tmp_path):
    calls = {}

    def fake(cfg, **kwargs):
        calls["cfg"] = cfg
        return PretrainResult("/x/checkpoint", {"epoch": 0})

    monkeypatch.setattr("mimlab.runtime.train.run_pretrain", fake)
    path = tmp_path / "my weights: v1.pth"  # a path YAML would misread unquoted
    res = CliRunner().invoke(app, ["pretrain", str(DEMO), "--init", str(path)])
    assert res.exit_code == 0, res.output
    assert calls["cfg"].model.init == str(path)


def test_bad_init_keys_are_one_line(cli_error, tmp_path):
    cli_error(["pretrain", DEMO, "--init", "s3://bucket/dino.pth", "--storage-path", tmp_path / "runs"],
              "model.init", "must be a local checkpoint file or folder", "s3://bucket/dino.pth")
    cli_error(["pretrain", DEMO, "--set", "model.init_from=both", "--storage-path", tmp_path / "runs"],
              "model.init_from", "'teacher' or 'student'")
    assert not (tmp_path / "runs").exists()


def test_the_example_experiment_sweeps_model_init_scratch_vs_deit():
    exp = load_experiment(REPO / "experiments" / "init-deit.yaml", "imagenet-20pct")
    inits = [p.config["model"]["init"] for p in exp.points]
    assert exp.sweep_keys == ["model.init"] and len(inits) == 2
    assert inits[0] is None and Path(inits[1]).is_absolute() and inits[1].endswith("deit_small_patch16_224.pth")
    assert [p.label for p in exp.points] == ["scratch", "DeiT-S init"]
    assert all(p.config["model"]["timm_name"] == "vit_small_patch16_224" for p in exp.points)
