"""Training-time diagnostics: online k-NN top-1 of the teacher and the last-layer [cls] attention of probe images
(thesis Figure 22). Pure torch/numpy; the caller logs the results."""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

from mimlab.pretrain.build import IMAGENET_MEAN, IMAGENET_STD
from mimlab.pretrain.data_local import has_splits, load_images


def _eval_views(images: list[np.ndarray], size: int) -> np.ndarray:
    from mimlab.data.transforms import eval_transform

    return np.stack([eval_transform(img, size) for img in images])  # N x [S,S,3] -> [N,S,S,3]


class OnlineMonitor:
    """Fixed evaluation data for the run: a k-NN bank (train split), queries (val split) and probe images.

    Args:
        cfg: the pretraining config (``eval``, ``data``, ``crops.global_size``).
        train_url: training source (``None`` = embedded dataset).
    """

    def __init__(self, cfg, train_url: str | None) -> None:
        e = cfg.eval
        size = cfg.crops.global_size
        self.k = e.knn_k
        self.val_url = cfg.data.val or train_url
        bank, bank_y = load_images(train_url, "train", e.knn_train_limit)
        if cfg.data.val or has_splits(train_url):
            queries, query_y = load_images(self.val_url, "val", e.knn_val_limit)
        else:  # one folder: hold out its tail as queries
            cut = len(bank) - min(e.knn_val_limit, len(bank) // 2)
            queries, query_y = bank[cut:], bank_y[cut:]
            bank, bank_y = bank[:cut], bank_y[:cut]
        self.bank = _eval_views(bank, size)
        self.bank_y = torch.as_tensor(bank_y)
        self.queries = _eval_views(queries, size)
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

    @torch.no_grad()
    def attention_image(self, backbone: nn.Module) -> np.ndarray | None:
        """Probe images (top row) over their last-block [cls] attention, head mean, min-max (bottom row):
        ``uint8 [2S, P*S, 3]``."""
        if len(self.probes) == 0:
            return None
        import matplotlib

        from mimlab.data.transforms import normalise
        from mimlab.explain import scores
        from mimlab.models.capture import AttentionCapture

        device = next(backbone.parameters()).device
        x = normalise(torch.as_tensor(self.probes), IMAGENET_MEAN, IMAGENET_STD).to(device)
        last = len(backbone.blocks) - 1
        was_training = backbone.training
        backbone.eval()
        try:
            with AttentionCapture(backbone, layers=[last], keys=False, logits=False, detach=True) as cap:
                backbone.forward_features(x)
        finally:
            backbone.train(was_training)
        maps = scores.raw(cap.attn[last], cap.num_prefix_tokens).float().cpu()  # [P,H,T,T] -> [P,Np]
        h, w = cap.grid
        lo, hi = maps.min(1, keepdim=True).values, maps.max(1, keepdim=True).values
        maps = ((maps - lo) / (hi - lo).clamp(min=1e-12)).view(-1, 1, h, w)  # [P,Np] -> [P,1,h,w]
        size = self.probes.shape[1]
        maps = torch.nn.functional.interpolate(maps, size=(size, size), mode="nearest")[:, 0].numpy()
        heat = (matplotlib.colormaps["inferno"](maps)[..., :3] * 255).astype(np.uint8)  # [P,S,S] -> [P,S,S,3]
        top = np.concatenate(list(self.probes), axis=1)  # P x [S,S,3] -> [S,P*S,3]
        bottom = np.concatenate(list(heat), axis=1)
        return np.concatenate([top, bottom], axis=0)
