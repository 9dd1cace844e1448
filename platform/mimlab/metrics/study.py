"""Saliency studies: a YAML grid of (model, method) pairs scored with the same metrics on the same images.

A study file (``experiments/studies/*.yaml``)::

    name: table10
    params: {supervised: deit_base_patch16_224, supervised_weights: null, limit: 1000}
    limit: ${limit}
    metrics: [ad, ai, insertion, deletion]
    target: gt              # gt (default, the thesis protocol) | predicted | a class index
    channel_order: rgb      # rgb | bgr_legacy (thesis bug B1)
    models:
      - {label: Supervised, model: "${supervised}", weights: "${supervised_weights}"}
    methods: [raw, raw-log, {label: "Rollout 10-12", spec: "rollout:layers=10-12"}]

``${key}`` is replaced by the study's ``params`` (overridden with ``--param key=value``); a value that is
exactly ``${key}`` keeps the parameter's type (``null``, numbers). Unknown keys anywhere are errors.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mimlab.errors import UserError, read_text_file

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class StudyMethod(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: str = Field(description="saliency method spec (raw:layer=12)")
    label: str | None = Field(None, description="row name in tables (default: the spec)")

    @property
    def name(self) -> str:
        return self.label or self.spec


class StudyModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(description="column name in tables")
    model: str = Field(description="timm name, pretrain checkpoint or package.module:callable")
    weights: str | None = Field(None, description="local weights file")
    methods: list[StudyMethod] | None = Field(
        None, description="methods for this model (default: the study's)"
    )

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v: Any) -> Any:
        return _method_list(v) if v is not None else v


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    data: str | None = None
    split: str | None = None
    limit: int | None = Field(None, ge=1)
    img_size: int | None = Field(None, ge=8)
    batch_size: int = Field(16, ge=1)
    metrics: list[str] = Field(default_factory=lambda: ["ad", "ai", "insertion", "deletion"])
    target: str | int = Field("gt", description="class the target-taking methods explain: gt | predicted | index")
    channel_order: Literal["rgb", "bgr_legacy"] = Field("rgb", description="bgr_legacy replicates thesis bug B1")
    models: list[StudyModel] = Field(min_length=1)
    methods: list[StudyMethod] = Field(default_factory=list)

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v: Any) -> Any:
        return _method_list(v)

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, v: Any) -> Any:
        from mimlab.explain.base import parse_target

        try:
            return parse_target(v, option="target")
        except UserError as err:
            raise ValueError(str(err)) from None

    def pairs(self) -> list[tuple[StudyModel, StudyMethod]]:
        """Every (model, method) pair of the grid, models in file order."""
        return [(m, meth) for m in self.models for meth in (m.methods or self.methods)]


def _method_list(v: Any) -> Any:
    if isinstance(v, list):
        return [{"spec": item} if isinstance(item, str) else item for item in v]
    return v


def _substitute(node: Any, params: dict[str, Any], where: str) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, params, where) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, params, where) for v in node]
    if isinstance(node, str):
        for key in _REF.findall(node):
            if key not in params:
                raise UserError(
                    f"study '{where}': '${{{key}}}' is not in params (known: {', '.join(params) or 'none'})"
                )
        whole = _REF.fullmatch(node)
        if whole:
            return params[whole.group(1)]
        return _REF.sub(lambda m: "" if params[m.group(1)] is None else str(params[m.group(1)]), node)
    return node


def parse_overrides(items: list[str], known: dict[str, Any], where: str) -> dict[str, Any]:
    """``["key=value", ...]`` → dict; values parsed as YAML scalars (``null``, ``3``); keys must be known."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UserError(f"--param expects KEY=VALUE, got '{item}'")
        if key not in known:
            raise UserError(f"study '{where}' has no param '{key}'; params: {', '.join(known) or 'none'}")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as err:
            raise UserError(f"--param '{item}': the value is not valid YAML ({err.__class__.__name__})") from None
    return out


def load_study(
    path: str | Path, overrides: list[str] | None = None, *, limit: int | None = None
) -> StudyConfig:
    """Read, substitute and validate a study YAML.

    Raises:
        UserError: missing/unreadable file, unknown keys or params, bad values — naming the file and key.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"study file '{path}' does not exist")
    try:
        raw = yaml.safe_load(read_text_file(path, "study file"))
    except yaml.YAMLError as err:
        raise UserError(f"study file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"study file '{path}' must hold a mapping (name, models, methods, ...)")
    params = dict(raw.get("params") or {})
    params.update(parse_overrides(list(overrides or []), params, str(path)))
    body = _substitute({k: v for k, v in raw.items() if k != "params"}, params, str(path))
    body["params"] = params
    if limit is not None:
        body["limit"] = limit
    try:
        cfg = StudyConfig.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UserError(f"study file '{path}': key '{loc}': {first['msg']}") from None
    if not cfg.pairs():
        raise UserError(f"study file '{path}': no methods (set 'methods' or per-model 'methods')")
    return cfg


def combined_tables(
    results: dict[str, dict[str, dict[str, float]]], methods: list[str], higher: dict[str, bool]
) -> dict[str, dict[str, dict[str, float]]]:
    """Reorganise ``{model: {method: {metric: mean}}}`` into ``{metric: {method: {model: mean}}}``."""
    metrics = list(higher)
    return {
        k: {m: {model: results[model].get(m, {}).get(k, math.nan) for model in results} for m in methods}
        for k in metrics
    }


ALPHA = 0.05


def best_methods(
    results: dict[str, dict[str, dict[str, float]]], methods: list[str], higher: dict[str, bool]
) -> dict[str, dict[str, str]]:
    """``{metric: {model: best method}}`` (the highest or lowest finite mean)."""
    best: dict[str, dict[str, str]] = {}
    for metric, table in combined_tables(results, methods, higher).items():
        best[metric] = {}
        for model in results:
            vals = [(table[m][model], m) for m in methods if not math.isnan(table[m][model])]
            if vals:
                best[metric][model] = (max if higher[metric] else min)(vals)[1]
    return best


def significance(
    values: dict[str, dict[str, dict[str, list[float]]]], methods: list[str], higher: dict[str, bool]
) -> dict[str, Any]:
    """Each method against the best of its column, by :func:`mimlab.stats.paired_test` over the same images.

    Args:
        values: ``{model: {method: {metric: per-image values}}}`` (images in the same order for every method).
    Returns:
        ``{"test", "alpha", "tests": {metric: {model: {method: {"vs", "p", "significant", ...}}}}}``.
    """
    from mimlab.stats import PAIRED_TEST, paired_test

    means = {mo: {me: {k: _nanmean(v) for k, v in row.items()} for me, row in rows.items()}
             for mo, rows in values.items()}
    tests: dict[str, dict[str, dict[str, Any]]] = {}
    for metric, per_model in best_methods(means, methods, higher).items():
        tests[metric] = {}
        for model, best in per_model.items():
            tests[metric][model] = {}
            for m in methods:
                if m == best or m not in values[model]:
                    continue
                res = paired_test(values[model][m][metric], values[model][best][metric])
                res.pop("test")
                p = res["p"]
                tests[metric][model][m] = {"vs": best, **res,
                                           "significant": bool(not math.isnan(p) and p < ALPHA)}
    return {"test": PAIRED_TEST, "alpha": ALPHA, "tests": tests}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def format_study(
    results: dict[str, dict[str, dict[str, float]]],
    methods: list[str],
    higher: dict[str, bool],
    *,
    intervals: dict[str, dict[str, dict[str, tuple[float, float]]]] | None = None,
    significance: dict[str, Any] | None = None,
) -> str:
    """Combined table text: a block per metric, rows methods, columns models, best per column starred.

    With ``intervals`` each cell shows ``mean [low, high]``; with ``significance`` a method whose difference from
    the column's best is not significant is marked ``=`` (the test is named under the table).
    """
    blocks = []
    tables = combined_tables(results, methods, higher)
    models = list(results)
    width = max([len("method")] + [len(m) for m in methods])
    bests = best_methods(results, methods, higher)
    tests = (significance or {}).get("tests", {})
    for metric, table in tables.items():
        up = higher[metric]
        best = bests.get(metric, {})

        def cell(m: str, model: str) -> str:
            v = table[m][model]
            if math.isnan(v):
                return "-"
            text = f"{v:.4f}"
            if intervals and m in intervals.get(model, {}):
                lo, hi = intervals[model][m][metric]
                text += f" [{lo:.4f}, {hi:.4f}]"
            if best.get(model) == m:
                return text + "*"
            test = tests.get(metric, {}).get(model, {}).get(m)
            return text + ("=" if test is not None and not test["significant"] else " ")

        cells = {m: [cell(m, model) for model in models] for m in methods}
        cols = [max([9, len(model)] + [len(cells[m][i]) for m in methods]) for i, model in enumerate(models)]
        lines = [
            f"{metric} {'↑ higher is better' if up else '↓ lower is better'}",
            "  ".join([f"{'method':<{width}}"] + [f"{m:>{c}}" for m, c in zip(models, cols)]),
        ]
        for m in methods:
            lines.append("  ".join([f"{m:<{width}}"] + [f"{t:>{c}}" for t, c in zip(cells[m], cols)]))
        blocks.append("\n".join(lines))
    foot = "\n(* best per column"
    if intervals:
        foot += "; [..] 95 % percentile-bootstrap interval over images"
    if significance:
        foot += (f"; = not significantly different from the column's best, {significance['test']}, "
                 f"p >= {significance['alpha']}, no multiple-comparison correction")
    return "\n\n".join(blocks) + foot + ")"
