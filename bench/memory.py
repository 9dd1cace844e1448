"""Peak memory of one sweep trial (pretraining + k-NN, the same steps) on a small and an 8x larger training split.

A trial streams its batches from Ray Data, so its memory should not grow with the split (target: ratio <= 1.25).
Each size runs ``platform tune`` with one trial in a fresh child process (its own local Ray runtime); the figure is
the peak over time of the summed RSS of that process and all its descendants (driver, Ray workers, Ray Data tasks,
the MLflow server), sampled every 0.25 s with psutil. Shared pages (the object store) are counted once per process
that maps them, so the absolute figure is an upper bound; the ratio compares like with like. The two sizes run
alternately ``--rounds`` times; medians are quoted with their range.

Usage:
    python bench/memory.py --data ROOT     # ROOT holds train/ and val/ (or test/) shards, e.g. CIFAR-10's
    python bench/memory.py                 # no data: the embedded dataset at each size (platform data synth)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROFILE = """\
memory:
  description: bench/memory.py - the demo micro ViT, 1 epoch of 10 steps, k-NN on 1,000 + 500 images
  config:
    model:
      timm_name: vit_tiny_patch16_224
      kwargs: {img_size: 32, patch_size: 4, embed_dim: 64, depth: 12, num_heads: 4}
      drop_path: 0.0
    head: {out_dim: 1024, hidden_dim: 256, bottleneck_dim: 64}
    crops: {global_crops: 2, global_size: 32, local_crops: 2, local_size: 16}
    loss: {warmup_teacher_temp_epochs: 0}
    optim: {epochs: 1, batch_size_per_worker: 64, warmup_epochs: 0, freeze_last_layer: 0, precision: fp32}
    train: {steps_per_epoch: 10, log_every: 5}
    eval: {knn_every: 0, probe_images: 0}
  evaluation: {knn_ks: [20], linear: false, cached_features: true, train_limit: 1000, val_limit: 500,
               batch_size: 128}
  resources: {cpus_per_trial: 1, gpus_per_trial: 0, max_concurrent: 1}
"""
SWEEP = """\
name: memory
description: one trial, for bench/memory.py
thesis: none (benchmark)
default_profile: memory
sweep:
  masking.strategy: [block]
"""


def _subset(root: str, n: int, out: Path) -> str:
    """A dataset root whose train/ holds the first shards of ``root``'s train/ up to >= ``n`` rows (symlinks)."""
    import pyarrow.parquet as pq

    src = Path(root)
    val = next((src / s for s in ("val", "test") if (src / s).is_dir()), None)
    if not (src / "train").is_dir() or val is None:
        raise SystemExit(f"--data {root}: expected train/ and val/ (or test/) shard folders")
    (out / "train").mkdir(parents=True, exist_ok=True)
    rows = 0
    for f in sorted((src / "train").glob("*.parquet")):
        if rows >= n:
            break
        (out / "train" / f.name).symlink_to(f.resolve())
        rows += pq.ParquetFile(f).metadata.num_rows
    if rows < n:
        raise SystemExit(f"--data {root}: train/ has {rows} images, fewer than {n}")
    (out / "val").symlink_to(val.resolve(), target_is_directory=True)
    return str(out)


def _synth(n: int, out: Path) -> str:
    subprocess.run([sys.executable, "-m", "mimlab", "data", "synth", str(out), "--num-images", str(int(n * 1.25)),
                    "--split-val", "0.2"], check=True, stdout=subprocess.DEVNULL)
    return str(out)


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def peak_rss(data: str, work: Path) -> tuple[float, float]:
    """(peak tree RSS in MiB, seconds) of one ``platform tune memory`` run on ``data``."""
    import psutil

    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MIMLAB_EXPERIMENTS_DIR": str(work.parent / "experiments")}
    cmd = [sys.executable, "-m", "mimlab", "tune", "memory", "--data", data, "--storage-path", str(work / "runs"),
           "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
    t0 = time.monotonic()
    child = subprocess.Popen(cmd, env=env, cwd=work, stdout=open(work / "log.txt", "w"), stderr=subprocess.STDOUT)
    proc = psutil.Process(child.pid)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(proc))
            time.sleep(0.25)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    rc = child.wait()
    done.set()
    thread.join()
    if rc != 0:
        raise SystemExit(f"the trial on {data} failed (rc {rc}); see {work / 'log.txt'}")
    return peak[0] / 2**20, time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="dataset root with train/ and val/ shards (default: embedded)")
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--large", type=int, default=40000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    for key, value in {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                       "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
        os.environ.setdefault(key, value)
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    (tmp / "experiments").mkdir()
    (tmp / "experiments" / "profiles.yaml").write_text(PROFILE)
    (tmp / "experiments" / "memory.yaml").write_text(SWEEP)
    sizes = {"small": args.small, "large": args.large}
    roots = {k: (_subset(args.data, n, tmp / f"data-{k}") if args.data else _synth(n, tmp / f"data-{k}"))
             for k, n in sizes.items()}
    peaks: dict[str, list[float]] = {k: [] for k in sizes}
    for r in range(args.rounds):
        for k in ("small", "large") if r % 2 == 0 else ("large", "small"):
            mib, secs = peak_rss(roots[k], tmp / f"run-{k}-{r}")
            peaks[k].append(mib)
            print(f"round {r + 1}: {sizes[k]:>6} images  peak RSS {mib:8.0f} MiB  ({secs:.0f} s)", flush=True)
    small, large = statistics.median(peaks["small"]), statistics.median(peaks["large"])
    source = args.data or "embedded dataset (platform data synth)"

    def rng(v: list[float]) -> str:
        return f"range {min(v):.0f}-{max(v):.0f}" if len(v) > 1 else "1 run"

    print(f"\n== peak RSS of one sweep trial (pretraining 10 steps + k-NN), process tree, {source} ==")
    print(f"  {args.small:>6} training images  {small:8.0f} MiB  (median of {len(peaks['small'])}, "
          f"{rng(peaks['small'])}; the baseline)")
    print(f"  {args.large:>6} training images  {large:8.0f} MiB  (median of {len(peaks['large'])}, "
          f"{rng(peaks['large'])})")
    print(f"  ratio {large / small:.3f} (target <= 1.25; {args.large / args.small:.0f}x the images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
