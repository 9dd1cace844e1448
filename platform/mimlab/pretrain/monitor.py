"""Training-time diagnostics: online k-NN top-1 of the teacher and the last-layer [cls] attention of probe images
(thesis Figure 22). Pure torch/numpy; the caller logs the results."""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

from mimlab.pretrain.build import IMAGENET_MEAN, IMAGENET_STD


def _eval_views(tables, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Eval views ``uint8 [N,S,S,3]``, labels ``[N]`` (-1 = none) and paths of streamed row tables, decoding one
    table at a time (only the sampled rows are ever decoded)."""
    from mimlab.data.sources import decode_rgb
    from mimlab.data.transforms import eval_transform

    views, labels, paths = [], [], []
    for table in tables:
        cols = table.to_pydict()
        views.extend(eval_transform(decode_rgb(data), size) for data in cols["image"])
        labels.extend(-1 if y is None else int(y) for y in cols["label"])
        paths.extend(cols["path"])
    stacked = np.stack(views) if views else np.zeros((0, size, size, 3), np.uint8)  # N x [S,S,3] -> [N,S,S,3]
    return stacked, np.asarray(labels, dtype=np.int64), paths


class OnlineMonitor:
    """Fixed evaluation data for the run: a k-NN bank (train split), queries (val split) and probe images.

    Bank and queries are seeded (``train.seed``) uniform samples of ``eval.knn_train_limit`` / ``eval.knn_val_limit``
    rows, read a batch at a time (:func:`mimlab.data.sample.sample_split`), so class-sorted shards still give a bank
    covering every class and no split is ever decoded whole. A source without ``train/``/``val/`` (and no
    ``data.val``) gives both from one seeded order, disjoint: queries are at most half its rows.

    Args:
        cfg: the pretraining config (``eval``, ``data``, ``crops.global_size``, ``train.seed``).
        train_url: training source (``None`` = embedded dataset).
    """

    def __init__(self, cfg, train_url: str | None) -> None:
        from mimlab.data.sample import has_splits, sample_split, split_rows

        e = cfg.eval
        size = cfg.crops.global_size
        seed = cfg.train.seed
        self.k = e.knn_k
        self.val_url = cfg.data.val or train_url
        columns = ["image", "label", "path"]
        if cfg.data.val or has_splits(train_url):
            bank = sample_split(train_url, None, e.knn_train_limit, seed=seed, columns=columns)
            queries = sample_split(self.val_url, None, e.knn_val_limit, seed=seed, columns=columns,
                                   default_split="val")
        else:  # one folder: disjoint bank and queries from one seeded order
            rows = split_rows(train_url)
            n_val = max(1, min(e.knn_val_limit, rows // 2))
            n_bank = max(1, min(e.knn_train_limit, rows - n_val))
            bank = sample_split(train_url, None, n_bank, seed=seed, columns=columns)
            queries = sample_split(train_url, None, n_val, seed=seed, columns=columns, skip=n_bank)
        self.bank, bank_y, self.bank_paths = _eval_views(bank, size)
        self.queries, query_y, self.query_paths = _eval_views(queries, size)
        self.bank_y = torch.as_tensor(bank_y)
        self.query_y = torch.as_tensor(query_y)
        self.probes = self.queries[: e.probe_images]
        self.labelled = bool((self.bank_y >= 0).all() and (self.query_y >= 0).all())
        if not self.labelled and e.knn_every > 0:
            print("note: online k-NN skipped: the k-NN bank (training data) or queries (data.val) have images "
                  "without labels", file=sys.stderr, flush=True)

    def _features(self, backbone: nn.Module, views: np.ndarray) -> torch.Tensor:
        from mimlab.evaluation.features import extract

        batches = [views[i:i + 256] for i in range(0, len(views), 256)]
        return extract(backbone, batches, mean=IMAGENET_MEAN, std=IMAGENET_STD, kind="knn")

    @torch.no_grad()
    def knn_top1(self, backbone: nn.Module) -> float | None:
        """Weighted k-NN top-1 (%) of the backbone's L2-normalised [cls] features, or None without labels."""
        from mimlab.evaluation.knn import knn_classify

        if not self.labelled:
            return None
        bank = self._features(backbone, self.bank)
        queries = self._features(backbone, self.queries)
        k = min(self.k, bank.shape[0])
        res = knn_classify(bank, self.bank_y, queries, self.query_y, ks=(k,), temperature=0.07)
        return float(res[k]["top1"])
