#!/usr/bin/env bash
# The full benchmark (CPU): every suite of `botnet bench`, one result file per suite, then a
# combined table and plot (benchmarks/results/summary.{md,png,json}).
# Takes about 45-60 minutes on 2 shared cores. Usage: benchmarks/run_all.sh [OUT_DIR] [NOTE]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-benchmarks/results}
NOTE=${2:-}
export HF_HUB_OFFLINE=1
run() { # name, extra args...
  local name=$1; shift
  echo "=== $name: botnet bench $*"
  $PY -m botnet.cli bench --out "$OUT" --name "$name" --note "$NOTE" "$@" || echo "!!! $name reported errors"
}
run attention    --suite attention    --warmup 1 --repeats 5
run backbone     --suite backbone     --warmup 1 --repeats 7
run maskrcnn     --suite maskrcnn     --warmup 1 --repeats 5
run efficientnet --suite efficientnet --warmup 1 --repeats 5
run options      --suite options      --warmup 1 --repeats 5
run compile      --suite compile      --warmup 2 --repeats 5 --no-memory
run data         --suite data         --warmup 1 --repeats 7
run export       --suite export       --warmup 1 --repeats 7
$PY benchmarks/summarize.py "$OUT"
