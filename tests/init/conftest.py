"""A micro pretraining config for the init / unlabeled tests (dim 32, 2 blocks, patch 4, 16 px crops)."""

from __future__ import annotations

import pytest

from mimlab.config.pretrain import load_pretrain_config


def micro(*overrides: str, **sections):
    tree = {
        "model": {"timm_name": "vit_tiny_patch16_224",
                  "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
                  "drop_path": 0.0},
        "head": {"out_dim": 64, "hidden_dim": 48, "bottleneck_dim": 16},
        "crops": {"global_crops": 2, "global_size": 16, "local_crops": 2, "local_size": 8},
        "loss": {"warmup_teacher_temp_epochs": 0},
        "optim": {"epochs": 1, "batch_size_per_worker": 8, "warmup_epochs": 0, "lr": 0.005},
        "train": {"steps_per_epoch": 2, "log_every": 1, "storage_path": "unused"},
        "eval": {"knn_every": 0, "probe_images": 0, "knn_k": 5, "knn_train_limit": 100, "knn_val_limit": 100},
    }
    for name, value in sections.items():
        tree.setdefault(name, {}).update(value)
    return load_pretrain_config(tree, list(overrides))


@pytest.fixture()
def micro_cfg():
    """``micro_cfg(*overrides)`` -> a validated micro :class:`PretrainConfig`."""
    return micro
