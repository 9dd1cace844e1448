"""Contract tests parametrised over the registry: every explainer, every model kind."""

from __future__ import annotations

import pytest
import torch

from mimlab.errors import UserError
from mimlab.explain import EXPLAINERS, build_explainer


@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_every_explainer_on_tiny_vit(name, vit, images):
    if EXPLAINERS.get(name).cnn_only:
        with pytest.raises(UserError, match="needs a CNN"):
            build_explainer(name, vit)
        return
    maps = build_explainer(name, vit)(images, torch.tensor([1, 2]))
    assert maps.shape == (2, 32, 32) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert (maps.flatten(1).max(1).values > 0.5).all()  # min-max normalised, not a blank map


@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_every_explainer_on_tiny_cnn(name, cnn, images):
    if EXPLAINERS.get(name).vit_only:
        with pytest.raises(UserError, match="needs a ViT"):
            build_explainer(name, cnn)
        return
    maps = build_explainer(name, cnn)(images)
    assert maps.shape == (2, 32, 32)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def test_metadata_is_declared():
    for name in EXPLAINERS.names():
        cls = EXPLAINERS.get(name)
        assert isinstance(cls.vit_only, bool) and isinstance(cls.gradient_free, bool)
        assert isinstance(cls.takes_target, bool) and not (cls.vit_only and cls.cnn_only)
    assert not EXPLAINERS.get("raw").takes_target and not EXPLAINERS.get("eigencam").takes_target
    assert EXPLAINERS.get("scorecam").takes_target and EXPLAINERS.get("ablationcam").takes_target
    assert EXPLAINERS.get("raw").gradient_free and not EXPLAINERS.get("gradcam").gradient_free
    assert not EXPLAINERS.get("gradcam").vit_only and EXPLAINERS.get("tibav").vit_only


@pytest.mark.parametrize("name", ["raw", "rollout", "gradcam", "tibav"])
def test_non_square_free_grid_and_distilled(name):
    """A 40 px distilled DeiT with patch 8 (5x5 grid, 2 prefix tokens): nothing assumes 14x14 or one cls token."""
    from mimlab.models.loading import LoadedModel
    from mimlab.models.vit import create_backbone

    torch.manual_seed(0)
    model = create_backbone("deit_tiny_distilled_patch16_224", img_size=40, patch_size=8, embed_dim=32, depth=2,
                            num_heads=2, num_classes=3)
    loaded = LoadedModel(model, "vit", (0.5,) * 3, (0.5,) * 3, 40, "deit")
    maps = build_explainer(name, loaded)(torch.randn(1, 3, 40, 40))
    assert maps.shape == (1, 40, 40) and torch.isfinite(maps).all()


@pytest.mark.parametrize(
    "spec,match",
    [
        ("rolout", r"unknown method 'rolout' \(did you mean 'rollout'\?\); valid: .*raw"),
        ("raw:lyer=2", r"no key 'lyer' \(did you mean 'layer'\?\)"),
        ("raw:layer=4", r"layer 4 is outside 1\.\.3"),
        ("raw:layer=0", r"layer 0 is outside 1\.\.3"),
        ("head:head=3", r"head 3 is outside 1\.\.2"),
        ("rollout:layers=2-5", r"outside 1\.\.3"),
        ("rollout:order=desc", r"order must be one of descending, ascending.*did you mean 'descending'"),
        ("raw-pow:p=-1", r"p must be > 0"),
        ("keys-norm:variant=max", r"variant must be one of"),
        ("tibav:start=9", r"start 9 is outside 1\.\.3"),
        ("gradcam:target-layer=blocks.9.norm1", r"target-layer 'blocks.9.norm1' is not a module"),
        ("raw:layer=x", r"must be an integer"),
    ],
)
def test_bad_specs_are_one_line_user_errors(vit, spec, match):
    with pytest.raises(UserError, match=match) as err:
        build_explainer(spec, vit)
    assert "\n" not in str(err.value)
