"""Saliency explainers (CAM family, attention family, TIBAV) and the shared attention scores.

Importing the package registers every explainer in :data:`EXPLAINERS` (so names resolve on Ray workers too).
"""

from mimlab.explain import attention, cam, tibav  # noqa: F401 - registration side effect
from mimlab.explain.base import EXPLAINERS, Explainer, build_explainer
from mimlab.explain.many import explain_many

__all__ = ["EXPLAINERS", "Explainer", "build_explainer", "explain_many"]
