#!/usr/bin/env bash
# Every GPU benchmark in one go (≤ 10 minutes on one GPU), one table at the end:
#   1. ViT-S/16 training step (224 px, 2x224 + 6x96 crops, bf16): images/s and MFU, fused vs all-explicit attention
#      (bench/pretrain.py --gpu-attention);
#   2. multi-crop ingest (2x224 + 10x96 crops of 400x320 JPEGs it writes itself) per CPU core, Ray Data and the
#      torch DataLoader (bench/data_pipeline.py), beside the GPU step rate: how many cores keep the GPU fed;
#   3. batched insertion/deletion metrics (bench/metrics.py); 4. chunked k-NN on CUDA (bench/knn.py).
# Without a CUDA device it prints one line and exits 0 at once (exit 2 with one error: line if torch is missing). Python: $PYTHON, else .venv/bin/python, else python3.
#     bash bench/gpu.sh [--peak-tflops 989]
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PEAK=989
[ "${1:-}" = "--peak-tflops" ] && PEAK=${2:?--peak-tflops needs a number}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$ROOT/platform${PYTHONPATH:+:$PYTHONPATH}"
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true HF_HUB_OFFLINE=1
# cheap checks first (no torch import): torch installed, a visible NVIDIA device; then CUDA itself
if ! "$PY" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('torch') else 1)" >/dev/null 2>&1; then
  echo "error: bench/gpu.sh: '$PY' cannot import torch (set PYTHON=/path/to/venv/bin/python)" >&2
  exit 2
fi
no_cuda() { echo "bench/gpu.sh: no CUDA device visible: GPU benchmarks skipped"; exit 0; }
case "${CUDA_VISIBLE_DEVICES-unset}" in ""|-1) no_cuda ;; esac
ls /dev/nvidia[0-9]* >/dev/null 2>&1 || nvidia-smi -L >/dev/null 2>&1 || no_cuda
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" >/dev/null 2>&1 || no_cuda
TMP=$(mktemp -d "${TMPDIR:-/tmp}/mimlab-gpu-bench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
START=$(date +%s)
run() {  # run LABEL SECONDS CMD...: output to $TMP/LABEL.log, status to $TMP/LABEL.rc
  local label=$1 limit=$2; shift 2
  echo "[$(( $(date +%s) - START )) s] $label ..." >&2
  timeout --kill-after=10 "$limit" "$@" >"$TMP/$label.log" 2>&1
  echo $? >"$TMP/$label.rc"
}
run step 210 "$PY" bench/pretrain.py --gpu-attention --steps 5 --rounds 3 --peak-tflops "$PEAK"
"$PY" - "$TMP/jpeg" <<'PYEOF' >"$TMP/data.log" 2>&1
import io, os, sys
import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from mimlab.data.schema import records_table
out = sys.argv[1]
os.makedirs(out)
rng = np.random.default_rng(0)
images, labels, paths = [], [], []
for i in range(384):  # smooth random textures, ImageNet-like 400x320 JPEGs (q 90)
    small = rng.integers(0, 256, size=(20, 25, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((400, 320), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    images.append(buf.getvalue()); labels.append(i % 10); paths.append(f"synthetic/{i:05d}.jpg")
pq.write_table(records_table(images, labels, paths), os.path.join(out, "part-00000.parquet"))
PYEOF
CORES=2
run ingest 170 "$PY" bench/data_pipeline.py --data "$TMP/jpeg" --workers "$CORES" --epochs 3 --batch 32 \
  --global-size 224 --local-size 96 --local-crops 10
run metrics 110 "$PY" bench/metrics.py --images 8 --repeats 2 --batch-sizes 64 128 256
run knn 80 "$PY" bench/knn.py --device cuda --repeats 2
"$PY" - "$TMP" "$CORES" "$(( $(date +%s) - START ))" <<'PYEOF'
import re, sys
from pathlib import Path
tmp, cores, took = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def log(name):
    p = tmp / f"{name}.log"
    return p.read_text(errors="replace") if p.exists() else ""
def status(name):
    rc = (tmp / f"{name}.rc").read_text().strip() if (tmp / f"{name}.rc").exists() else "?"
    return "ok" if rc == "0" else ("TIMED OUT" if rc in ("124", "137") else f"FAILED (exit {rc})")
rows = []
step = {}
for m in re.finditer(r"attention (.+?)\s+([\d.]+) img/s.*?([\d.]+) TFLOP/s\s+MFU\s+([\d.]+) %", log("step")):
    step[m.group(1).strip()] = float(m.group(2))
    rows.append(("ViT-S/16 step", f"attention {m.group(1).strip()}", f"{m.group(2)} img/s, {m.group(3)} TFLOP/s, MFU {m.group(4)} %"))
ing = {}
for label, key in (("torch DataLoader", "dataloader"), ("Ray Data pipeline", "ray")):
    m = re.search(label + r".*?median ([\d.]+) img/s", log("ingest"))
    if m:
        ing[key] = float(m.group(1))
        rows.append(("ingest 2x224+10x96", f"{label}, {cores} cores", f"{m.group(1)} img/s = {ing[key] / cores:.1f} img/s per core"))
m = re.search(r"ratio Ray Data / DataLoader \(medians\): ([\d.]+)", log("ingest"))
if m:
    rows.append(("ingest 2x224+10x96", "ratio Ray Data / DataLoader", f"{m.group(1)}x"))
if step and ing.get("ray"):
    fused = step.get("fused where unread", max(step.values()))
    rows.append(("keeps up?", "CPU cores to feed one GPU", f"{fused / (ing['ray'] / cores):.1f} cores (Ray Data) at {fused:.0f} img/s"))
for name in ("metrics", "knn"):
    tail = [l for l in log(name).splitlines() if l.strip()][-4:]
    for l in tail:
        rows.append((name, "", l.strip()[:110]))
for name in ("step", "ingest", "metrics", "knn"):
    rows.append(("status", name, status(name)))
w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
print(f"\n== bench/gpu.sh ({took} s) ==")
for a, b, c in rows:
    print(f"{a:{w0}s} | {b:{w1}s} | {c}")
PYEOF
