"""Benchmark of the iBOT training step.

CPU (default): images/s of one training step for block vs attmask-raw vs attmask-rollout vs per-crop masking
(target: attention-guided overhead <= 5 % over block), and the Ray Train 1-worker loop vs the same steps in a plain
PyTorch loop (target: <= 10 % overhead). Figures are medians, printed beside the reference measured in the same run.

GPU (``--gpu``): ViT-S/16 at 224 px with 2x224 + 6x96 crops, bf16 autocast: images/s and model FLOP utilisation
(FLOPs of one step counted by ``torch.utils.flop_counter``; peak given by ``--peak-tflops``, H100/H200 bf16 dense 989).

    .venv/bin/python bench/pretrain.py [--steps 6] [--skip-ray] [--gpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

STRATEGIES = {
    "block": "block",
    "attmask-raw": "attmask-raw:layer=12",
    "attmask-rollout": "attmask-rollout:layers=1-12",
    "per-crop raw_{12,5}": ["attmask-raw:layer=12", "attmask-raw:layer=5"],
}


def _cfg(strategy, *, gpu: bool, batch: int, extra: list[str] | None = None):
    from mimlab.config.pretrain import load_pretrain_config

    if gpu:
        tree = {"optim": {"batch_size_per_worker": batch, "precision": "auto"}, "train": {"use_gpu": True},
                "model": {"kwargs": {"img_size": 224, "patch_size": 16}}}
    else:  # the cpu-budget.md reference step: 12-block width-64 ViT, patch 4, 2x32 + 4x16 crops
        tree = {"model": {"timm_name": "vit_tiny_patch16_224", "drop_path": 0.0,
                          "kwargs": {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 12, "num_heads": 4}},
                "head": {"out_dim": 1024, "hidden_dim": 256, "bottleneck_dim": 64},
                "crops": {"global_size": 32, "local_crops": 4, "local_size": 16},
                "optim": {"batch_size_per_worker": batch, "warmup_epochs": 1, "epochs": 2},
                "loss": {"warmup_teacher_temp_epochs": 1},
                "eval": {"knn_every": 0, "probe_images": 0}}
    tree["masking"] = {"strategy": strategy}
    return load_pretrain_config(tree, extra or [])


def _crops(cfg, batch, device):
    from mimlab.pretrain.engine import Crops

    c = cfg.crops
    g = torch.randn(c.global_crops * batch, 3, c.global_size, c.global_size, device=device)
    loc = torch.randn(c.local_crops * batch, 3, c.local_size, c.local_size, device=device)
    return Crops(g, loc, batch)


def step_rates(strategy, *, steps: int, batch: int, gpu: bool) -> tuple[list[float], float]:
    """Images/s of each timed step (after 2 warm-up steps) and the FLOPs of one step."""
    from mimlab.pretrain.build import build_parts
    from mimlab.pretrain.engine import train_step
    from mimlab.pretrain.schedules import Schedules

    device = torch.device("cuda" if gpu else "cpu")
    cfg = _cfg(strategy, gpu=gpu, batch=batch)
    parts = build_parts(cfg, device)
    sched = Schedules.from_config(cfg, steps + 3, 1)
    crops = _crops(cfg, batch, device)
    for i in range(2):
        train_step(parts, crops, 1, sched.at(1, i))
    flops = 0.0
    if gpu:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            train_step(parts, crops, 1, sched.at(1, 2))
        flops = float(counter.get_total_flops())
    rates = []
    for i in range(steps):
        if gpu:
            torch.cuda.synchronize()
        t = time.perf_counter()
        train_step(parts, crops, 1, sched.at(1, i))
        if gpu:
            torch.cuda.synchronize()
        rates.append(batch / (time.perf_counter() - t))
    return rates, flops


def masking_table(steps: int, batch: int, gpu: bool, peak_tflops: float) -> None:
    print(f"\n== training step, {'ViT-S/16 224 px 2x224+6x96 (GPU, bf16)' if gpu else '12-block width-64 ViT, 2x32+4x16 px (CPU)'}, "
          f"batch {batch}, median of {steps} steps ==")
    ref = None
    order = list(STRATEGIES.items())
    results = {}
    # interleave two rounds so a drifting machine load hits every strategy alike
    for _round in range(2):
        for label, strategy in order:
            rates, flops = step_rates(strategy, steps=steps, batch=batch, gpu=gpu)
            results.setdefault(label, ([], flops))[0].extend(rates)
    for label, _ in order:
        rates, flops = results[label]
        med = statistics.median(rates)
        ref = ref or med
        line = f"{label:24s} {med:9.1f} img/s   vs block {med / ref:6.3f}x   overhead {100 * (ref / med - 1):+6.1f} %"
        if gpu and flops:
            tflops = flops / batch * med / 1e12
            line += f"   {tflops:7.1f} TFLOP/s  MFU {100 * tflops / peak_tflops:5.1f} % (peak {peak_tflops:.0f})"
        print(line)


def ray_vs_plain(steps: int, batch: int) -> None:
    """The same steps (in-process crops vs Ray Data crops) in a plain loop and in a 1-worker TorchTrainer."""
    from mimlab.data.synth import write_synthetic
    from mimlab.pretrain.build import IMAGENET_MEAN, IMAGENET_STD, build_parts
    from mimlab.pretrain.data_local import LocalMultiCrop, load_images
    from mimlab.pretrain.engine import crops_from_columns, train_one_epoch
    from mimlab.pretrain.schedules import Schedules
    from mimlab.runtime.ray_env import ensure_ray
    from mimlab.runtime.train import run_pretrain

    tmp = tempfile.mkdtemp(prefix="bench-pretrain-")
    data = os.path.join(tmp, "data")
    write_synthetic(data, num_images=batch * (steps + 1) + 64, size=32, classes=10, seed=0, split_val=0.1)
    extra = [f"train.steps_per_epoch={steps}", "optim.epochs=2", "train.log_every=1000"]
    cfg = _cfg("attmask-raw:layer=12", gpu=False, batch=batch, extra=extra)
    # plain PyTorch: the engine over in-process multi-crop batches
    parts = build_parts(cfg)
    images, labels = load_images(data, "train", None)
    loader = LocalMultiCrop(images, labels, cfg)
    sched = Schedules.from_config(cfg, steps, 1)
    plain = []
    for epoch in range(2):
        batches = (crops_from_columns(b, 2, 4, IMAGENET_MEAN, IMAGENET_STD) for b in loader.epoch(epoch))
        plain.append(train_one_epoch(parts, batches, epoch, sched, max_steps=steps)["images_per_s"])
    ensure_ray()
    result = run_pretrain(cfg, data=data, name="bench", storage_path=os.path.join(tmp, "runs"), workers=1,
                          tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    ray_rate = result.metrics["images_per_s"]
    ref = plain[-1]
    print(f"\n== Ray Train 1-worker loop vs plain PyTorch loop (attmask-raw, batch {batch}, {steps} steps/epoch, "
          f"second epoch) ==")
    print(f"plain PyTorch loop        {ref:9.1f} img/s   (reference)")
    print(f"Ray Train 1 worker        {ray_rate:9.1f} img/s   vs plain {ray_rate / ref:6.3f}x   "
          f"overhead {100 * (ref / ray_rate - 1):+6.1f} %")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args(argv)
    for key, value in {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                       "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
        os.environ.setdefault(key, value)
    if args.gpu and not torch.cuda.is_available():
        print("--gpu given but no CUDA device is visible", file=sys.stderr)
        return 2
    batch = args.batch or (64 if args.gpu else 64)
    masking_table(args.steps, batch, args.gpu, args.peak_tflops)
    if not args.gpu and not args.skip_ray:
        ray_vs_plain(args.steps, batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
