"""Benchmark: chunked one-pass k-NN (:func:`mimlab.evaluation.knn.knn_classify`) vs a straightforward one.

Both run, in the same invocation, on the same random L2-normalised features (default: a 50k × 384 bank,
10k queries, 100 classes, k ∈ {10, 20, 100, 200}, T = 0.07):

* ours      — query chunks × bank chunks, running top-max(k), incremental voting for every k;
* reference — the full ``[Nq, Nbank]`` similarity matrix, a full descending sort of every row, then a one-hot
              weighted vote per k (what a first implementation does).

Each implementation runs in its own child process so that its peak memory is its own: peak RSS (sampled every
2 ms during the timed call) minus the RSS just before it (with ``--device cuda``: peak minus current CUDA allocation). Prints median wall time over ``--repeats``, the speed ratio
(reference / ours), both peak memories and whether the top-1/top-5 results are identical for every k.

    python bench/knn.py                      # the issue's setting (≈ 8 GB for the reference on CPU)
    python bench/knn.py --bank 5000 --queries 1000     # quick
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import threading
import time

import torch
import torch.nn.functional as F

KS = (10, 20, 100, 200)


def make_data(bank: int, queries: int, dim: int, classes: int, seed: int = 0):
    """Clustered features (so accuracies are far from chance and the comparison is not trivial)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    tr_y = torch.randint(0, classes, (bank,), generator=g)
    te_y = torch.randint(0, classes, (queries,), generator=g)
    tr = F.normalize(centres[tr_y] + 4.0 * torch.randn(bank, dim, generator=g), dim=1)
    te = F.normalize(centres[te_y] + 4.0 * torch.randn(queries, dim, generator=g), dim=1)
    return tr, tr_y, te, te_y


def reference_knn(tr, tr_y, te, te_y, ks, temperature, classes):
    """Straightforward: full similarity matrix, full sort, one-hot weighted vote per k."""
    sim = te @ tr.T  # [Nq,Nbank] in one piece
    sims, order = sim.sort(dim=1, descending=True)  # full sort of every row
    del sim
    out = {}
    for k in ks:
        w = (sims[:, :k] / temperature).exp()  # [Nq,k]
        labels = tr_y[order[:, :k]]  # [Nq,k]
        scores = torch.zeros(te.shape[0], classes, device=te.device).scatter_add_(1, labels, w)  # [Nq,C]
        top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :5]
        correct = top.eq(te_y[:, None])
        out[k] = {"top1": 100.0 * int(correct[:, 0].sum()) / len(te_y),
                  "top5": 100.0 * int(correct.any(1).sum()) / len(te_y)}
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


class _PeakRss:
    """Samples this process's RSS every 2 ms in a thread (``ru_maxrss`` would also count data creation)."""

    def __init__(self) -> None:
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss_mb())


def _child(which: str, args: dict, queue) -> None:
    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    tr, tr_y, te, te_y = (t.to(device) for t in make_data(args["bank"], args["queries"], args["dim"],
                                                           args["classes"]))
    from mimlab.evaluation.knn import knn_classify

    def ours(q, qy):
        return knn_classify(tr, tr_y, q, qy, ks=KS, temperature=0.07, num_classes=args["classes"],
                            chunk_size=args["chunk"], bank_chunk_size=args["bank_chunk"])

    def reference(q, qy):
        return reference_knn(tr, tr_y, q, qy, KS, 0.07, args["classes"])

    fn = ours if which == "ours" else reference
    try:
        _timed_call(fn, tr, te, te_y, device, queue)
    except (RuntimeError, MemoryError) as err:  # e.g. torch.OutOfMemoryError of the full matrix
        queue.put({"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"})


def _timed_call(fn, tr, te, te_y, device, queue) -> None:
    fn(te[:8], te_y[:8])  # warm-up (CUDA context, cuBLAS handles, allocator) outside the timing, for both
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20  # on a GPU the device memory is what grows
    else:
        base = _rss_mb()
    sampler = _PeakRss()
    t0 = time.perf_counter()
    res = fn(te, te_y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = sampler.stop()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    queue.put({"seconds": seconds, "peak_mb": peak - base, "results": {str(k): v for k, v in res.items()}})


def run(which: str, args: dict) -> dict:
    """One timed call in a fresh child; ``{"error": ...}`` if it failed (a killed child is noticed too)."""
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(which, args, queue))
    proc.start()
    while True:
        try:
            out = queue.get(timeout=1.0)
            break
        except queue_mod.Empty:
            if not proc.is_alive():
                out = {"error": f"child exited with code {proc.exitcode} (out of memory?)"}
                break
    proc.join()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bank", type=int, default=50_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--chunk", type=int, default=None, help="queries per chunk (ours; default: automatic)")
    p.add_argument("--bank-chunk", type=int, default=65536, help="bank rows per similarity block (ours)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu", help="cpu or cuda (peak memory is then GPU memory)")
    a = p.parse_args()
    args = vars(a)
    print(f"k-NN bench: bank {a.bank} x {a.dim}, {a.queries} queries, {a.classes} classes, k={KS}, "
          f"device={a.device}, threads={a.threads}, repeats={a.repeats}", flush=True)
    runs: dict[str, list[dict]] = {"ours": [], "reference": []}
    for _ in range(a.repeats):
        for which in runs:
            if runs[which] and "error" in runs[which][-1]:
                continue  # a failure (e.g. out of memory) will not go away on a repeat
            r = run(which, args)
            runs[which].append(r)
            print(f"  {which:<9} " + (f"FAILED: {r['error']}" if "error" in r else
                                      f"{r['seconds']:8.2f} s  peak +{r['peak_mb']:8.0f} MiB"), flush=True)
    ok = {w: [r for r in rs if "error" not in r] for w, rs in runs.items()}
    med = {w: statistics.median(r["seconds"] for r in rs) for w, rs in ok.items() if rs}
    peak = {w: max(r["peak_mb"] for r in rs) for w, rs in ok.items() if rs}
    if "ours" not in med:
        sys.exit(f"ours failed: {runs['ours'][-1]['error']}")
    print(f"ours       median {med['ours']:8.2f} s   peak memory +{peak['ours']:8.0f} MiB "
          f"(query chunk {a.chunk or 'auto'} x bank chunk {a.bank_chunk})")
    if "reference" not in med:
        print(f"reference  FAILED ({runs['reference'][-1]['error']}): the full {a.queries} x {a.bank} matrix + "
              f"sort does not fit; ours ran in bounded memory")
        print("results (ours): " + json.dumps(ok["ours"][0]["results"]))
        return
    identical = all(r["results"] == ok["reference"][0]["results"] for rs in ok.values() for r in rs)
    print(f"reference  median {med['reference']:8.2f} s   peak memory +{peak['reference']:8.0f} MiB "
          f"(full {a.queries} x {a.bank} matrix + full sort)")
    print(f"speed ratio reference/ours = {med['reference'] / med['ours']:.2f}x   "
          f"memory ratio reference/ours = {peak['reference'] / max(peak['ours'], 1):.1f}x")
    print(f"identical top-1/top-5 for every k: {identical}")
    print("results (ours): " + json.dumps(ok["ours"][0]["results"]))
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
