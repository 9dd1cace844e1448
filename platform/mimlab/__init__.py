"""mimlab — visual explanation and attention-guided masked image modelling on Ray.

The import package lives in the ``platform/`` source folder; the console script is ``platform``.
Nothing heavy is imported here: subpackages load torch, Ray and MLflow only when used.
"""

__version__ = "0.1.0"
