"""mimlab — visual explanation and attention-guided masked image modelling on Ray.

The import package lives in the ``platform/`` source folder; the console script is ``platform``.
Nothing heavy is imported here: subpackages load torch, Ray and MLflow only when used.

The Python API (:mod:`mimlab.api`) is reachable from the top level, loaded on first use::

    mimlab.explain(images, model, methods=[...])      -> Explanation (maps per method, top-5)
    mimlab.evaluate_saliency(model, methods, metrics) -> SaliencyResult (table[method][metric], per-image rows)
    mimlab.pretrain(config, overrides=[...])          -> PretrainResult (checkpoint_dir, metrics)
    mimlab.knn(checkpoint)                            -> dict (results per k)
    mimlab.linear_probe(checkpoint, epochs=...)       -> dict (best_top1, curve)

``mimlab.explain`` and ``mimlab.pretrain`` are also subpackages: calling them calls the API function of that name,
and ``mimlab.explain.attention`` etc. keep working.
"""

import importlib
import sys
import types

__version__ = "0.1.0"

_API_FUNCTIONS = ("evaluate_saliency", "knn", "linear_probe")
_CALLABLE_SUBPACKAGES = ("explain", "pretrain")


class _CallableSubpackage(types.ModuleType):
    """A subpackage that, when called, runs the :mod:`mimlab.api` function of the same name."""

    def __call__(self, *args, **kwargs):
        from mimlab import api

        return getattr(api, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # the import system binds ``mimlab.explain`` / ``mimlab.pretrain`` here when the subpackage loads
        if name in _CALLABLE_SUBPACKAGES and type(value) is types.ModuleType:
            value.__class__ = _CallableSubpackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name in _API_FUNCTIONS or name == "Explanation":
        from mimlab import api

        return getattr(api, name)
    if name in _CALLABLE_SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'mimlab' has no attribute '{name}'")


__all__ = ["Explanation", "evaluate_saliency", "explain", "knn", "linear_probe", "pretrain"]
