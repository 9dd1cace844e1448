"""Typed iBOT pretraining config: YAML + ``dotted.key=value`` overrides -> :class:`PretrainConfig`.

Defaults are the iBOT ViT-S/16 recipe as used by the thesis (methods-spec §4.5). Every section forbids unknown keys,
so a typo in an experiment YAML fails on the laptop with the offending key named, not hours later on the cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mimlab.errors import UserError, did_you_mean, read_text_file


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """The timm backbone shared by student and teacher (``kwargs`` go to ``create_backbone``).

    ``init``: a local checkpoint to start from (DINO/iBOT training checkpoint, released backbone, DeiT/MAE
    ``{'model': ...}``, timm state dict, ``platform pretrain`` checkpoint; see :mod:`mimlab.models.checkpoints`);
    ``None`` = random init. A relative path is made absolute at load time (trials run in other folders).
    ``init_from``: which network of a teacher/student checkpoint both start from.
    """

    timm_name: str = "vit_small_patch16_224"
    kwargs: dict[str, Any] = Field(default_factory=lambda: {"img_size": 224, "patch_size": 16})
    drop_path: float = Field(0.1, ge=0.0, lt=1.0)
    init: str | None = None
    init_from: Literal["teacher", "student"] = "teacher"

    @field_validator("init")
    @classmethod
    def _local_path(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if "://" in value:
            raise ValueError(f"model.init must be a local checkpoint file or folder, got '{value}'")
        return str(Path(value).expanduser().absolute())


class HeadConfig(_Section):
    """iBOT head (DINO head shared by [cls] and patch tokens)."""

    out_dim: int = Field(8192, ge=2)
    hidden_dim: int = Field(2048, ge=1)
    bottleneck_dim: int = Field(256, ge=1)
    norm_last_layer: bool = False
    shared: bool = True


class CropsConfig(_Section):
    """Multi-crop geometry; field names equal ``mimlab.data.transforms.MultiCropConfig``."""

    global_crops: int = Field(2, ge=1)
    global_size: int = Field(224, ge=8)
    local_crops: int = Field(6, ge=0)
    local_size: int = Field(96, ge=8)
    global_scale: tuple[float, float] = (0.25, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.25)
    blur_radius: tuple[float, float] = (0.1, 2.0)  # PIL Gaussian radius in pixels (DINO's, meant for 224/96 px)
    device: Literal["cpu", "gpu"] = "cpu"  # colour augmentations in the crop stage, or batched after the transfer

    @model_validator(mode="after")
    def _check_with_pipeline(self) -> CropsConfig:
        """The crop pipeline's own range checks (scales in (0, 1], lo <= hi), at load time."""
        from mimlab.data.transforms import MultiCropConfig

        MultiCropConfig(**self.model_dump())
        return self


class MaskingConfig(_Section):
    """Which patches of the student's global crops are masked (consumed by ``mimlab.masking.build_masking``)."""

    strategy: str | list[str] = "block"
    prob: float = Field(0.5, ge=0.0, le=1.0)
    ratio: tuple[float, float] = (0.1, 0.5)
    ratio_mode: Literal["per_image", "per_batch", "fixed"] = "per_image"
    fixed_ratio: float | None = Field(None, ge=0.0, le=1.0)
    legacy_cumulative_headsum_bug: bool = False

    @model_validator(mode="after")
    def _check(self) -> MaskingConfig:
        lo, hi = self.ratio
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"masking.ratio must be [low, high] with 0 <= low <= high <= 1, got {list(self.ratio)}")
        if self.ratio_mode == "fixed" and self.fixed_ratio is None:
            raise ValueError("masking.ratio_mode 'fixed' needs masking.fixed_ratio (a number in [0, 1])")
        if self.ratio_mode != "fixed" and self.fixed_ratio is not None:
            raise ValueError("masking.fixed_ratio is only used with masking.ratio_mode: fixed")
        return self


class LossConfig(_Section):
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.07, gt=0)
    warmup_teacher_temp: float = Field(0.04, gt=0)
    warmup_teacher_temp_epochs: int = Field(30, ge=0)
    teacher_patch_temp: float = Field(0.07, gt=0)
    warmup_teacher_patch_temp: float = Field(0.04, gt=0)
    lambda1: float = Field(1.0, ge=0)
    lambda2: float = Field(1.0, ge=0)
    center_momentum: float = Field(0.9, ge=0, le=1)


class ContrastiveConfig(_Section):
    """Dense contrastive third term (methods-spec §6); implemented in ``mimlab.pretrain.contrastive``."""

    k: int = Field(3, ge=1)
    tau: float = Field(0.2, gt=0)
    weight: float = Field(1.0, ge=0)
    source: Literal["student_head", "student_tokens", "teacher_probs"] = "student_head"
    legacy_formula: bool = False
    legacy_teacher_nograd: bool = False


class OptimConfig(_Section):
    epochs: int = Field(100, ge=1)
    batch_size_per_worker: int = Field(64, ge=1)
    lr: float = Field(0.0005, ge=0)
    min_lr: float = Field(1.0e-6, ge=0)
    warmup_epochs: int = Field(10, ge=0)
    weight_decay: float = Field(0.04, ge=0)
    weight_decay_end: float = Field(0.4, ge=0)
    momentum_teacher: float = Field(0.996, ge=0, le=1)
    clip_grad: float = Field(3.0, ge=0)
    freeze_last_layer: int = Field(1, ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"


class TrainConfig(_Section):
    num_workers: int = Field(1, ge=0)
    use_gpu: bool = False
    gpus_per_worker: float = Field(1, gt=0)
    storage_path: str = "./runs"
    max_failures: int = Field(1, ge=0)
    # Ray Train's placement of the workers' bundles: PACK (fewest nodes), SPREAD (across nodes, best effort),
    # STRICT_SPREAD (one worker per node, or the workers never start)
    placement: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"
    seed: int = 0
    steps_per_epoch: int | None = Field(None, ge=1)
    log_every: int = Field(10, ge=1)


class EvalConfig(_Section):
    knn_every: int = Field(1, ge=0)          # 0 = never
    knn_k: int = Field(20, ge=1)
    knn_train_limit: int = Field(2000, ge=1)
    knn_val_limit: int = Field(500, ge=1)
    probe_images: int = Field(4, ge=0)


class DataConfig(_Section):
    train: str | None = None                  # null = the embedded synthetic dataset
    val: str | None = None
    limit: int | None = Field(None, ge=1)
    # rows mixed together before cropping (one read window; memory ~ rows x encoded image size, ~450 MB at
    # ImageNet's 110 kB/JPEG); 0 = file order shuffled, rows in file order. = mimlab.data.pipeline.SHUFFLE_BUFFER
    shuffle_buffer: int = Field(4096, ge=0)


class PretrainConfig(_Section):
    """The whole pretraining run. ``model_dump(mode="json")`` is the resolved config logged and checkpointed."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    crops: CropsConfig = Field(default_factory=CropsConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    contrastive: ContrastiveConfig | None = None
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    data: DataConfig = Field(default_factory=DataConfig)

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        strategy = self.masking.strategy
        if isinstance(strategy, list) and len(strategy) != self.crops.global_crops:
            raise ValueError(
                f"masking.strategy lists {len(strategy)} per-crop specs but crops.global_crops is "
                f"{self.crops.global_crops}; give exactly one spec per global crop"
            )
        if isinstance(strategy, list) and not strategy:
            raise ValueError("masking.strategy is an empty list")
        patch = self.model.kwargs.get("patch_size")
        if isinstance(patch, int) and self.crops.global_size < patch:
            raise ValueError(f"crops.global_size {self.crops.global_size} is smaller than one patch "
                             f"(model.kwargs.patch_size {patch})")
        return self

    def resolved(self) -> dict[str, Any]:
        """The config as plain JSON-able data (tuples become lists)."""
        return self.model_dump(mode="json")


def _set_dotted(tree: dict[str, Any], key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            where = ".".join(parts[: i + 1])
            raise UserError(f"{source}: '{key}' goes inside '{where}', which is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``dotted.key=value``; the value is parsed as YAML (``0.1`` -> float, ``[a, b]`` -> list)."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key or any(not p for p in key.split(".")):
        raise UserError(f"override '{text}': expected dotted.key=value (e.g. optim.lr=0.001)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise UserError(f"override '{text}': value is not valid YAML ({err.__class__.__name__})") from None
    return key, value


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        parent_path = first["loc"][:-1]
        model: type[BaseModel] = PretrainConfig
        for part in parent_path:
            field = model.model_fields.get(str(part))
            ann = getattr(field, "annotation", None) if field else None
            sub = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)
                        and issubclass(a, BaseModel)), None)
            if sub is None:
                break
            model = sub
        hint = did_you_mean(str(first["loc"][-1]), model.model_fields)
        return f"{source}: unknown key '{loc}'{hint}; valid keys here: {', '.join(model.model_fields)}"
    msg = first["msg"].removeprefix("Value error, ")
    extra = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    if loc:
        return f"{source}: key '{loc}': {msg}{extra}"
    return f"{source}: {msg}{extra}"


def load_pretrain_config(path_or_dict: str | Path | dict[str, Any] | PretrainConfig | None = None,
                         overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Load a pretraining config from a YAML file or a dict and apply ``dotted.key=value`` overrides.

    Args:
        path_or_dict: YAML path, a (possibly partial) nested dict, an existing config, or ``None`` for defaults.
        overrides: ``["optim.lr=0.001", "masking.strategy=[attmask-raw, attmask-raw]"]``; values parsed as YAML.

    Raises:
        UserError: naming the file/key and what was expected (missing file, bad YAML, unknown key, bad value).
    """
    source = "config"
    if path_or_dict is None:
        tree: dict[str, Any] = {}
    elif isinstance(path_or_dict, PretrainConfig):
        tree = path_or_dict.resolved()
    elif isinstance(path_or_dict, dict):
        import copy

        tree = copy.deepcopy(path_or_dict)
    else:
        path = Path(path_or_dict)
        source = str(path)
        if not path.is_file():
            raise UserError(f"experiment file '{path}' does not exist")
        try:
            tree = yaml.safe_load(read_text_file(path, "experiment file")) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise UserError(f"{path}: expected a mapping of sections (model, optim, ...), got {type(tree).__name__}")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value, f"override '{text}'")
    try:
        return PretrainConfig.model_validate(tree)
    except ValidationError as err:
        raise UserError(_format_error(err, source)) from None
