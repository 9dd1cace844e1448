"""Faithfulness (AD, AI, insertion, deletion, ROAD) and localisation metrics of saliency maps.

Every metric registers in :data:`METRICS` and is built from a spec text (``insertion:step=16``) with
:func:`build_metric`; all implementations are imported here so names resolve on Ray workers too.
"""

from __future__ import annotations

from mimlab.metrics import faithfulness, localisation, road  # noqa: F401  (registration)
from mimlab.metrics.base import Metric, check_inputs
from mimlab.metrics.registry import METRICS
from mimlab.spec import parse_spec

DEFAULT_METRICS = ("ad", "ai", "insertion", "deletion")


def build_metric(text: str) -> Metric:
    """Build one metric from its spec text (``deletion:substrate=black``)."""
    spec = parse_spec(text)
    return METRICS.get(spec.name)(spec)


def split_metric_list(text: str) -> list[str]:
    """Split ``ad,ai,insertion:step=16,substrate=zero,deletion`` into specs.

    A comma separates metrics, except that a ``key=value`` item without its own name joins the spec before it.
    """
    specs: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" in item and ":" not in item and specs:
            specs[-1] = f"{specs[-1]},{item}"
        else:
            specs.append(item)
    return specs


__all__ = ["METRICS", "DEFAULT_METRICS", "Metric", "build_metric", "check_inputs", "split_metric_list"]
