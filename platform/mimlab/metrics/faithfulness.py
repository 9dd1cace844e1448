"""Faithfulness metrics of the thesis: Average Drop / Average Increase and insertion / deletion AUC.

Definitions in methods-spec §3.1–3.2. Defaults follow the thesis: AD/AI score the ground-truth class on
``E = normalise(I ⊙ S)`` (pixel space: masked pixels go black); insertion/deletion score the predicted class,
deletion ends at the substrate 0 in normalised space, insertion starts from the RISE blur. Options cover the
variants other code uses (A5: ``class=gt|predicted``; ``space=pixel|normalized``; ``score=softmax|logit``;
``step``, ``substrate``, ``batch``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mimlab.errors import UserError
from mimlab.metrics.base import Metric, choice
from mimlab.metrics.perturbation import auc, blur, perturbation_curves
from mimlab.metrics.registry import METRICS
from mimlab.metrics.scores import forward_scores, resolve_classes
from mimlab.spec import MethodSpec


def _channel(v: Tensor, like: Tensor) -> Tensor:
    return v.to(like.device, like.dtype).view(1, -1, 1, 1)  # [3] -> [1,3,1,1]


def explanation_images(
    images: Tensor, maps: Tensor, mean: Tensor, std: Tensor, space: str = "pixel"
) -> Tensor:
    """The explanation-only input E.

    Args:
        images: normalised images ``[B, 3, H, W]``.
        maps: saliency ``[B, H, W]`` in [0, 1].
        mean, std: normalisation statistics ``[3]``.
        space: ``pixel`` — ``normalise(I ⊙ S)`` with I the [0,1] image (masked pixels black, thesis);
            ``normalized`` — ``x ⊙ S`` (masked pixels at the mean colour, pytorch-grad-cam).

    Returns:
        ``[B, 3, H, W]`` normalised.
    """
    s = maps.unsqueeze(1).to(images.dtype)  # [B,H,W] -> [B,1,H,W]
    if space == "normalized":
        return images * s
    m, sd = _channel(mean, images), _channel(std, images)
    # ((x·sd + m)·S − m)/sd rearranged to x·S − (m/sd)(1 − S): identical maths, and exactly x when S = 1
    # (the round trip through pixel space would leave float rounding, so AI of an all-ones map could be 1).
    return images * s - (m / sd) * (1 - s)


def substrate_images(images: Tensor, kind: str, mean: Tensor, std: Tensor) -> Tensor:
    """The image a perturbation moves to (deletion) or from (insertion), in normalised space.

    ``zero``: 0 in normalised space (the mean colour); ``black``: pixel 0; ``blur``: the RISE blur of x.
    """
    if kind == "blur":
        return blur(images)
    if kind == "black":
        return (-_channel(mean, images) / _channel(std, images)).expand_as(images)
    return torch.zeros_like(images)


def confidence_pair(
    model: torch.nn.Module,
    images: Tensor,
    maps: Tensor,
    classes: Tensor,
    mean: Tensor,
    std: Tensor,
    *,
    space: str,
    score: str,
    cache: dict[Any, Any] | None,
    key: tuple,
) -> tuple[Tensor, Tensor]:
    """``(Y, O)`` = scores of the class on x and on E, memoised per batch so AD and AI share the forwards."""
    if cache is not None and key in cache:
        return cache[key]
    y = forward_scores(model, images, classes, score)
    o = forward_scores(model, explanation_images(images, maps, mean, std, space), classes, score)
    if cache is not None:
        cache[key] = (y, o)
    return y, o


class _ConfidenceMetric(Metric):
    """Shared options of AD / AI."""

    needs_label: ClassVar[bool] = True
    keys: ClassVar[frozenset[str]] = frozenset({"class", "space", "score"})

    def __init__(self, spec: MethodSpec) -> None:
        super().__init__(spec)
        self.class_source = choice(spec, "class", "gt", ("gt", "predicted"))
        self.space = choice(spec, "space", "pixel", ("pixel", "normalized"))
        self.score = choice(spec, "score", "softmax", ("softmax", "logit"))

    def requires_label(self) -> bool:
        return self.class_source == "gt"

    def pair(self, model, images, maps, targets, mean, std, cache) -> tuple[Tensor, Tensor]:
        classes = resolve_classes(self.class_source, model, images, targets, self.name, cache)
        key = ("confidence", self.class_source, self.space, self.score)
        return confidence_pair(
            model, images, maps, classes, mean, std, space=self.space, score=self.score, cache=cache, key=key
        )


@METRICS.register("ad")
class AverageDrop(_ConfidenceMetric):
    """Average Drop: ``max(0, Y − O) / Y`` per image (a fraction; ×100 for %). Lower is better."""

    higher_is_better: ClassVar[bool] = False

    def __call__(self, model, images, maps, targets, mean, std, *, masks=None, cache=None) -> Tensor:
        y, o = self.pair(model, images, maps, targets, mean, std, cache)
        if self.score == "logit":
            return (y - o).clamp(min=0)  # pytorch-grad-cam's DropInConfidence: not divided by Y
        return (y - o).clamp(min=0) / y


@METRICS.register("ai")
class AverageIncrease(_ConfidenceMetric):
    """Average Increase (increase in confidence): ``1[O > Y]`` per image, strict. Higher is better."""

    higher_is_better: ClassVar[bool] = True

    def __call__(self, model, images, maps, targets, mean, std, *, masks=None, cache=None) -> Tensor:
        y, o = self.pair(model, images, maps, targets, mean, std, cache)
        return (o > y).float()


class _CurveMetric(Metric):
    """Shared options of insertion / deletion."""

    keys: ClassVar[frozenset[str]] = frozenset({"class", "score", "step", "substrate", "batch"})
    default_substrate: ClassVar[str] = "zero"

    def __init__(self, spec: MethodSpec) -> None:
        super().__init__(spec)
        self.class_source = choice(spec, "class", "predicted", ("gt", "predicted"))
        self.score = choice(spec, "score", "softmax", ("softmax", "logit"))
        self.substrate = choice(spec, "substrate", self.default_substrate, ("zero", "black", "blur"))
        self.step = spec.get_int("step")  # None: the image width
        self.batch = spec.get_int("batch", 64)
        if (self.step is not None and self.step < 1) or self.batch < 1:
            raise UserError(f"metric '{spec.text}': step and batch must be positive integers")

    def requires_label(self) -> bool:
        return self.class_source == "gt"

    def ends(self, images: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def curves(self, model, images, maps, targets, mean, std, cache=None) -> Tensor:
        """Scores ``[B, n+1]`` of the perturbation states (s_0 before any change)."""
        classes = resolve_classes(self.class_source, model, images, targets, self.name, cache)
        start, end = self.ends(images, mean, std)
        step = self.step or images.shape[-1]
        return perturbation_curves(
            model, start, end, maps, classes, step=step, batch_size=self.batch, score=self.score
        )

    def __call__(self, model, images, maps, targets, mean, std, *, masks=None, cache=None) -> Tensor:
        return auc(self.curves(model, images, maps, targets, mean, std, cache))


@METRICS.register("deletion")
class Deletion(_CurveMetric):
    """Deletion AUC: from x to the substrate (default 0 in normalised space). Lower is better."""

    higher_is_better: ClassVar[bool] = False
    default_substrate: ClassVar[str] = "zero"

    def ends(self, images, mean, std):
        return images, substrate_images(images, self.substrate, mean, std)


@METRICS.register("insertion")
class Insertion(_CurveMetric):
    """Insertion AUC: from the substrate (default the RISE blur of x) to x. Higher is better."""

    higher_is_better: ClassVar[bool] = True
    default_substrate: ClassVar[str] = "blur"

    def ends(self, images, mean, std):
        return substrate_images(images, self.substrate, mean, std), images
