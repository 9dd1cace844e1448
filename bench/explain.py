"""Benchmark: saliency maps per second for ViT-S/16 (224 px) and ResNet-50 at batch 8 on CPU.

For each model every registered method that fits it is timed on the same batch of real photographs (scikit-image
samples resized to 224 px, random weights — nothing is downloaded):

* CAM family / TIBAV — one batched call each (``maps/s = batch / median seconds``). Score-CAM costs one forward
  per channel (384 for ViT-S, 2048 for ResNet-50, per image), as does AblationCAM; both are skipped unless
  ``--scorecam``.
* Attention family (ViT) — ``explain_many``: all attention methods from ONE forward of the batch (the pass count
  is measured with a forward hook), compared in the same run with the reference a straightforward script does:
  a per-image loop calling each method on its own (``batch × methods`` forwards). Prints both medians, the
  passes, and the ratio reference / ours.

    python bench/explain.py                  # the issue's setting
    python bench/explain.py --repeats 1 --models vit   # quick
    python bench/explain.py --device cuda --scorecam   # on a GPU machine
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def photographs(n: int, size: int) -> np.ndarray:
    """n RGB uint8 [size,size,3] photographs from scikit-image's sample data (cycled)."""
    import skimage.data
    from PIL import Image

    names = ["chelsea", "astronaut", "coffee", "rocket", "cat", "immunohistochemistry", "retina", "hubble_deep_field"]
    out = []
    for i in range(n):
        img = getattr(skimage.data, names[i % len(names)])()
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out.append(np.asarray(Image.fromarray(img[..., :3]).resize((size, size), Image.BILINEAR)))
    return np.stack(out)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        result = fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


class PassCounter:
    """Counts top-level forward passes of a model (a forward hook on the root module)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.count += 1

    def close(self) -> None:
        self.handle.remove()


def bench_model(timm_name: str, batch: int, repeats: int, scorecam: bool, device: str = "cpu") -> None:
    from mimlab.explain import EXPLAINERS, build_explainer, explain_many
    from mimlab.explain.base import fits
    from mimlab.explain.run import preprocess
    from mimlab.models.loading import load_model

    loaded = load_model(timm_name, img_size=224)
    _, images = preprocess(list(photographs(batch, 224)), 224, loaded.mean, loaded.std)
    loaded.module.to(device)
    images = images.to(device)
    names = [n for n in EXPLAINERS.names() if fits(EXPLAINERS.get(n), loaded.kind)]
    attention = [n for n in names if EXPLAINERS.get(n).reads_capture]
    others = [n for n in names if n not in attention]
    print(f"\n== {timm_name} ({loaded.kind}) on {device}, batch {batch}, 224 px, {torch.get_num_threads()} threads, "
          f"median of {repeats} ==")
    print(f"{'method':<24}{'seconds':>10}{'maps/s':>10}{'passes':>8}")
    with torch.no_grad():
        loaded.module(images[:1])  # warm-up
    for name in others:
        if name in ("scorecam", "ablationcam") and not scorecam:
            channels = 384 if loaded.kind == "vit" else 2048
            print(f"{name:<24}{'skipped':>10}{'':>10}{channels * batch:>8}  (one forward per channel; --scorecam)")
            continue
        explainer = build_explainer(name, loaded)
        counter = PassCounter(loaded.module)
        sec, _ = timed(lambda: explainer(images), repeats)
        counter.close()
        print(f"{name:<24}{sec:>10.2f}{batch / sec:>10.2f}{counter.count // repeats:>8}")
    if not attention:
        return
    built = [build_explainer(n, loaded) for n in attention]
    counter = PassCounter(loaded.module)
    sec_ours, maps = timed(lambda: explain_many(loaded, images, built), repeats)
    passes_ours = counter.count // repeats
    counter.close()

    def per_image_loop():
        out = {e.text: [] for e in built}
        for i in range(images.shape[0]):
            for e in built:
                out[e.text].append(e(images[i : i + 1]))
        return {k: torch.cat(v) for k, v in out.items()}

    counter = PassCounter(loaded.module)
    sec_ref, ref_maps = timed(per_image_loop, repeats)
    passes_ref = counter.count // repeats
    counter.close()
    same = all(torch.allclose(maps[k], ref_maps[k], atol=1e-4) for k in maps)
    n_maps = batch * len(built)
    print(f"{'attention x' + str(len(built)) + ' (ours)':<24}{sec_ours:>10.2f}{n_maps / sec_ours:>10.2f}"
          f"{passes_ours:>8}  explain_many: one hooked forward for {len(built)} methods")
    print(f"{'attention (reference)':<24}{sec_ref:>10.2f}{n_maps / sec_ref:>10.2f}{passes_ref:>8}"
          f"  per-image loop, one call per (image, method)")
    print(f"attention speed-up reference/ours = {sec_ref / sec_ours:.1f}x; maps identical: {same}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", default="vit,cnn", help="comma list of vit,cnn")
    p.add_argument("--scorecam", action="store_true",
                   help="also time Score-CAM and AblationCAM (a forward per channel)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu", help="cpu (the issue's setting) or cuda")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    chosen = {"vit": "vit_small_patch16_224", "cnn": "resnet50"}
    for key in args.models.split(","):
        bench_model(chosen[key.strip()], args.batch, args.repeats, args.scorecam, args.device)


if __name__ == "__main__":
    main()
