"""Tiny configs and batches shared by the pretraining tests (micro ViT, 16-32 px, small head)."""

from __future__ import annotations

import torch

from mimlab.config.pretrain import load_pretrain_config
from mimlab.pretrain.engine import Crops


def micro_cfg(*overrides: str, depth: int = 2, strategy: str | list[str] = "block", **sections):
    """A micro iBOT config: dim 32, ``depth`` blocks, patch 4, 16 px globals, 8 px locals, out_dim 64."""
    tree = {
        "model": {"timm_name": "vit_tiny_patch16_224",
                  "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": depth, "num_heads": 2},
                  "drop_path": 0.0},
        "head": {"out_dim": 64, "hidden_dim": 48, "bottleneck_dim": 16},
        "crops": {"global_crops": 2, "global_size": 16, "local_crops": 2, "local_size": 8},
        "masking": {"strategy": strategy},
        "loss": {"warmup_teacher_temp_epochs": 1},
        "optim": {"epochs": 2, "batch_size_per_worker": 4, "warmup_epochs": 1, "lr": 0.005},
        "train": {"steps_per_epoch": 2, "log_every": 1, "storage_path": "unused"},
        "eval": {"knn_every": 0, "probe_images": 0, "knn_k": 5},
    }
    for name, value in sections.items():
        tree.setdefault(name, {}).update(value)
    return load_pretrain_config(tree, list(overrides))


def random_crops(cfg, batch: int = 4, seed: int = 0) -> Crops:
    g = torch.Generator().manual_seed(seed)
    c = cfg.crops
    glob = torch.randn(c.global_crops * batch, 3, c.global_size, c.global_size, generator=g)
    loc = torch.randn(c.local_crops * batch, 3, c.local_size, c.local_size, generator=g) if c.local_crops else None
    return Crops(glob, loc, batch)
