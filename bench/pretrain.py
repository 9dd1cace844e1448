"""Benchmark of the iBOT training step.

CPU (default): images/s of one training step for block vs attmask-raw vs attmask-rollout vs per-crop masking
(target: attention-guided overhead <= 5 % over block), and the Ray Train 1-worker loop vs the same steps in a plain
PyTorch loop (target: <= 10 % overhead). Figures are medians, printed beside the reference measured in the same run.

GPU (``--gpu``): ViT-S/16 at 224 px with 2x224 + 6x96 crops, bf16 autocast: images/s and model FLOP utilisation
(FLOPs of one step counted by ``torch.utils.flop_counter``; peak given by ``--peak-tflops``, H100/H200 bf16 dense 989).

    .venv/bin/python bench/pretrain.py [--steps 6] [--rounds 8] [--ray-steps 12] [--skip-masking] [--skip-ray] [--gpu]
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


class _Runner:
    """One strategy's model, crops and schedule, built once so that timed steps can be interleaved."""

    def __init__(self, strategy, *, batch: int, gpu: bool, steps: int) -> None:
        from mimlab.pretrain.build import build_parts
        from mimlab.pretrain.schedules import Schedules

        self.gpu, self.batch = gpu, batch
        device = torch.device("cuda" if gpu else "cpu")
        cfg = _cfg(strategy, gpu=gpu, batch=batch)
        self.parts = build_parts(cfg, device)
        self.sched = Schedules.from_config(cfg, steps + 3, 1)
        self.crops = _crops(cfg, batch, device)
        self.rates: list[float] = []
        self.flops = 0.0

    def step(self, i: int, timed: bool = True) -> None:
        from mimlab.pretrain.engine import train_step

        if self.gpu:
            torch.cuda.synchronize()
        t = time.perf_counter()
        train_step(self.parts, self.crops, 1, self.sched.at(1, i % self.sched.steps_per_epoch))
        if self.gpu:
            torch.cuda.synchronize()
        if timed:
            self.rates.append(self.batch / (time.perf_counter() - t))

    def count_flops(self) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.step(0, timed=False)
        self.flops = float(counter.get_total_flops())


def masking_table(steps: int, batch: int, gpu: bool, peak_tflops: float, rounds: int = 4) -> None:
    """Every strategy's model is built first; then ``rounds`` rounds each run ``steps`` timed steps of every
    strategy in turn, so a drifting machine load hits all strategies alike. Medians over all timed steps."""
    print(f"\n== training step, {'ViT-S/16 224 px 2x224+6x96 (GPU, bf16)' if gpu else '12-block width-64 ViT, 2x32+4x16 px (CPU)'}, "
          f"batch {batch}, median of {rounds}x{steps} interleaved steps ==")
    runners = {label: _Runner(strategy, batch=batch, gpu=gpu, steps=steps) for label, strategy in STRATEGIES.items()}
    for runner in runners.values():
        for i in range(2):  # warm-up
            runner.step(i, timed=False)
        if gpu:
            runner.count_flops()
    for _round in range(rounds):
        for runner in runners.values():
            for i in range(steps):
                runner.step(i)
    ref = None
    for label, runner in runners.items():
        med = statistics.median(runner.rates)
        ref = ref or med
        line = f"{label:24s} {med:9.1f} img/s   vs block {med / ref:6.3f}x   overhead {100 * (ref / med - 1):+6.1f} %"
        if gpu and runner.flops:
            tflops = runner.flops / batch * med / 1e12
            line += f"   {tflops:7.1f} TFLOP/s  MFU {100 * tflops / peak_tflops:5.1f} % (peak {peak_tflops:.0f})"
        print(line)


def _steady(windows: list[tuple[int, float]], steps: int, log_every: int) -> list[float]:
    """Window rates ``(global_step, images/s)`` of the last epoch minus its first window (pipeline start-up)."""
    last_epoch_start = steps  # global steps of epoch 1 are steps .. 2*steps-1
    return [rate for step, rate in windows if step >= last_epoch_start + log_every]


def ray_vs_plain(steps: int, batch: int, log_every: int = 2) -> None:
    """The Ray Train 1-worker loop against the same engine steps in a plain PyTorch loop, like for like.

    * Both run the attmask-raw step with the same torch thread count: the one Ray gives its worker (1 CPU on a
      2-core machine), set explicitly for the plain loop. Both log every ``log_every`` steps to an MLflow SQLite
      store through the same sink.
    * The plain loop steps over random crops of the same shapes prepared before the clock starts, so it measures
      the bare step.
      The Ray loop gets its crops from Ray Data tasks on the other CPU while it trains.
    * Figures: the median window rate of the second epoch, without its first window. That first window holds the
      start-up of the epoch's streaming read, which is reported apart. The epoch rate includes that start-up.
    """
    import mlflow

    from mimlab.data.synth import write_synthetic
    from mimlab.pretrain.build import build_parts
    from mimlab.pretrain.engine import train_one_epoch
    from mimlab.pretrain.schedules import Schedules
    from mimlab.runtime.ray_env import ensure_ray
    from mimlab.runtime.train import MlflowSink, _cpus_per_worker, run_pretrain

    tmp = tempfile.mkdtemp(prefix="bench-pretrain-")
    data = os.path.join(tmp, "data")
    uri = f"sqlite:///{tmp}/mlflow.db"
    write_synthetic(data, num_images=batch * (steps + 1) + 64, size=32, classes=10, seed=0, split_val=0.1)
    extra = [f"train.steps_per_epoch={steps}", "optim.epochs=2", f"train.log_every={log_every}"]
    cfg = _cfg("attmask-raw:layer=12", gpu=False, batch=batch, extra=extra)
    ensure_ray()
    threads = max(1, int(_cpus_per_worker(1)))
    saved_threads = torch.get_num_threads()
    sched = Schedules.from_config(cfg, steps, 1)

    def plain_loop(label: str) -> tuple[list[float], float]:
        """Two epochs of the bare engine on prepared crops; (steady window rates of epoch 2, epoch-2 rate)."""
        torch.set_num_threads(threads)
        parts = build_parts(cfg)
        sink = MlflowSink(uri, "bench", label)
        windows: list[tuple[int, float]] = []

        def on_step(step: int, metrics: dict[str, float]) -> None:
            sink.log_step(step, metrics)
            windows.append((step, metrics["images_per_s"]))

        epoch_rate = 0.0
        for epoch in range(2):
            ready = [_crops(cfg, batch, "cpu") for _ in range(steps)]
            epoch_rate = train_one_epoch(parts, ready, epoch, sched, max_steps=steps, on_step=on_step,
                                         log_every=log_every)["images_per_s"]
        sink.close()
        torch.set_num_threads(saved_threads)
        return _steady(windows, steps, log_every), epoch_rate

    # plain, Ray, plain again: the machine drifts by more than the effect measured, so the reference is the
    # faster of the two plain runs (the conservative choice for an overhead figure)
    before = plain_loop("plain-before")
    result = run_pretrain(cfg, data=data, name="bench", storage_path=os.path.join(tmp, "runs"), workers=1,
                          tracking_uri=uri, experiment="bench")
    after = plain_loop("plain-after")
    client = mlflow.MlflowClient(uri)
    run = mlflow.search_runs(experiment_names=["bench"], filter_string="tags.mlflow.runName = 'bench'",
                             output_format="list")[0]
    ray_windows = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "step/images_per_s")]
    plain_runs = [statistics.median(before[0]), statistics.median(after[0])]
    plain, plain_epoch = max(plain_runs), max(before[1], after[1])
    ray_rate = statistics.median(_steady(ray_windows, steps, log_every))
    ray_epoch = result.metrics["images_per_s"]
    ray_threads = int(result.metrics.get("torch_threads", 0))
    print(f"\n== Ray Train 1-worker loop vs plain PyTorch loop (attmask-raw, batch {batch}, {steps} steps/epoch, "
          f"torch threads: plain {threads}, Ray worker {ray_threads}; MLflow step logs every {log_every} steps in both) ==")
    print(f"steady state (median {log_every}-step window of epoch 2, first window excluded):")
    print(f"  plain PyTorch loop      {plain:9.1f} img/s   (reference: the bare engine step on prepared crops; "
          f"faster of {plain_runs[0]:.1f} before and {plain_runs[1]:.1f} after the Ray run)")
    print(f"  Ray Train 1 worker      {ray_rate:9.1f} img/s   vs plain {ray_rate / plain:6.3f}x   "
          f"overhead {100 * (plain / ray_rate - 1):+6.1f} %   (crops streamed from Ray Data)")
    print("whole epoch 2 (includes the streaming read's start-up):")
    print(f"  plain PyTorch loop      {plain_epoch:9.1f} img/s")
    print(f"  Ray Train 1 worker      {ray_epoch:9.1f} img/s   vs plain {ray_epoch / plain_epoch:6.3f}x   "
          f"overhead {100 * (plain_epoch / ray_epoch - 1):+6.1f} %")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--ray-steps", type=int, default=12, help="steps per epoch of the Ray-vs-plain comparison")
    parser.add_argument("--skip-masking", action="store_true")
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
    if not args.skip_masking:
        masking_table(args.steps, batch, args.gpu, args.peak_tflops, args.rounds)
    if not args.gpu and not args.skip_ray:
        ray_vs_plain(args.ray_steps, batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
