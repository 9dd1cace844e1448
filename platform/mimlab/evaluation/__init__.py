"""Representation evaluation: weighted k-NN and linear probing of frozen features.

* :mod:`.knn` — ``knn_classify(train_f, train_y, test_f, test_y, ks, temperature, num_classes, chunk_size)``
  (pure tensors, one pass for every k, bounded memory).
* :mod:`.linear` — ``train_linear_probe`` (cached features) and ``fit_linear`` (per-epoch feed), ``ProbeResult``.
* :mod:`.features` — one-forward [cls] features; ``extract(module, batches, mean=, std=)`` for online k-NN.
* :mod:`.feeds` — images → features in-process (``workers=0``) or over a Ray Data actor pool (``workers>=1``).
* :mod:`.api` — ``run_knn`` / ``run_linear``: the CLI's functions, callable from a Tune trial.

Heavy modules (Ray, MLflow, data) are imported lazily; importing this package only pulls in torch.
"""

from mimlab.evaluation.features import extract
from mimlab.evaluation.knn import DEFAULT_KS, knn_classify
from mimlab.evaluation.linear import ProbeResult, fit_linear, train_linear_probe

__all__ = ["DEFAULT_KS", "ProbeResult", "extract", "fit_linear", "knn_classify", "train_linear_probe"]
