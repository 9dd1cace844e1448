"""Representation evaluation: weighted k-NN and linear probing of frozen features.

Pure tensor cores (:mod:`.knn`, :mod:`.linear`), feature extraction (:mod:`.features`) and the entry points used
by the CLI and by Tune trials (:mod:`.api`: ``run_knn``, ``run_linear``).
"""

from mimlab.evaluation.knn import DEFAULT_KS, knn_classify

__all__ = ["DEFAULT_KS", "knn_classify"]
