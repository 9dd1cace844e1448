"""ROAD (RemOve And Debias, Rong et al. 2022) through pytorch-grad-cam's implementation.

grad-cam's ROAD removes the pixels above (MoRF) or below (LeRF) each saliency percentile, fills them by noisy
linear imputation and returns the change of the class score (after − before). We average over the percentiles
as its ``…Average`` classes do, score the softmax probability of the predicted class (``class=gt`` for the
label) and run one image at a time under a fixed RNG seed, so the imputation noise — and the result — does not
depend on batching.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from mimlab.errors import UserError
from mimlab.metrics.base import Metric, choice
from mimlab.metrics.registry import METRICS
from mimlab.metrics.scores import resolve_classes
from mimlab.spec import MethodSpec

DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


class _Road(Metric):
    keys: ClassVar[frozenset[str]] = frozenset({"percentiles", "class", "seed"})

    def __init__(self, spec: MethodSpec) -> None:
        super().__init__(spec)
        self.class_source = choice(spec, "class", "predicted", ("gt", "predicted"))
        self.seed = spec.get_int("seed", 0)
        raw = spec.params.get("percentiles")
        try:
            self.percentiles = tuple(int(p) for p in raw.split("/")) if raw else DEFAULT_PERCENTILES
        except ValueError:
            raise UserError(
                f"metric '{spec.text}': key 'percentiles' looks like 10/50/90, got '{raw}'"
            ) from None
        if not all(0 < p < 100 for p in self.percentiles):
            raise UserError(f"metric '{spec.text}': percentiles must lie in 1..99")

    def requires_label(self) -> bool:
        return self.class_source == "gt"

    def _change(self, model, images, maps, classes, most_relevant_first: bool) -> Tensor:
        """Mean score change over the percentiles, per image (``float [B]``)."""
        from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

        cls = ROADMostRelevantFirst if most_relevant_first else ROADLeastRelevantFirst
        out = torch.zeros(images.shape[0], dtype=torch.float64)
        for i in range(images.shape[0]):
            cam = maps[i : i + 1].detach().cpu().float().numpy()  # [1,H,W]
            target = [ClassifierOutputSoftmaxTarget(int(classes[i]))]
            for p in self.percentiles:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.seed)
                    change = cls(percentile=p)(images[i : i + 1], cam, target, model)
                out[i] += float(np.asarray(change).reshape(-1)[0])
        return (out / len(self.percentiles)).float()

    def _classes(self, model, images, targets, cache) -> Tensor:
        return resolve_classes(self.class_source, model, images, targets, self.name, cache).cpu()


@METRICS.register("road-morf")
class RoadMostRelevantFirst(_Road):
    """Score change when the most relevant pixels are removed and imputed. Lower (a bigger drop) is better."""

    higher_is_better: ClassVar[bool] = False

    def __call__(self, model, images, maps, targets, mean, std, *, masks=None, cache=None) -> Tensor:
        return self._change(model, images, maps, self._classes(model, images, targets, cache), True)


@METRICS.register("road-lerf")
class RoadLeastRelevantFirst(_Road):
    """Score change when the least relevant pixels are removed and imputed. Higher (less drop) is better."""

    higher_is_better: ClassVar[bool] = True

    def __call__(self, model, images, maps, targets, mean, std, *, masks=None, cache=None) -> Tensor:
        return self._change(model, images, maps, self._classes(model, images, targets, cache), False)


@METRICS.register("road")
class RoadCombined(_Road):
    """ROAD combined: ``(LeRF − MoRF) / 2``. Higher is better."""

    higher_is_better: ClassVar[bool] = True

    def __call__(self, model, images, maps, targets, mean, std, *, masks=None, cache=None) -> Tensor:
        classes = self._classes(model, images, targets, cache)
        lerf = self._change(model, images, maps, classes, False)
        morf = self._change(model, images, maps, classes, True)
        return (lerf - morf) / 2
