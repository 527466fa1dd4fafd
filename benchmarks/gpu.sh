#!/usr/bin/env bash
# The GPU benchmark on one CUDA GPU (H100/H200 class), under 6 minutes: attention at
# 14x14 x 128, 32x32 x 32, 64x64 x 8, 50x84 x 4, 72x72 x 4 (bf16 and fp32/TF32, each implementation
# against timm), BoT50 vs R50 at 224 and 1024 px, BoTNet-S1 T3/T5/T7 vs EfficientNet B3/B5/B7,
# Mask R-CNN BoT50 vs R50 at 1024 px. Writes gpu-*.{json,md} and gpu-summary.{json,md} to OUT_DIR.
# The plan (sections, options, budget) is src/botnet/bench/gpu_plan.py.
# Usage: benchmarks/gpu.sh [OUT_DIR]     (BUDGET_S=330 by default; PYTHON=.venv/bin/python)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "benchmarks/gpu.sh: no CUDA GPU visible to torch ($("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "no torch in $PY")); run it on a machine with one" >&2
  exit 2
fi
exec "$PY" -m botnet.bench.gpu_plan "${1:-benchmarks/results}"
