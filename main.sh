#!/usr/bin/env bash
# TGA-ZSR: one entry point for the common jobs. Each block below is the exact command.
#
#   bash main.sh smoke      # tiny model, synthetic data, CPU, < 2 min (the embedded default)
#   bash main.sh test       # the test suite (what CI runs)
#   bash main.sh tga_zsr    # the paper's TGA-ZSR run: ViT-B/32, TinyImageNet, 16 test sets (GPU)
#
# Extra arguments are passed on to the Python command, e.g. `bash main.sh tga_zsr --Alpha 0.1`.
# An active virtualenv (or a python3 that already has the requirements) is used as is;
# otherwise .venv is created from requirements.txt on first use (FORCE_VENV=1 forces it).
set -euo pipefail
cd "$(dirname "$0")"

DEPS_CHECK="import torch, torchvision, open_clip, numpy, tqdm, yaml, scipy, h5py, pyautoattack, matplotlib, pytest"

ensure_env() {
  if [ -n "${VIRTUAL_ENV:-}" ]; then PY=python; return; fi
  if [ -x .venv/bin/python ] && .venv/bin/python -c "$DEPS_CHECK" 2>/dev/null; then PY=.venv/bin/python; return; fi
  if [ "${FORCE_VENV:-0}" != 1 ] && python3 -c "$DEPS_CHECK" 2>/dev/null; then PY=python3; return; fi
  echo "[main.sh] creating .venv from requirements.txt (first run only)" >&2
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  PY=.venv/bin/python
}

job="${1:-smoke}"; shift || true
ensure_env

case "$job" in
  smoke)
    # Embedded default: TGA-ZSR on the tiny model and synthetic data, then the results table.
    "$PY" tga_zsr.py -c configs/smoke.yaml --device cpu --name "smoke-$(date +%Y%m%d-%H%M%S)" "$@"
    ;;
  test)
    "$PY" -m pytest -q tests "$@"
    ;;
  tga_zsr)
    # TGA-ZSR (README row "TGA-ZSR"): lr 1e-4, batch 128, 10 epochs, eps 1/255, 2 PGD steps,
    # Alpha 0.08, Beta 0.05, l2 distance; evaluated with PGD-100 at 1/255 on all 16 datasets.
    "$PY" tga_zsr.py --Method TGA-ZSR --arch vit_b32 --pretrained openai --dataset tinyImageNet --root ./data \
      --batch_size 128 --learning_rate 1e-4 --epochs 10 --warmup 1000 --train_eps 1 --train_numsteps 2 \
      --train_stepsize 1 --Alpha 0.08 --Beta 0.05 --Distance_metric l2 --test_eps 1 --test_numsteps 100 \
      --test_stepsize 1 "$@"
    ;;
  *)
    echo "unknown job '$job'. Jobs: smoke, test, tga_zsr" >&2
    exit 2
    ;;
esac
