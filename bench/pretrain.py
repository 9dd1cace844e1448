"""Benchmark of the iBOT training step.

CPU (default): images/s of one training step for block vs attmask-raw vs attmask-rollout vs per-crop masking
(target: attention-guided overhead <= 5 % over block), and the Ray Train 1-worker loop vs the same steps in a plain
PyTorch loop (target: <= 10 % overhead). Figures are medians, printed beside the reference measured in the same run.

GPU (``--gpu``): ViT-S/16 at 224 px with 2x224 + 6x96 crops, bf16 autocast: images/s and model FLOP utilisation
(FLOPs of one step counted by ``torch.utils.flop_counter``; peak given by ``--peak-tflops``, H100/H200 bf16 dense 989).

    .venv/bin/python bench/pretrain.py [--steps 6] [--rounds 8] [--ray-steps 12] [--skip-masking] [--skip-ray] [--gpu]

Step rate (``--step-rate [--baseline-rev e444b57] [--rounds R] [--steps S] [--strategy SPEC]``): this tree's
training step beside the baseline commit's, at the issue-19 dimensions (12 blocks, width 64, 4 heads, patch 4,
2x32 + 4x16 px, batch 64, head 2048 -> 256 -> 1024, fp32, CPU), each in a child process importing its own tree
(the baseline from a temporary git worktree), alternating S steps per round; medians, quartiles and the ratio.
``--step-profile [--strategy SPEC] [--threads T]``: where that step's time goes (torch.profiler: the engine's
``ibot.*`` phases and the top operators with their shapes).
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
    exp = client.get_experiment_by_name("bench")  # this run's own store (not the process-wide tracking URI)
    run = client.search_runs([exp.experiment_id], filter_string="tags.mlflow.runName = 'bench'")[0]
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


# ---------------------------------------------------------------------------------------------------------------
# Step rate of this tree against a baseline commit (issue dimensions), interleaved in one run
# ---------------------------------------------------------------------------------------------------------------

STEP_RATE_TREE = {
    "model": {"timm_name": "vit_tiny_patch16_224", "drop_path": 0.0,
              "kwargs": {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 12, "num_heads": 4}},
    "head": {"out_dim": 1024, "hidden_dim": 2048, "bottleneck_dim": 256},
    "crops": {"global_crops": 2, "global_size": 32, "local_crops": 4, "local_size": 16},
    "optim": {"batch_size_per_worker": 64, "warmup_epochs": 1, "epochs": 2, "precision": "fp32"},
    "loss": {"warmup_teacher_temp_epochs": 1},
    "eval": {"knn_every": 0, "probe_images": 0},
}
"""12 blocks, width 64, 4 heads, patch 4, 2x32 + 4x16 px crops, batch 64, head 2048 -> 256 -> 1024, fp32, CPU."""


def _issue_step(strategy: str, threads: int | None):
    """``(parts, crops, schedules)`` of the step at :data:`STEP_RATE_TREE` with ``strategy``, built from whichever
    ``mimlab`` is imported (this tree, or the baseline's in a ``--step-rate`` child), fixed random crops."""
    import copy

    from mimlab.config.pretrain import load_pretrain_config
    from mimlab.pretrain.build import build_parts
    from mimlab.pretrain.engine import Crops
    from mimlab.pretrain.schedules import Schedules

    if threads:
        torch.set_num_threads(threads)
    tree = copy.deepcopy(STEP_RATE_TREE)
    tree["masking"] = {"strategy": strategy}
    cfg = load_pretrain_config(tree, [])
    parts = build_parts(cfg)
    sched = Schedules.from_config(cfg, 100, 1)
    g = torch.Generator().manual_seed(0)
    crops = Crops(torch.randn(128, 3, 32, 32, generator=g), torch.randn(256, 3, 16, 16, generator=g), 64)
    return parts, crops, sched


def step_worker(strategy: str, threads: int | None) -> int:
    """Child process: build the step at :data:`STEP_RATE_TREE` from whichever ``mimlab`` PYTHONPATH names, then
    answer each ``N`` read on stdin with N timed steps, one line of ``wall_img_per_s/cpu_img_per_s`` pairs (images
    per second of wall time, and per second of this process's CPU time: the latter barely moves when other jobs
    share the cores, as long as the step is compute-bound and ``threads`` is 1)."""
    import mimlab
    from mimlab.pretrain.engine import train_step

    parts, crops, sched = _issue_step(strategy, threads)
    train_step(parts, crops, 1, sched.at(1, 0))  # warm-up
    print(f"ready {mimlab.__file__}", flush=True)
    i = 1
    for line in sys.stdin:
        rates = []
        for _ in range(int(line)):
            t, c = time.perf_counter(), time.process_time()
            train_step(parts, crops, 1, sched.at(1, i % 100))
            rates.append(f"{64 / (time.perf_counter() - t):.4f}/{64 / max(time.process_time() - c, 1e-9):.4f}")
            i += 1
        print(" ".join(rates), flush=True)
    return 0


def step_profile(strategy: str, threads: int | None, steps: int = 3, top: int = 12) -> None:
    """Where one step's time goes at the issue dimensions: ``torch.profiler`` over ``steps`` steps (after two
    untimed ones) of this tree; prints the step's phases (the engine's ``ibot.*`` regions, CPU time each, share of
    the step) and the ``top`` operators by self CPU time with their input shapes."""
    from torch.profiler import ProfilerActivity, profile

    from mimlab.pretrain.engine import train_step

    parts, crops, sched = _issue_step(strategy, threads)
    for i in range(2):
        train_step(parts, crops, 1, sched.at(1, i))
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for i in range(steps):
            train_step(parts, crops, 1, sched.at(1, 2 + i))
    step_s = (time.perf_counter() - start) / steps
    print(f"\n== where a step's time goes ({strategy}; issue dimensions, fp32, CPU, {torch.get_num_threads()} "
          f"threads): {step_s:.3f} s a step under the profiler, {steps} steps ==")
    events = prof.key_averages()
    for e in sorted((e for e in events if e.key.startswith("ibot.")), key=lambda e: -e.cpu_time_total):
        ms = e.cpu_time_total / 1e3 / steps
        print(f"  {e.key:26s} {ms:8.1f} ms a step  {100 * ms / 1e3 / step_s:5.1f} % of the step")
    print(f"  top {top} operators by self CPU time (a step):")
    shaped = prof.key_averages(group_by_input_shape=True)
    for e in sorted(shaped, key=lambda e: -e.self_cpu_time_total)[:top]:
        ms = e.self_cpu_time_total / 1e3 / steps
        shapes = str([list(x) for x in e.input_shapes if x])[:70]
        print(f"  {e.key[:40]:40s} {ms:8.1f} ms  {100 * ms / 1e3 / step_s:5.1f} %  x{e.count // steps:<4d} {shapes}")


def step_rate(baseline_rev: str, rounds: int, steps: int, strategy: str, threads: int | None = None) -> None:
    """This tree's step beside ``baseline_rev``'s, each in its own process (a git worktree of the baseline made
    here and removed after), alternating ``steps`` timed steps per round so machine load hits both alike."""
    import shutil
    import subprocess

    repo = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
    base = tempfile.mkdtemp(prefix="bench-baseline-")
    subprocess.run(["git", "worktree", "add", "--detach", "-f", base, baseline_rev], cwd=repo, check=True,
                   capture_output=True)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for label, platform in (("this tree", os.path.join(repo, "platform")),
                                (f"baseline {baseline_rev}", os.path.join(base, "platform"))):
            env = {**os.environ, "PYTHONPATH": platform}
            cmd = [sys.executable, os.path.abspath(__file__), "--step-worker", strategy]
            procs[label] = subprocess.Popen(cmd + (["--threads", str(threads)] if threads else []),
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                            cwd=base)
        for label, proc in procs.items():
            ready = proc.stdout.readline().strip()
            if not ready.startswith("ready"):
                raise SystemExit(f"step worker '{label}' failed to start")
            print(f"{label:24s} imports {ready.split(' ', 1)[1]}", flush=True)
        rates: dict[str, dict[str, list[float]]] = {label: {"wall": [], "cpu": []} for label in procs}
        for r in range(rounds):
            order = list(procs) if r % 2 == 0 else list(procs)[::-1]  # alternate who goes first
            for label in order:
                try:
                    procs[label].stdin.write(f"{steps}\n")
                    procs[label].stdin.flush()
                    line = procs[label].stdout.readline()
                except BrokenPipeError:
                    line = ""
                if not line:
                    raise SystemExit(f"error: step worker '{label}' died (exit code {procs[label].wait()}; "
                                     "out of memory?)")
                for pair in line.split():
                    wall, cpu = pair.split("/")
                    rates[label]["wall"].append(float(wall))
                    rates[label]["cpu"].append(float(cpu))
        print(f"\n== step rate at the issue dimensions ({strategy}; 12 blocks, width 64, 2x32+4x16 px, batch 64, "
              f"head 2048->256->1024, fp32, CPU, {threads or torch.get_num_threads()} threads), {rounds} rounds x "
              f"{steps} steps, interleaved ==")
        base_label = f"baseline {baseline_rev}"
        for kind, unit in (("wall", "img/s (wall clock)"), ("cpu", "img per CPU-second")):
            meds = {}
            for label, by_kind in rates.items():
                v = by_kind[kind]
                meds[label] = statistics.median(v)
                q = statistics.quantiles(v, n=4) if len(v) >= 2 else [v[0]] * 3
                print(f"{label:24s} median {meds[label]:8.2f} {unit}   (quartiles {q[0]:.2f}-{q[2]:.2f}, "
                      f"min-max {min(v):.2f}-{max(v):.2f}, n={len(v)})")
            print(f"ratio this tree / {base_label} ({kind}, medians): {meds['this tree'] / meds[base_label]:.3f}x"
                  "  (target >= 1.25x)")
    finally:
        for proc in procs.values():
            try:
                proc.stdin.close()
                proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                proc.kill()
        subprocess.run(["git", "worktree", "remove", "--force", base], cwd=repo, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def gpu_attention(steps: int, rounds: int, batch: int, peak_tflops: float, strategy: str) -> None:
    """ViT-S/16 (224 px, 2x224 + 6x96, bf16) step: fused attention where nothing reads it (this tree's default)
    against every block explicit, interleaved; images/s and MFU (FLOPs counted once per variant)."""
    from mimlab.models.vit import set_fused_attention

    runners = {"fused where unread": _Runner(strategy, batch=batch, gpu=True, steps=steps),
               "all explicit": _Runner(strategy, batch=batch, gpu=True, steps=steps)}
    for model in (runners["all explicit"].parts.teacher, runners["all explicit"].parts.student):
        set_fused_attention(model, False)
    for runner in runners.values():
        for i in range(2):
            runner.step(i, timed=False)
        runner.count_flops()
    for _ in range(rounds):
        for runner in runners.values():
            for i in range(steps):
                runner.step(i)
    print(f"\n== ViT-S/16 step ({strategy}), batch {batch}, bf16, median of {rounds}x{steps} interleaved steps ==")
    ref = statistics.median(runners["all explicit"].rates)
    for label, runner in runners.items():
        med = statistics.median(runner.rates)
        tflops = runner.flops / batch * med / 1e12
        print(f"attention {label:20s} {med:9.1f} img/s   vs all explicit {med / ref:6.3f}x   "
              f"(min-max {min(runner.rates):.1f}-{max(runner.rates):.1f})   {tflops:7.1f} TFLOP/s   "
              f"MFU {100 * tflops / peak_tflops:5.1f} % (peak {peak_tflops:.0f})")


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
    parser.add_argument("--step-rate", action="store_true",
                        help="only the step rate of this tree beside --baseline-rev at the issue dimensions")
    parser.add_argument("--baseline-rev", default="e444b57")
    parser.add_argument("--strategy", default="attmask-raw:layer=12", help="masking strategy of --step-rate")
    parser.add_argument("--step-profile", action="store_true",
                        help="only a torch.profiler breakdown of this tree's step at the issue dimensions")
    parser.add_argument("--step-worker", metavar="STRATEGY", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of each --step-rate process")
    parser.add_argument("--gpu-attention", action="store_true",
                        help="only the ViT-S/16 GPU step with fused vs all-explicit attention (needs CUDA)")
    args = parser.parse_args(argv)
    if args.step_worker:
        return step_worker(args.step_worker, args.threads)
    if args.step_profile:
        step_profile(args.strategy, args.threads)
        return 0
    if args.step_rate:
        step_rate(args.baseline_rev, args.rounds, args.steps, args.strategy, args.threads)
        return 0
    for key, value in {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                       "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
        os.environ.setdefault(key, value)
    if args.gpu and not torch.cuda.is_available():
        print("--gpu given but no CUDA device is visible", file=sys.stderr)
        return 2
    batch = args.batch or (64 if args.gpu else 64)
    if args.gpu_attention:
        if not torch.cuda.is_available():
            print("--gpu-attention given but no CUDA device is visible", file=sys.stderr)
            return 2
        gpu_attention(args.steps, args.rounds, batch, args.peak_tflops, args.strategy)
        return 0
    if not args.skip_masking:
        masking_table(args.steps, batch, args.gpu, args.peak_tflops, args.rounds)
    if not args.gpu and not args.skip_ray:
        ray_vs_plain(args.ray_steps, batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
