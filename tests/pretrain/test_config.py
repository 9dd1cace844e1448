from pathlib import Path

import pytest

from mimlab.config.pretrain import PretrainConfig, load_pretrain_config
from mimlab.errors import UserError

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def test_defaults_are_the_ibot_vits16_recipe():
    cfg = load_pretrain_config()
    assert cfg.model.timm_name == "vit_small_patch16_224" and cfg.model.drop_path == 0.1
    assert (cfg.head.out_dim, cfg.head.norm_last_layer, cfg.head.shared) == (8192, False, True)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.weight_decay_end, cfg.optim.clip_grad) == (
        0.0005, 0.04, 0.4, 3.0)
    assert cfg.contrastive is None and cfg.masking.strategy == "block"


def test_overrides_are_yaml_values_and_create_null_sections():
    cfg = load_pretrain_config(None, ["optim.lr=1e-3", "masking.strategy=[a, b]", "contrastive.k=6"])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.masking.strategy == ["a", "b"]
    assert cfg.contrastive.k == 6 and cfg.contrastive.tau == 0.2


@pytest.mark.parametrize("override, needle", [
    ("optim.lrr=1", "unknown key 'optim.lrr' (did you mean 'lr'?)"),
    ("masking.strategy=[a]", "lists 1 per-crop specs but crops.global_crops is 2"),
    ("optim.epochs=0", "optim.epochs"),
    ("masking.ratio=[0.6, 0.2]", "masking.ratio"),
    ("optim", "expected dotted.key=value"),
    ("optim.lr.x=1", "optim.lr"),
])
def test_bad_input_names_the_key(override, needle):
    with pytest.raises(UserError, match=None) as err:
        load_pretrain_config(None, [override])
    assert needle in str(err.value)


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("optim: {epoch: 3}\n")
    with pytest.raises(UserError) as err:
        load_pretrain_config(bad)
    assert str(bad) in str(err.value) and "optim.epoch" in str(err.value)
    with pytest.raises(UserError, match="does not exist"):
        load_pretrain_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("pretrain-*.yaml")), ids=lambda p: p.name)
def test_every_pretrain_experiment_loads_and_builds_its_masking(path):
    from mimlab.masking import build_masking

    cfg = load_pretrain_config(path)
    depth = cfg.model.kwargs.get("depth", 12)
    masking = build_masking(cfg.masking, num_global_crops=cfg.crops.global_crops, depth=depth,
                            contrastive=cfg.contrastive is not None)
    assert masking.num_global_crops == cfg.crops.global_crops
    assert isinstance(PretrainConfig.model_validate(cfg.resolved()), PretrainConfig)


def test_fixed_ratio_without_fixed_mode_fails_on_load():
    with pytest.raises(UserError, match="fixed_ratio is only used with masking.ratio_mode: fixed"):
        load_pretrain_config({"masking": {"fixed_ratio": 0.3}})
    cfg = load_pretrain_config({"masking": {"ratio_mode": "fixed", "fixed_ratio": 0.3}})
    assert cfg.masking.fixed_ratio == 0.3


def test_blur_radius_reaches_the_crop_pipeline_and_is_checked():
    from mimlab.runtime.train import multicrop_config

    cfg = load_pretrain_config({}, ["crops.blur_radius=[0.02,0.3]"])
    assert multicrop_config(cfg).blur_radius == (0.02, 0.3)
    assert multicrop_config(load_pretrain_config({}, [])).blur_radius == (0.1, 2.0)  # DINO's default
    with pytest.raises(UserError, match="blur_radius"):  # refused at load time, not in a crop worker
        load_pretrain_config({}, ["crops.blur_radius=[0.5,0.1]"])
