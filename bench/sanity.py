"""Benchmark: the sanity check's cost (images/s) beside a plain ``evaluate saliency`` of the same methods.

Both run in-process on the same images, interleaved, one actor's work each (:class:`SanityWorker` and
:class:`SaliencyEvaluator`, the classes the Ray actors run — Ray start-up is left out): the sanity check
explains every image ``1 + 2·S`` times (S blocks, cascading and independent) and compares maps; the evaluation
explains once and scores the default metrics (AD, AI, insertion, deletion). Prints the medians of
``--repeats`` runs, images/s and the ratio.

    python bench/sanity.py                                   # ViT-Tiny (random weights) at 64 px, 16 images
    python bench/sanity.py --model resnet18 --method gradcam --method scorecam --img-size 96
    python bench/sanity.py --modes cascading                 # one mode: about half the cost
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_tiny_patch16_224")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--method", action="append", default=None, help="repeatable; default gradcam, raw, rollout")
    ap.add_argument("--metrics", default="ad,ai,insertion,deletion")
    ap.add_argument("--modes", default="cascading,independent")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from mimlab.data.sources import load_records
    from mimlab.explain.sanity import randomisation_blocks
    from mimlab.metrics import split_metric_list
    from mimlab.runtime.sanity import SanityWorker
    from mimlab.runtime.saliency import SaliencyEvaluator

    torch.set_num_threads(args.threads)
    methods = args.method or ["gradcam", "raw", "rollout"]
    modes = [m for m in args.modes.split(",") if m]
    records = load_records(None, limit=args.limit)
    common = dict(model=args.model, weights=None, img_size=args.img_size, methods=methods)
    sanity = SanityWorker(**common, target="gt", channel_order="rgb", seed=0, modes=modes)
    plain = SaliencyEvaluator(**common, metrics=split_metric_list(args.metrics), save_maps=False)
    steps = len(randomisation_blocks(sanity.loaded.module))

    times: dict[str, list[float]] = {"evaluate saliency": [], "evaluate sanity": []}
    for _ in range(args.repeats):  # interleaved so machine load hits both alike
        for name, worker in (("evaluate saliency", plain), ("evaluate sanity", sanity)):
            t0 = time.perf_counter()
            worker.run(records)
            times[name].append(time.perf_counter() - t0)

    n = len(records)
    print(f"model {args.model} @ {args.img_size}px, {n} images, methods {', '.join(methods)}; "
          f"sanity: {steps} blocks x {len(modes)} mode(s) = {1 + steps * len(modes)} explanations per image; "
          f"evaluate: metrics {args.metrics}; median of {args.repeats}, {args.threads} threads")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, sec in med.items():
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"  {name:<18} {sec:8.2f} s  {n / sec:8.2f} images/s   (runs: {runs} s)")
    print(f"  sanity / evaluate time ratio: {med['evaluate sanity'] / med['evaluate saliency']:.2f}")


if __name__ == "__main__":
    main()
