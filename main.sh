#!/usr/bin/env bash
# TGA-ZSR: one entry point for the common jobs. Each block below is the exact command.
#
#   bash main.sh smoke      # tiny model, synthetic data, CPU, < 2 min (the embedded default)
#   bash main.sh test       # the test suite (what CI runs)
#   bash main.sh tga_zsr    # the paper's TGA-ZSR run: ViT-B/32, TinyImageNet, 16 test sets (GPU)
#
# Extra arguments are passed on to the Python command, e.g. `bash main.sh tga_zsr --Alpha 0.1`.
# Several GPUs: NPROC=4 bash main.sh tga_zsr   (torchrun, one process per GPU; --batch_size stays
# the global batch). Several nodes: also NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) per node.
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

# The value of flag $1 among the remaining arguments (last one wins, as in argparse), else $2.
flag_value() {
  local flag="$1" value="$2"; shift 2
  while [ $# -gt 0 ]; do
    case "$1" in
      "$flag") value="${2:-$value}"; shift ;;
      "$flag"=*) value="${1#*=}" ;;
    esac
    shift
  done
  printf '%s' "$value"
}

job="${1:-smoke}"; shift || true
ensure_env

# Launcher: plain python, or torchrun when NPROC > 1 or NNODES > 1 (distributed.py).
NPROC="${NPROC:-1}"; NNODES="${NNODES:-1}"
if [ "$NPROC" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
  if [ "$NNODES" -gt 1 ]; then
    : "${NODE_RANK:?set NODE_RANK (0..NNODES-1) on each node}" "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}"
    RUN=("$PY" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC"
         --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}")
  else
    RUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")
  fi
else
  RUN=("$PY")
fi

case "$job" in
  smoke)
    # Embedded default: TGA-ZSR on the tiny model and synthetic data, then the results table
    # (training writes loss_curve.png); then its starting model evaluated as the CLIP baseline
    # (<run>/clip_start), and the figures: attention_grid.png/.pdf and trade_off.png/.pdf (the
    # run vs its start) in the run folder, as small palette PNGs (docs/figures/ shows them).
    run="smoke-$(date +%Y%m%d-%H%M%S)"
    "${RUN[@]}" tga_zsr.py -c configs/smoke.yaml --device cpu --name "$run" "$@"
    run_dir="$(flag_value --output_dir ./checkpoints "$@")/$(flag_value --name "$run" "$@")"
    "$PY" tga_zsr.py -c configs/smoke.yaml --device cpu "$@" --Method CLIP --epochs 0 \
      --output_dir "$run_dir" --name clip_start
    "$PY" visualize.py --resume "$run_dir" --trade_off "$run_dir/clip_start" "$run_dir" --out "$run_dir" \
      --n_images 3 --dpi 80 --png_colors 160 --device cpu
    ;;
  test)
    "$PY" -m pytest -q tests "$@"
    ;;
  tga_zsr)
    # TGA-ZSR (README row "TGA-ZSR"): lr 1e-4, batch 128, 10 epochs, eps 1/255, 2 PGD steps,
    # Alpha 0.08, Beta 0.05, l2 distance; evaluated with PGD-100 at 1/255 on all 16 datasets.
    # One GPU:    python tga_zsr.py --Method TGA-ZSR ...   (the command below)
    # Four GPUs:  torchrun --nproc_per_node 4 tga_zsr.py --Method TGA-ZSR ...   (= NPROC=4 bash main.sh tga_zsr)
    #             global batch 128 = 32 per GPU; add --accum_steps 2 for 16 per GPU on small-memory GPUs
    # Two nodes of 8 GPUs (run on each node, NODE_RANK 0 and 1; run folder and data on a shared disk):
    #   torchrun --nnodes 2 --node_rank $NODE_RANK --nproc_per_node 8 --master_addr $MASTER_ADDR \
    #     --master_port 29500 tga_zsr.py --Method TGA-ZSR ...   (= NNODES=2 NODE_RANK=.. MASTER_ADDR=.. NPROC=8 bash main.sh tga_zsr)
    "${RUN[@]}" tga_zsr.py --Method TGA-ZSR --arch vit_b32 --pretrained openai --dataset tinyImageNet --root ./data \
      --batch_size 128 --learning_rate 1e-4 --epochs 10 --warmup 1000 --train_eps 1 --train_numsteps 2 \
      --train_stepsize 1 --Alpha 0.08 --Beta 0.05 --Distance_metric l2 --test_eps 1 --test_numsteps 100 \
      --test_stepsize 1 "$@"
    ;;
  *)
    echo "unknown job '$job'. Jobs: smoke, test, tga_zsr" >&2
    exit 2
    ;;
esac
