"""The tiny test assets every folder shares: a micro ViT, a ``platform pretrain``-format checkpoint whose teacher
and student differ, and synthetic shards. The fixtures of tests/conftest.py build them; tests that need another
size call these builders (imported by name, ``from tiny_assets import …``: ``from conftest import`` picks whichever
conftest loaded first)."""

from __future__ import annotations

import json
from pathlib import Path

TIMM = "vit_tiny_patch16_224"
ARCH = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2}
"""The micro ViT: dim 32, 4 blocks, 8 px patches on 32 px images (16 patches + [cls])."""
CLASSES = 10
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def tiny_vit(*, num_classes: int = CLASSES, seed: int = 0, name: str = TIMM, **arch):
    """A seeded micro timm ViT ``name`` (``ARCH``, overridden by ``arch``) with a ``num_classes`` head, in eval
    mode."""
    import torch

    from mimlab.models.vit import create_backbone

    torch.manual_seed(seed)
    return create_backbone(name, **{**ARCH, **arch}, num_classes=num_classes).eval()


def write_tiny_checkpoint(folder: str | Path, *, num_classes: int = CLASSES, seed: int = 0, **arch) -> Path:
    """``backbone.json`` + ``teacher_backbone.safetensors`` (seed ``seed``) + ``student_backbone.safetensors``
    (seed ``seed + 1``: every weight differs from the teacher's, so ``--student`` is observable)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, s in (("teacher", seed), ("student", seed + 1)):
        model = tiny_vit(num_classes=num_classes, seed=s, **arch)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / f"{name}_backbone.safetensors"))
    kwargs = {**ARCH, **arch}
    meta = {"timm_name": TIMM, "kwargs": kwargs, "img_size": kwargs["img_size"], "mean": MEAN, "std": STD, "epoch": 0}
    (folder / "backbone.json").write_text(json.dumps(meta))
    return folder


def write_shards(root: str | Path, *, num_images: int = 200, size: int = 32, classes: int = 4, seed: int = 0,
                 split_val: float = 0.25, **kw) -> Path:
    """A synthetic dataset root with ``train/`` and ``val/`` Parquet shards (labels, object masks)."""
    from mimlab.data.synth import write_synthetic

    write_synthetic(str(root), num_images=num_images, size=size, classes=classes, seed=seed, split_val=split_val,
                    **kw)
    return Path(root)
