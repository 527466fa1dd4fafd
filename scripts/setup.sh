#!/usr/bin/env bash
# One-step set-up for a fresh Debian machine (run as root) or any machine with Python 3.10+.
# Creates ./.venv with botnet and its dependencies; installs Debian's Fashion-MNIST package
# (the embedded default data) when apt is available. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
  "$PY" -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
  if [ ${#need[@]} -gt 0 ]; then
    echo "[setup] apt-get install ${need[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
      || echo "[setup] warning: could not install ${need[*]} with apt; continuing"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import botnet, torch, torchvision, pytest, onnxruntime, webdataset' 2>/dev/null; then
  echo "[setup] installing botnet and its dependencies into .venv (about a minute from a warm cache)"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import botnet, torch, torchvision' || { echo "[setup] install failed" >&2; exit 1; }
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)')"
