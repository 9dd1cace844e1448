"""Benchmark: batched insertion + deletion vs the published one-step-per-forward loop and vs pure forwards.

For each model (ViT-Ti/16 and ResNet-18, random weights, 224 px) and ``--images`` images it times, in one run:

* ours — ``Insertion`` + ``Deletion`` of :mod:`mimlab.metrics.faithfulness` (blur, predicted class, batched);
* (a) — the published loop: one perturbation state per forward (``perturbation_curves_sequential``);
* (b) — the pure cost of the same number of forwards (images × 2 × (n+1)) on random tensors at the best
  batch size of ``--batch-sizes``.

It prints medians over ``--repeats`` and the ratios ``(a)/ours`` (target ≥ 3) and ``(b)/ours`` (target ≥ 0.8),
and the largest |batched − sequential| score difference. ``--quick`` shrinks everything for a CPU smoke run.

    python bench/metrics.py                 # the issue's setting (use a GPU)
    python bench/metrics.py --quick         # 2 images at 64 px, CPU-friendly
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mimlab.metrics import build_metric
from mimlab.metrics.faithfulness import substrate_images
from mimlab.metrics.perturbation import blur, num_steps, perturbation_curves_sequential
from mimlab.models.vit import create_backbone

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _smooth_maps(n: int, size: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 1, 7, 7, generator=g)
    maps = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    return maps[:, 0].to(device)  # [B,1,S,S] -> [B,S,S]


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    kwargs = {"img_size": args.size} if "vit" in name else {}
    model = create_backbone(name, **kwargs).eval().to(device)
    g = torch.Generator().manual_seed(1)
    images = (torch.randn(args.images, 3, args.size, args.size, generator=g) * 0.8).to(device)
    maps = _smooth_maps(args.images, args.size, device)
    n_states = num_steps(args.size * args.size, args.size) + 1
    total_forwards = args.images * 2 * n_states

    # (b) pure forwards at each batch size; the best one is the bound
    pure = {}
    for bs in args.batch_sizes:
        x = torch.randn(bs, 3, args.size, args.size, device=device)

        def forwards(bs=bs, x=x):
            with torch.no_grad():
                done = 0
                while done < total_forwards:
                    m = min(bs, total_forwards - done)
                    model(x[:m])
                    done += m

        forwards()  # warm-up
        pure[bs], _ = _timed(forwards, device, args.repeats)
    best_bs = min(pure, key=pure.get)

    # ours at every batch size (same batch sizes), reporting the best and the one at best_bs
    ours = {}
    curves = {}
    for bs in args.batch_sizes:
        ins = build_metric(f"insertion:batch={bs}")
        dele = build_metric(f"deletion:batch={bs}")

        def run(ins=ins, dele=dele):
            cache: dict = {}
            a = ins.curves(model, images, maps, None, MEAN, STD, cache)
            b = dele.curves(model, images, maps, None, MEAN, STD, cache)
            return a, b

        run()
        ours[bs], curves[bs] = _timed(run, device, args.repeats)
    ours_best_bs = min(ours, key=ours.get)

    # (a) the published loop, one state per forward
    with torch.no_grad():
        classes = model(images).argmax(1)
    zero = substrate_images(images, "zero", MEAN, STD)

    def sequential():
        a = perturbation_curves_sequential(model, blur(images), images, maps, classes, step=args.size)
        b = perturbation_curves_sequential(model, images, zero, maps, classes, step=args.size)
        return a, b

    seq_t, (seq_a, seq_b) = _timed(sequential, device, args.seq_repeats)
    ins_c, del_c = curves[ours_best_bs]
    diff = max((ins_c.cpu() - seq_a).abs().max().item(), (del_c.cpu() - seq_b).abs().max().item())
    return {
        "model": name,
        "forwards": total_forwards,
        "pure": pure,
        "best_bs": best_bs,
        "ours": ours,
        "ours_best_bs": ours_best_bs,
        "seq": seq_t,
        "diff": diff,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seq-repeats", type=int, default=1, help="repeats of the slow sequential loop")
    p.add_argument("--models", nargs="+", default=["vit_tiny_patch16_224", "resnet18"])
    p.add_argument("--quick", action="store_true", help="2 images, 64 px, batch sizes 32/64, 1 repeat (CPU)")
    args = p.parse_args()
    if args.quick:
        args.images, args.size, args.batch_sizes, args.repeats = 2, 64, [32, 64], 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = (
        torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"device: {name}; {args.images} images at {args.size}px, step = {args.size} px, "
        f"insertion + deletion; medians of {args.repeats} (sequential: {args.seq_repeats})"
    )
    for model in args.models:
        r = bench_model(model, args, device)
        ours_at = r["ours"][r["best_bs"]]
        ours_best = r["ours"][r["ours_best_bs"]]
        print(f"\n{model}: {r['forwards']} forwards")
        print(
            "  (b) pure forwards  : "
            + ", ".join(f"bs {b}: {t:.3f}s" for b, t in r["pure"].items())
            + f"  -> best bs {r['best_bs']}: {r['pure'][r['best_bs']]:.3f}s"
        )
        print("  ours (batched)     : " + ", ".join(f"bs {b}: {t:.3f}s" for b, t in r["ours"].items()))
        print(f"  (a) published loop : {r['seq']:.3f}s  (batch 1, one state per forward)")
        print(
            f"  speed-up vs (a)    : {r['seq'] / ours_best:.1f}x  "
            f"(target >= 3x; ours at bs {r['ours_best_bs']})"
        )
        print(
            f"  fraction of (b)    : {r['pure'][r['best_bs']] / ours_best:.2f}  at our best bs "
            f"{r['ours_best_bs']}; {r['pure'][r['best_bs']] / ours_at:.2f} at bs {r['best_bs']} "
            "(target >= 0.8)"
        )
        print(f"  max |batched - sequential| score: {r['diff']:.2e}")


if __name__ == "__main__":
    main()
