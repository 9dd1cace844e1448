"""Every experiment file loads and validates; the demo profile is CPU-sized; typos fail on load with a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from mimlab.config.experiment import config_keys, list_experiments, load_experiment, load_profiles
from mimlab.errors import UserError

REPO_EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
PROFILES = ["demo", "cifar10", "imagenet-20pct", "imagenet-full"]
EXPERIMENTS = list_experiments(REPO_EXPERIMENTS)


def test_the_thesis_studies_are_all_there():
    for name in ("masking-layers", "masking-rollout", "masking-power", "multi-crop", "imagenet-full", "contrastive"):
        assert name in EXPERIMENTS
    assert set(PROFILES) <= set(load_profiles(REPO_EXPERIMENTS))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_loads_at_every_profile(name, profile):
    exp = load_experiment(name, profile, root=REPO_EXPERIMENTS)
    assert exp.points and exp.profile_name == profile
    for point in exp.points:   # each point was validated as a PretrainConfig; spot-check the sweep took effect
        for key, value in point.overrides.items():
            node = point.config
            for part in key.split("."):
                node = node[part]
            if isinstance(value, dict):   # a whole section: the given keys are set, the rest defaulted
                assert {k: node[k] for k in value} == value
            else:
                assert node == value


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_demo_profile_is_small_enough_for_cpu(name):
    exp = load_experiment(name, "demo", root=REPO_EXPERIMENTS)
    assert len(exp.points) <= 14
    for point in exp.points:
        cfg = point.config
        kw = cfg["model"]["kwargs"]
        assert kw["img_size"] <= 32 and kw["embed_dim"] <= 96 and kw["depth"] <= 12
        assert cfg["train"]["use_gpu"] is False
        images = cfg["optim"]["epochs"] * cfg["train"]["steps_per_epoch"] * cfg["optim"]["batch_size_per_worker"]
        assert images <= 1500, f"{point.label}: {images} training images per trial"
        assert cfg["head"]["out_dim"] <= 2048
    assert exp.evaluation.cached_features
    assert exp.profile.resources.gpus_per_trial == 0


def test_masking_layers_demo_matches_figure_19():
    exp = load_experiment("masking-layers", "demo", root=REPO_EXPERIMENTS)
    # 12 layers + block + AttMask-High (Figure 19's x axis plus its two baselines)
    assert [p.label for p in exp.points] == [f"Raw_{i}" for i in range(1, 13)] + ["random block-wise",
                                                                                  "AttMask (high)"]
    assert exp.points[4].config["masking"]["strategy"] == "attmask-raw:layer=5"
    assert {p.config["model"]["kwargs"]["depth"] for p in exp.points} == {12}


def test_merge_order_profile_over_base_point_over_profile():
    exp = load_experiment("multi-crop", "imagenet-20pct", root=REPO_EXPERIMENTS)
    three = next(p for p in exp.points if p.label == "3 crops · AttMask-Raw_3,5,12")
    assert three.config["crops"]["global_crops"] == 3                       # from the case
    assert three.config["crops"]["local_crops"] == 6                        # from the profile (thesis §4.3.4)
    assert three.config["masking"]["prob"] == 0.5                           # from the base
    assert three.config["masking"]["strategy"] == ["attmask-raw:layer=12", "attmask-raw:layer=5",
                                                   "attmask-raw:layer=3"]
    assert three.config["optim"]["momentum_teacher"] == 0.99


def test_contrastive_grid_sizes():
    # the thesis search: k in {3,6,12} x tau in {0.2,0.14,0.07,0.03} x lambda in 7 values = 84 points
    assert len(load_experiment("contrastive", "cifar10", root=REPO_EXPERIMENTS).points) == 3 * 4 * 7
    demo = load_experiment("contrastive", "demo", root=REPO_EXPERIMENTS)
    assert len(demo.points) == 4
    assert all(p.config["contrastive"]["tau"] == 0.07 for p in demo.points)


def test_unknown_experiment_and_profile_list_the_valid_ones():
    with pytest.raises(UserError, match=r"unknown experiment 'masking-layer' \(did you mean 'masking-layers'\?\)"):
        load_experiment("masking-layer", root=REPO_EXPERIMENTS)
    with pytest.raises(UserError, match=r"unknown profile 'dmo' \(did you mean 'demo'\?\); "
                                        r"valid: cifar10, demo, demo-long, imagenet-20pct, imagenet-full, quickstart$"):
        load_experiment("masking-layers", "dmo", root=REPO_EXPERIMENTS)


def _write(root: Path, body: str) -> None:
    (root / "bad.yaml").write_text("name: bad\ndefault_profile: tiny\n" + body)


def test_sweep_key_that_is_not_a_config_field_suggests_the_nearest(exp_dir):
    _write(exp_dir, "sweep:\n  masking.stratgy: [block]\n")
    with pytest.raises(UserError, match=r"sweep: 'masking.stratgy' is not a config field "
                                        r"\(did you mean 'masking.strategy'\?\)"):
        load_experiment("bad")


def test_typos_anywhere_fail_on_load(exp_dir):
    _write(exp_dir, "sweeep:\n  masking.strategy: [block]\n")
    with pytest.raises(UserError, match=r"unknown key 'sweeep' \(did you mean 'sweep'\?\)"):
        load_experiment("bad")
    _write(exp_dir, "base: {optim: {lr_: 0.1}}\nsweep:\n  masking.strategy: [block]\n")
    with pytest.raises(UserError, match=r"unknown key 'optim.lr_'"):
        load_experiment("bad")
    _write(exp_dir, "sweep:\n  optim.epochs: [1, 0]\n")
    with pytest.raises(UserError, match=r"sweep point 'epochs=0|sweep point '0'"):
        load_experiment("bad")
    _write(exp_dir, "sweep:\n  model.kwargs.depth: []\n")
    with pytest.raises(UserError, match=r"needs a non-empty list"):
        load_experiment("bad")


def test_bad_masking_strategy_fails_on_load(exp_dir):
    _write(exp_dir, "sweep:\n  masking.strategy: [block, 'attmask-raw:layer=3']\n")   # tiny ViT has 2 blocks
    with pytest.raises(UserError, match=r"sweep point 'attmask-raw:layer=3'"):
        load_experiment("bad")
    _write(exp_dir, "sweep:\n  masking.strategy: [blok]\n")
    with pytest.raises(UserError, match=r"blok"):
        load_experiment("bad")


def test_config_keys_cover_nested_sections():
    keys = config_keys()
    assert "masking.strategy" in keys and "contrastive.tau" in keys and "optim.lr" in keys


def test_quickstart_runs_six_points_of_masking_layers_at_four_blocks():
    """`make run`'s sweep: the default profile of masking-layers, the documented subset of its 14 points."""
    exp = load_experiment("masking-layers", None, root=REPO_EXPERIMENTS)
    assert exp.profile_name == "quickstart"
    assert [p.label for p in exp.points] == ["random block-wise", "AttMask (high)", "AttMask-Low",
                                             "Raw_1", "Raw_2", "Raw_3"]
    assert exp.points[0].config["masking"]["strategy"] == "block"   # the first point also measures `untrained`
    assert exp.profile.seeds == 1 and exp.profile.resources.max_concurrent == 2
    assert exp.evaluation.val_limit == 1000 and exp.evaluation.train_limit == 4000   # the whole embedded split
    for point in exp.points:
        cfg = point.config
        assert cfg["model"]["kwargs"]["depth"] == 4 and cfg["train"]["use_gpu"] is False
        assert cfg["optim"]["epochs"] * cfg["train"]["steps_per_epoch"] == 240
        assert cfg["masking"]["prob"] == 0.5 and cfg["masking"]["ratio"] == [0.1, 0.5]   # the experiment's base
    for words in ("6 of its 14", "Raw_1..Raw_3", "cannot rank"):
        assert words in exp.profile.caveat
