"""Weighted k-NN classification of frozen features (DINO / iBOT ``eval_knn`` protocol), pure tensors.

Every query votes with its ``max(ks)`` nearest bank features (cosine similarity = dot product of L2-normalised
features); neighbour ``j`` adds ``exp(sim_j / T)`` to the score of its class. All ``ks`` are evaluated from the
same sorted neighbour list, so the bank is scanned once.

Memory is bounded: queries are processed ``chunk_size`` at a time (by default sized to a fixed block budget) and the bank ``bank_chunk_size`` rows at a time,
keeping a running top-``max(ks)`` per query. Peak extra memory is ``chunk_size × (bank_chunk_size + max(ks))``
floats, independent of the bank size (a 1.28M × 384 bank never needs a 1.28M × 50k similarity matrix).

Tie rules (documented so that chunking cannot change results): among equal class scores the lower class index
ranks first (stable sort); among neighbours with exactly equal similarity the order is whatever ``torch.topk``
returns, which only matters for duplicated bank rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mimlab.errors import UserError

DEFAULT_KS: tuple[int, ...] = (10, 20, 100, 200)
BLOCK_ELEMENTS = {False: 2**26, True: 2**28}
"""Similarity-block budget (elements) that sizes the automatic query chunk: ``{on_cuda: elements}``."""


def check_bank(
    train_features: Tensor,
    train_labels: Tensor | None,
    test_features: Tensor,
    test_labels: Tensor | None,
    ks: Sequence[int],
) -> None:
    """Raise a one-line :class:`UserError` for inputs k-NN cannot evaluate.

    Args:
        train_features: ``[Ntrain, D]`` bank.
        train_labels: ``[Ntrain]`` int labels (``None`` or negative = missing).
        test_features: ``[Ntest, D]`` queries.
        test_labels: ``[Ntest]`` int labels.
        ks: neighbour counts.
    """
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise UserError(
            f"k-NN features must be 2-D [N, D]; got bank {tuple(train_features.shape)} and "
            f"queries {tuple(test_features.shape)}")
    if train_features.shape[1] != test_features.shape[1]:
        raise UserError(
            f"k-NN feature-dimension mismatch: the bank has {train_features.shape[1]}-d features but the "
            f"queries have {test_features.shape[1]}-d (extract both with the same model)")
    for name, feats, labels in (("train (bank)", train_features, train_labels),
                                ("val (queries)", test_features, test_labels)):
        if labels is None:
            raise UserError(f"k-NN needs labels for the {name} split; the data has none")
        if labels.ndim != 1 or labels.shape[0] != feats.shape[0]:
            raise UserError(
                f"k-NN {name} labels must be [N] = [{feats.shape[0]}]; got {tuple(labels.shape)}")
        if labels.numel() and int(labels.min()) < 0:
            raise UserError(f"k-NN {name} split has images without a label (label < 0)")
    if not ks:
        raise UserError("k-NN needs at least one k (--k 10,20,100,200)")
    if min(ks) < 1:
        raise UserError(f"k-NN k must be >= 1; got {sorted(ks)}")
    if max(ks) > train_features.shape[0]:
        raise UserError(
            f"the k-NN bank has {train_features.shape[0]} images but k={max(ks)} was requested; "
            f"use --k values <= {train_features.shape[0]} or a larger train split")
    if test_features.shape[0] == 0:
        raise UserError("k-NN has no query images (the val split is empty)")


def topk_neighbours(
    train_features: Tensor, queries: Tensor, k: int, bank_chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` most similar bank rows of each query, best first, scanning the bank in chunks.

    Args:
        train_features: ``[Ntrain, D]`` bank.
        queries: ``[Q, D]`` query chunk.
        k: neighbours to keep (``<= Ntrain``).
        bank_chunk_size: bank rows per matmul; ``None`` = the whole bank in one matmul.

    Returns:
        ``(similarities [Q, k], indices [Q, k])`` sorted by decreasing similarity.
    """
    n_train = train_features.shape[0]
    step = n_train if not bank_chunk_size or bank_chunk_size >= n_train else bank_chunk_size
    best_sim: Tensor | None = None
    best_idx: Tensor | None = None
    for start in range(0, n_train, step):
        sim = queries @ train_features[start:start + step].T  # [Q,D] @ [D,b] -> [Q,b]
        kk = min(k, sim.shape[1])
        sim, idx = sim.topk(kk, dim=1, largest=True, sorted=True)  # [Q,b] -> [Q,kk]
        idx = idx + start
        if best_sim is None:
            best_sim, best_idx = sim, idx
            continue
        cand_sim = torch.cat([best_sim, sim], dim=1)  # [Q,k+kk]
        cand_idx = torch.cat([best_idx, idx], dim=1)  # [Q,k+kk]
        best_sim, order = cand_sim.topk(min(k, cand_sim.shape[1]), dim=1, largest=True, sorted=True)
        best_idx = cand_idx.gather(1, order)  # [Q,k+kk] -> [Q,k]
    assert best_sim is not None and best_idx is not None
    return best_sim, best_idx


def vote(
    similarities: Tensor, neighbour_labels: Tensor, ks: Sequence[int], num_classes: int, temperature: float,
) -> dict[int, Tensor]:
    """Class rankings for every ``k`` from one sorted neighbour list.

    Args:
        similarities: ``[Q, K]`` sorted decreasing, ``K >= max(ks)``.
        neighbour_labels: ``[Q, K]`` class of each neighbour.
        ks: neighbour counts, evaluated incrementally (the scores for k=20 extend those for k=10).
        num_classes: C.
        temperature: T of the ``exp(sim / T)`` weight.

    Returns:
        ``{k: class indices [Q, min(5, C)]}`` best first (ties: lower class index first).
    """
    # exp((sim - best) / T): the same ranking as exp(sim / T) (one factor per query), but it never overflows, so a
    # tiny T still ranks by the nearest neighbours instead of tying every class at inf
    weights = ((similarities - similarities[:, :1]) / temperature).exp()  # [Q,K]
    scores = torch.zeros(similarities.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    ranked: dict[int, Tensor] = {}
    done = 0
    for k in sorted(set(ks)):
        # add neighbours done..k-1 to the running class scores: [Q,k-done] -> [Q,C]
        scores.scatter_add_(1, neighbour_labels[:, done:k], weights[:, done:k])
        done = k
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # [Q,C]
        ranked[k] = order[:, :min(5, num_classes)]
    return ranked


@torch.no_grad()
def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    bank_chunk_size: int | None = 65536,
) -> dict[int, dict[str, float]]:
    """Weighted k-NN top-1/top-5 accuracy (%) for each ``k`` in one pass over the bank.

    Features are used as given; pass L2-normalised features for cosine similarity (DINO protocol).

    Args:
        train_features: ``[Ntrain, D]`` bank (the train split).
        train_labels: ``[Ntrain]`` int64 labels.
        test_features: ``[Ntest, D]`` queries (the val split).
        test_labels: ``[Ntest]`` int64 labels.
        ks: neighbour counts, e.g. ``(10, 20, 100, 200)``.
        temperature: T in the vote weight ``exp(sim / T)``.
        num_classes: C; ``None`` = 1 + the largest label seen.
        chunk_size: queries per chunk; ``None`` = as many as keep one similarity block within
            :data:`BLOCK_ELEMENTS` (256 MiB of float32 on CPU, 1 GiB on CUDA).
        bank_chunk_size: bank rows per similarity block; ``None`` = whole bank.

    Returns:
        ``{k: {"top1": %, "top5": %}}`` for every ``k`` (top-5 uses ``min(5, C)`` classes).
    """
    ks = sorted({int(k) for k in ks})
    check_bank(train_features, train_labels, test_features, test_labels, ks)
    train_labels = train_labels.long().to(train_features.device)
    test_labels = test_labels.long().to(test_features.device)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k_max = ks[-1]
    if chunk_size is None:
        cols = min(bank_chunk_size or train_features.shape[0], train_features.shape[0]) + k_max
        chunk_size = max(1, BLOCK_ELEMENTS[train_features.device.type == "cuda"] // cols)
    # hit counters stay on the features' device: no host sync per chunk
    hits1 = {k: torch.zeros((), dtype=torch.long, device=test_features.device) for k in ks}
    hits5 = {k: torch.zeros((), dtype=torch.long, device=test_features.device) for k in ks}
    for start in range(0, test_features.shape[0], chunk_size):
        queries = test_features[start:start + chunk_size]  # [Q,D]
        targets = test_labels[start:start + chunk_size]  # [Q]
        sims, idx = topk_neighbours(train_features, queries, k_max, bank_chunk_size)  # [Q,kmax]
        neighbour_labels = train_labels[idx]  # [Ntrain][Q,kmax] -> [Q,kmax]
        for k, top in vote(sims, neighbour_labels, ks, num_classes, temperature).items():
            correct = top.eq(targets[:, None])  # [Q,5]
            hits1[k] += correct[:, 0].sum()
            hits5[k] += correct.any(dim=1).sum()
    n = test_features.shape[0]
    return {k: {"top1": 100.0 * int(hits1[k]) / n, "top5": 100.0 * int(hits5[k]) / n} for k in ks}
