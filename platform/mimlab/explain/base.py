"""The explainer interface: one signature for every saliency method, registered by name.

``build_explainer("raw:layer=12", loaded)(images [B,3,H,W] normalised, targets LongTensor[B] | None)``
returns maps ``[B,H,W]`` in [0, 1] at input resolution. Behaviour is metadata (``vit_only``, ``gradient_free``),
never a branch on names.

Which class a map explains (``--target``) is resolved once, by :func:`resolve_targets`, from a :func:`parse_target`
value: ``"gt"`` (the label), ``"predicted"`` (top-1) or a class index. Methods with ``takes_target = False`` (the
gradient-free attention family) read no class at all and are given ``None``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mimlab.errors import UserError, did_you_mean
from mimlab.models.loading import LoadedModel
from mimlab.registry import Registry
from mimlab.spec import MethodSpec, check_layer, parse_spec

EXPLAINERS: Registry[type[Explainer]] = Registry("method")


class Explainer:
    """Base class. Subclasses set the metadata, parse their keys in :meth:`configure` and implement :meth:`explain`.

    Attributes:
        vit_only: the method reads transformer attention and fails on CNNs.
        cnn_only: the method reads CNN internals (FullGrad) and is refused on ViTs.
        gradient_free: no backward pass (attention family); such methods share one forward in ``explain_many``.
        keys: the spec keys the method accepts.
        reads_capture: the map is computed from an ``AttentionCapture`` (``from_capture``), so ``explain_many``
            can serve every such method from a single forward pass.
        takes_target: the map depends on the class explained (CAMs, TIBAV); ``False`` for attention maps.
    """

    vit_only: ClassVar[bool] = False
    cnn_only: ClassVar[bool] = False
    gradient_free: ClassVar[bool] = False
    takes_target: ClassVar[bool] = True
    keys: ClassVar[frozenset[str]] = frozenset()
    reads_capture: ClassVar[bool] = False

    def __init__(self, spec: MethodSpec, loaded: LoadedModel) -> None:
        self.spec = spec
        self.loaded = loaded
        self.model = loaded.module
        self.configure()

    def configure(self) -> None:
        """Parse and validate ``self.spec`` params (raise :class:`UserError` on bad values)."""

    def explain(self, images: Tensor, targets: Tensor | None) -> Tensor:
        raise NotImplementedError

    def __call__(self, images: Tensor, targets: Tensor | None = None) -> Tensor:
        """Maps for a batch.

        Args:
            images: [B,3,H,W] normalised with the model's mean/std.
            targets: LongTensor [B] of class indices, or ``None`` for the predicted (top-1) class.
        Returns:
            [B,H,W] float32 in [0, 1].
        """
        if images.dim() != 4:
            raise ValueError(f"images must be [B,3,H,W], got {tuple(images.shape)}")
        maps = self.explain(images, targets)
        return maps.detach().float().clamp_(0.0, 1.0)

    # -- helpers for subclasses ----------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        return self.spec.text or self.spec.name

    def layer_param(self, key: str = "layer") -> int:
        """The 1-based ``key`` of the spec (default: the last block) as a 0-based block index."""
        depth = self.loaded.depth
        layer = self.spec.get_int(key, depth)
        return check_layer(layer, depth, what=f"method '{self.text}': {key}")

    def choice_param(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.spec.params.get(key, default)
        if value not in choices:
            raise UserError(
                f"method '{self.text}': {key} must be one of {', '.join(choices)}, got '{value}'"
                f"{did_you_mean(value, choices)}"
            )
        return value


def fits(cls: type[Explainer], kind: str) -> bool:
    """Whether explainer class ``cls`` runs on a model of ``kind`` (``"vit"`` or ``"cnn"``)."""
    return not (cls.vit_only and kind != "vit") and not (cls.cnn_only and kind == "vit")


def build_explainer(spec_text: str, loaded: LoadedModel) -> Explainer:
    """Parse ``name[:key=value,...]`` and build the registered explainer for ``loaded``.

    Raises:
        UserError: unknown method (listing the valid ones and the nearest), unknown key, a bad value, a layer
            outside 1..depth, or a ViT-only method on a CNN.
    """
    import mimlab.explain  # noqa: F401 - registers every explainer

    spec = parse_spec(spec_text)
    cls = EXPLAINERS.get(spec.name)
    spec.check_keys(cls.keys)
    if cls.cnn_only and loaded.kind == "vit":
        vits = ", ".join(n for n in EXPLAINERS.names() if fits(EXPLAINERS.get(n), "vit"))
        raise UserError(f"method '{spec.name}' needs a CNN (it reads conv/batch-norm biases); "
                        f"model '{loaded.name}' is a ViT (methods for ViTs: {vits})")
    if cls.vit_only and loaded.kind != "vit":
        cams = ", ".join(n for n in EXPLAINERS.names() if fits(EXPLAINERS.get(n), "cnn"))
        raise UserError(
            f"method '{spec.name}' reads transformer attention and needs a ViT; model '{loaded.name}' is a CNN "
            f"(methods for CNNs: {cams})"
        )
    return cls(spec, loaded)


def patch_scores_to_map(
    scores: Tensor, grid: tuple[int, int], size: tuple[int, int], *, align_corners: bool = True,
    normalise: str = "before"
) -> Tensor:
    """Turn per-patch scores into image-resolution maps in [0, 1].

    Args:
        scores: [B,Np] row-major patch scores.
        grid: patch grid (h, w) with h*w = Np.
        size: output (H, W).
        align_corners: bilinear upsampling flag (thesis attention maps: True; TIBAV: False).
        normalise: ``"before"`` min-max the patch scores then upsample (thesis), ``"after"`` upsample then min-max
            over the image (Chefer).
    Returns:
        [B,H,W] in [0, 1].
    """
    from mimlab.explain.scores import minmax

    h, w = grid
    if scores.shape[1] != h * w:
        raise ValueError(f"{scores.shape[1]} patch scores do not fill a {h}x{w} grid")
    scores = scores.float()
    if normalise == "before":
        scores = minmax(scores)
    maps = scores.reshape(-1, 1, h, w)  # [B,Np] -> [B,1,h,w]
    maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=align_corners)[:, 0]  # -> [B,H,W]
    if normalise == "after":
        maps = minmax(maps)
    return maps


TARGET_MODES = ("gt", "predicted")
NO_TARGET = "none (gradient-free attention map: it explains no class)"


def parse_target(value: str | int, option: str = "--target") -> str | int:
    """``"gt"``, ``"predicted"`` or a class index ``>= 0`` from a CLI/YAML value.

    Raises:
        UserError: anything else.
    """
    text = str(value).strip()
    if text in TARGET_MODES:
        return text
    try:
        index = int(text)
    except ValueError:
        raise UserError(
            f"{option} must be gt, predicted or a class index, got '{value}'{did_you_mean(text, TARGET_MODES)}"
        ) from None
    if index < 0:
        raise UserError(f"{option} class index must be >= 0, got {index}")
    return index


def resolve_targets(target: str | int, predicted: Tensor, labels: Tensor | None, *, where: str = "") -> Tensor:
    """The class explained per image.

    Args:
        target: a :func:`parse_target` value.
        predicted: LongTensor [B], the top-1 classes.
        labels: LongTensor [B] ground-truth labels, or ``None`` when unknown.
        where: names the data source in the error message.
    Returns:
        LongTensor [B] on ``predicted``'s device.
    Raises:
        UserError: ``gt`` without labels.
    """
    if target == "predicted":
        return predicted
    if target == "gt":
        if labels is None:
            raise UserError(f"--target gt needs labels, but {where or 'the images'} have none "
                            "(use --target predicted or a class index)")
        return torch.as_tensor(labels, dtype=torch.long).to(predicted.device).reshape(-1)
    return torch.full_like(predicted, int(target))


def check_target_index(target: str | int, num_classes: int) -> None:
    """A class-index target must address one of the model's ``num_classes`` outputs."""
    if isinstance(target, int) and not 0 <= target < num_classes:
        raise UserError(f"--target {target} is outside 0..{num_classes - 1} (the model has {num_classes} outputs)")


def predicted_targets(logits: Tensor, targets: Tensor | None) -> Tensor:
    """``targets`` when given, else the top-1 class of ``logits`` [B,K] → LongTensor [B]."""
    if targets is not None:
        return torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
    return logits.argmax(-1)
