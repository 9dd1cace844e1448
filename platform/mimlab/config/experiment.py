"""Thesis experiments as YAML: a base pretraining config + a sweep, scaled by a profile.

An experiment file (``experiments/<name>.yaml``)::

    name: masking-layers
    description: AttMask-Raw_L for L = 1..12 plus the block and AttMask-High baselines
    thesis: Figure 19
    base: {masking: {prob: 0.5}}                  # a partial PretrainConfig
    sweep: {masking.strategy: [block, attmask-high]}   # dotted config key -> values; the grid of all axes
    cases:                                        # optional: named bundles of overrides, crossed with the grid
      - {label: "2 crops", set: {crops.global_crops: 2}}
    labels: {attmask-high: AttMask}               # optional display names for swept values
    evaluation: {knn_ks: [10, 20, 100, 200], linear_epochs: 100, cached_features: false}
    plot: {x: masking.strategy, metrics: [knn_top1, linear_top1], baselines: [block]}
    profiles: {demo: {set: {...}, sweep: {...}, cases: [...]}}   # per-experiment tweaks of a profile

Profiles (``experiments/profiles.yaml``) choose the scale: ``config`` (a partial PretrainConfig: model size, crops,
epochs, batch), ``evaluation`` overrides, ``resources`` and whether ``--data`` is required. The trial config of a
sweep point is ``defaults <- base <- profile.config <- experiment.profiles[P].set <- case <- grid point <- seed``.
Everything is validated on load: every sweep point of the chosen profile becomes a :class:`PretrainConfig`, so a
typo fails before Ray or MLflow start.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mimlab.config.pretrain import PretrainConfig, load_pretrain_config
from mimlab.errors import UserError, did_you_mean, read_text_file, unknown

PROFILE_FILE = "profiles.yaml"
# Files in experiments/ that are not sweeps (owned by `platform pretrain`).
_NOT_SWEEPS = ("pretrain-",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvaluationSpec(_Strict):
    """How each trial's checkpoint is evaluated after pretraining."""

    knn_ks: list[int] = Field(default_factory=lambda: [10, 20, 100, 200])
    knn_temperature: float = Field(0.07, gt=0)
    linear: bool = True
    linear_epochs: int = Field(100, ge=1)
    linear_lr: float = Field(0.003, gt=0)  # base lr per 256 images (thesis/DINO: 0.003 x batch/256)
    cached_features: bool = False
    train_limit: int | None = Field(None, ge=1)
    val_limit: int | None = Field(None, ge=1)
    batch_size: int = Field(256, ge=1)
    localisation: bool = False
    """Also score the final [cls] attention of the teacher against the val object masks (``cls_pointing``,
    ``cls_energy``: pointing game and energy inside the mask, on the ``val_limit`` images the k-NN uses). Needs
    masks: the embedded dataset has them."""


class PlotSpec(_Strict):
    """The parent run's figure: metrics vs the swept values, baselines drawn as horizontal lines."""

    x: str | None = None
    metrics: list[str] = Field(default_factory=lambda: ["knn_top1", "linear_top1"])
    baselines: list[str] = Field(default_factory=list)
    xlabel: str | None = None


class Case(_Strict):
    label: str
    set: dict[str, Any] = Field(default_factory=dict)


class ExperimentProfile(_Strict):
    """Per-experiment adjustments to a shared profile."""

    set: dict[str, Any] = Field(default_factory=dict)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    cases: list[Case] | None = None
    evaluation: dict[str, Any] = Field(default_factory=dict)


class Resources(_Strict):
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0)
    max_concurrent: int | None = Field(None, ge=1)


class Profile(_Strict):
    """A scale: demo (embedded data, CPU), cifar10, imagenet-20pct, imagenet-full."""

    description: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    data_required: bool = False
    caveat: str | None = None
    seeds: int = Field(1, ge=1)
    """Seeds per sweep point when ``--seeds`` is not given."""


class ExperimentFile(_Strict):
    name: str
    description: str = ""
    thesis: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    cases: list[Case] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    plot: PlotSpec = Field(default_factory=PlotSpec)
    default_profile: str = "demo"
    profiles: dict[str, ExperimentProfile] = Field(default_factory=dict)


@dataclass(frozen=True)
class SweepPoint:
    """One trial of the sweep before seeds: its display label and the dotted overrides it applies."""

    index: int
    label: str
    overrides: dict[str, Any]
    config: dict[str, Any]  # the resolved PretrainConfig as JSON-able data (seed 0, data unset)


@dataclass
class Experiment:
    """A loaded, validated experiment at one profile."""

    name: str
    path: Path
    spec: ExperimentFile
    profile_name: str
    profile: Profile
    evaluation: EvaluationSpec
    points: list[SweepPoint] = field(default_factory=list)

    @property
    def sweep_keys(self) -> list[str]:
        keys: list[str] = []
        for point in self.points:
            keys.extend(k for k in point.overrides if k not in keys)
        return keys


# ----------------------------------------------------------------------------------------------------------- paths
def experiments_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where experiment files live: argument, ``$MIMLAB_EXPERIMENTS_DIR``, ``./experiments``, else the repo's."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MIMLAB_EXPERIMENTS_DIR")
    if env:
        return Path(env)
    local = Path("experiments")
    if (local / PROFILE_FILE).is_file():
        return local.resolve()
    return Path(__file__).resolve().parents[3] / "experiments"


def list_experiments(root: Path | None = None) -> list[str]:
    """Names of the sweep experiments (``experiments/*.yaml`` minus profiles and pretrain recipes)."""
    root = experiments_dir(root)
    if not root.is_dir():
        return []
    return sorted(p.stem for p in root.glob("*.yaml")
                  if p.name != PROFILE_FILE and not p.name.startswith(_NOT_SWEEPS) and _is_sweep(p))


def _is_sweep(path: Path) -> bool:
    """Anything but a pretraining config (top-level ``model:``/``optim:``… sections belong to `platform pretrain`)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return True   # let load_experiment report the broken file
    return not (isinstance(data, dict) and any(key in PretrainConfig.model_fields for key in data))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(read_text_file(path, "YAML file"))
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def _model_error(err: ValidationError, source: str, model: type[BaseModel]) -> UserError:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        key = str(first["loc"][-1])
        fields: Any = model.model_fields if len(first["loc"]) == 1 else {}
        hint = did_you_mean(key, fields) if fields else ""
        valid = f"; valid keys: {', '.join(fields)}" if fields else ""
        return UserError(f"{source}: unknown key '{loc}'{hint}{valid}")
    return UserError(f"{source}: key '{loc}': {first['msg']}")


def load_profiles(root: Path | None = None) -> dict[str, Profile]:
    """Read and validate ``experiments/profiles.yaml``."""
    path = experiments_dir(root) / PROFILE_FILE
    if not path.is_file():
        raise UserError(f"profiles file '{path}' does not exist")
    raw = _read_yaml(path)
    out: dict[str, Profile] = {}
    for name, body in raw.items():
        try:
            out[name] = Profile.model_validate(body or {})
        except ValidationError as err:
            raise _model_error(err, f"{path}: profile '{name}'", Profile) from None
    return out


# ------------------------------------------------------------------------------------------------- config fields
def config_keys() -> list[str]:
    """Every dotted leaf key of :class:`PretrainConfig` (``optim.lr``, ``contrastive.k`` ...)."""
    keys: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            sub = _submodel(info.annotation)
            if sub is not None:
                keys.append(f"{prefix}{name}")
                walk(sub, f"{prefix}{name}.")
            else:
                keys.append(f"{prefix}{name}")

    walk(PretrainConfig, "")
    return keys


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for arg in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def check_key(key: str, source: str) -> None:
    """Fail unless ``key`` names a config field (a key under a free-form dict such as ``model.kwargs.x`` is fine)."""
    model: type[BaseModel] | None = PretrainConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        assert model is not None
        info = model.model_fields.get(part)
        if info is None:
            raise UserError(f"{source}: '{key}' is not a config field{did_you_mean(key, config_keys())}")
        sub = _submodel(info.annotation)
        if sub is None:
            is_dict = "dict" in str(info.annotation)
            if i < len(parts) - 1 and not is_dict:
                raise UserError(f"{source}: '{key}': '{'.'.join(parts[:i + 1])}' is a value, not a section")
            return
        model = sub


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``over`` wins; lists and scalars are replaced, not merged."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(tree)
    for key, value in overrides.items():
        _set_dotted(out, key, value)
    return out


# ------------------------------------------------------------------------------------------------------- labels
def value_text(value: Any) -> str:
    """A compact, stable text for a swept value (used for labels, params and MLflow filters)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "+".join(value)
    if value is None:
        return "none"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _axis_label(key: str, value: Any, labels: dict[str, str], single: bool) -> str:
    text = value_text(value)
    if text in labels:
        return labels[text]
    return text if single else f"{key.rsplit('.', 1)[-1]}={text}"


# --------------------------------------------------------------------------------------------------------- load
def load_experiment(name_or_path: str | os.PathLike, profile: str | None = None, *,
                    root: str | os.PathLike | None = None, validate_masking: bool = True) -> Experiment:
    """Load ``experiments/<name>.yaml`` (or a path), apply a profile and validate every sweep point.

    Args:
        name_or_path: an experiment name (``masking-layers``) or a path to a YAML file.
        profile: profile name; ``None`` = the experiment's ``default_profile``.
        root: experiments folder (default: see :func:`experiments_dir`).
        validate_masking: also build each point's masking strategies (catches an unknown strategy or a layer
            beyond the model depth) when ``mimlab.masking`` is importable.

    Raises:
        UserError: unknown experiment/profile (listing the valid ones), unknown keys, a sweep key that is not a
            config field (suggesting the nearest), an invalid merged config at any sweep point.
    """
    text = os.fspath(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise UserError(f"experiment file '{path}' does not exist")
        folder = Path(root) if root else path.parent
    else:
        folder = experiments_dir(root)
        path = folder / f"{text}.yaml"
        if not path.is_file() or text not in list_experiments(folder):
            raise unknown("experiment", text, list_experiments(folder))
    try:
        spec = ExperimentFile.model_validate(_read_yaml(path))
    except ValidationError as err:
        raise _model_error(err, str(path), ExperimentFile) from None

    profiles = load_profiles(folder)
    profile_name = profile or spec.default_profile
    if profile_name not in profiles:
        raise unknown("profile", profile_name, profiles)
    for extra in spec.profiles:
        if extra not in profiles:
            raise UserError(f"{path}: profiles: '{extra}' is not a profile{did_you_mean(extra, profiles)}; "
                            f"valid: {', '.join(sorted(profiles))}")
    prof = profiles[profile_name]
    local = spec.profiles.get(profile_name, ExperimentProfile())

    eval_tree = deep_merge(deep_merge(spec.evaluation.model_dump(), prof.evaluation), local.evaluation)
    try:
        evaluation = EvaluationSpec.model_validate(eval_tree)
    except ValidationError as err:
        raise _model_error(err, f"{path}: evaluation (profile '{profile_name}')", EvaluationSpec) from None

    sweep = dict(spec.sweep)
    for key, values in local.sweep.items():
        sweep[key] = values
    cases = local.cases if local.cases is not None else spec.cases
    for key, values in sweep.items():
        check_key(key, f"{path}: sweep")
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: sweep key '{key}' needs a non-empty list of values")
    for key in local.set:
        check_key(key, f"{path}: profiles.{profile_name}.set")
    for case in cases:
        for key in case.set:
            check_key(key, f"{path}: case '{case.label}'")
    if spec.plot.x and spec.plot.x not in sweep and not any(spec.plot.x in c.set for c in cases):
        raise UserError(f"{path}: plot.x '{spec.plot.x}' is not a swept key{did_you_mean(spec.plot.x, sweep)}")

    tree = deep_merge(spec.base, prof.config)
    tree = apply_overrides(tree, local.set)
    # The base must itself be a valid config (catches typos in base/profile before the per-point checks).
    load_pretrain_config(tree)
    if not sweep and not cases:
        raise UserError(f"{path}: no 'sweep' and no 'cases' — nothing to run")

    keys = list(sweep)
    grid = list(itertools.product(*(sweep[k] for k in keys))) if keys else [()]
    single = len(keys) == 1 and not cases
    points: list[SweepPoint] = []
    for case in (cases or [None]):
        for values in grid:
            overrides: dict[str, Any] = dict(case.set) if case else {}
            overrides.update(dict(zip(keys, values, strict=True)))
            parts = [case.label] if case else []
            parts += [_axis_label(k, v, spec.labels, single) for k, v in zip(keys, values, strict=True)]
            label = " · ".join(parts)
            merged = apply_overrides(tree, overrides)
            try:
                cfg = load_pretrain_config(merged)
            except UserError as err:
                raise UserError(f"{path}: sweep point '{label}' (profile '{profile_name}'): {err}") from None
            if validate_masking:
                _check_masking(cfg, f"{path}: sweep point '{label}'")
            points.append(SweepPoint(len(points), label, overrides, cfg.resolved()))
    labels = [p.label for p in points]
    dupes = {lab for lab in labels if labels.count(lab) > 1}
    if dupes:
        raise UserError(f"{path}: sweep points share the label(s) {sorted(dupes)}; give distinct labels")
    return Experiment(spec.name, path, spec, profile_name, prof, evaluation, points)


def _check_masking(cfg: PretrainConfig, source: str) -> None:
    """Build the point's masking strategies so an unknown strategy or too-deep layer fails before any trial."""
    try:
        from mimlab.masking import build_masking
    except ImportError:  # the masking family is optional at load time
        return
    depth = int(cfg.model.kwargs.get("depth", 12))
    try:
        build_masking(cfg.masking, num_global_crops=cfg.crops.global_crops, depth=depth,
                      contrastive=cfg.contrastive is not None)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None


def trial_config(point: SweepPoint, *, seed: int, data_train: str | None = None,
                 data_val: str | None = None) -> PretrainConfig:
    """The PretrainConfig a trial runs: the point's config with its seed and data."""
    tree = copy.deepcopy(point.config)
    tree["train"]["seed"] = seed
    if data_train is not None:
        tree["data"]["train"] = data_train
    if data_val is not None:
        tree["data"]["val"] = data_val
    return load_pretrain_config(tree)
