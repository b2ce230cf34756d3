#!/usr/bin/env bash
# TGA-ZSR: one entry point for the common jobs (`bash main.sh help` lists them).
#
# A method's job (`bash main.sh tga_zsr`, `bash main.sh tecoa`, ...) is its row of the paper's table:
# `python tga_zsr.py --Method NAME`, whose defaults are the paper's protocol (ViT-B/32 OpenAI,
# TinyImageNet, PGD-100 at 1/255 on the 16 test sets) and configs/NAME.yaml the row's own settings.
# The names come from the method registry (methods/). Extra arguments are passed on, e.g.
# `bash main.sh tga_zsr --Alpha 0.1`. Several GPUs: NPROC=4 bash main.sh tga_zsr (torchrun, one
# process per GPU; --batch_size stays the global batch). Several nodes: also NNODES, NODE_RANK,
# MASTER_ADDR (and MASTER_PORT) on each node.
# An active virtualenv (or a python3 that already has the requirements) is used as is; otherwise
# .venv is created from requirements.txt on first use (FORCE_VENV=1 forces it).
set -euo pipefail
cd "$(dirname "$0")"

JOBS="  smoke         TGA-ZSR on the bundled tiny-world CLIP, mini world, CPU, < 2 min (METHOD=fare: another method)
  smoke-all     every method on the smoke setup, one folder, one table
  test          the test suite (what CI runs)
  audit         which evaluation knob moves a robust number: bash main.sh audit MODEL [evaluation flags] (docs/audit.md)
  doctor        self-check of this machine's device paths, and the wall clock of a paper run (doctor.json)
  gpu-check     a GPU box's verdict and speed in <= 8 min (gpu_check/gpu_check.json); --cpu-smoke on a CPU
  mini          the mini benchmark: every method in the mini world, CPU, one table and a trade-off plot
  paper         the paper's tables (paper.py): bash main.sh paper --list | T7 --plan | T7
  mini-paper    the mini version of a table on the CPU, three seeds: bash main.sh mini-paper T7
  all           every method's paper row in sequence (GPU), each evaluated after training
  <method>      one method's paper row (GPU): bash main.sh tga_zsr; the names: bash main.sh help
  help          this list"

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

job="${1:-help}"; shift || true
case "$job" in
  help|-h|--help)
    printf 'usage: bash main.sh JOB [flags passed on]\n\njobs:\n%s\n' "$JOBS"
    # The method names come from the registry, which needs the environment; help never creates it.
    for py in .venv/bin/python python3; do
      if names=$("$py" -c "from methods import available_methods; print(' '.join(available_methods()))" 2>/dev/null); then
        printf '\nmethods: %s\n' "$names"; exit 0
      fi
    done
    printf '\nmethods: listed here once the environment exists (any other job creates it)\n'
    exit 0 ;;
  gpu-check)
    # A GPU box may hold torch and CUDA but not the other packages, and no internet: wheelhouse.py picks the
    # interpreter that has them all, or installs them offline from WHEELS (docs/gpus.md), over the box's torch.
    py="$(python3 wheelhouse.py python --wheels "${WHEELS:-wheels}")"
    exec "$py" gpu_check.py "$@" ;;
esac
ensure_env
METHODS=($("$PY" -c "from methods import available_methods; print(' '.join(available_methods()))"))

# Launcher: plain python, or torchrun when NPROC > 1 or NNODES > 1 (engine/distributed.py).
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
    # The embedded default: the bundled tiny-world CLIP fine-tuned for one epoch in the mini world
    # (configs/smoke.yaml) with METHOD (default TGA-ZSR) at its mini learning rate, then the results
    # table; then its starting model evaluated as the CLIP baseline (<run>/clip_start), and the figures
    # (attention_grid, trade_off, loss_curve: .png and .pdf in the run folder; docs/figures/ shows them).
    METHOD="${METHOD:-TGA-ZSR}"
    run="smoke-${METHOD}-$(date +%Y%m%d-%H%M%S)"
    "${RUN[@]}" tga_zsr.py -c configs/smoke.yaml --Method "$METHOD" --device cpu --name "$run" "$@"
    run_dir="$(flag_value --output_dir ./checkpoints "$@")/$(flag_value --name "$run" "$@")"
    "$PY" tga_zsr.py -c configs/smoke.yaml --device cpu "$@" --Method CLIP --epochs 0 \
      --output_dir "$run_dir" --name clip_start
    "$PY" visualize.py --resume "$run_dir" --trade_off "$run_dir/clip_start" "$run_dir" --out "$run_dir" \
      --n_images 3 --device cpu
    ;;
  smoke-all|mini)
    # smoke-all: every method on the smoke setup; mini: the mini benchmark (configs/mini.yaml, docs:
    # the mini world), about 10 minutes on 2 CPU cores. One folder (OUT=dir picks it), one table.
    setup=(-c configs/smoke.yaml --device cpu); [ "$job" = mini ] && setup=(-c configs/mini.yaml)
    out="${OUT:-checkpoints/$job-$(date +%Y%m%d-%H%M%S)}"
    runs=()
    for m in "${METHODS[@]}"; do
      echo "[main.sh] $job: $m" >&2
      "$PY" tga_zsr.py "${setup[@]}" --Method "$m" --output_dir "$out" --name "$m" "$@"
      runs+=("$out/$m")
    done
    "$PY" report.py table "${runs[@]}"
    [ "$job" = mini ] && "$PY" visualize.py --trade_off "${runs[@]}" --out "$out"
    ;;
  test)
    "$PY" -m pytest -q tests "$@"
    ;;
  doctor)
    "$PY" doctor.py "$@"
    ;;
  audit)
    "$PY" audit.py "$@"
    ;;
  paper)
    "$PY" paper.py "$@"
    ;;
  mini-paper)
    # Independent runs go JOBS at a time (default: the cores, at most 8), one torch thread each: the
    # tiny model gains little from a second thread, and one thread gives the documented numbers exactly.
    jobs="${JOBS:-$(nproc)}"; (( jobs > 8 )) && jobs=8
    "$PY" paper.py --mini --jobs "$jobs" "$@"
    ;;
  all)
    for m in "${METHODS[@]}"; do
      echo "[main.sh] row: $m" >&2
      "${RUN[@]}" tga_zsr.py --Method "$m" "$@"
    done
    ;;
  *)
    if [[ " ${METHODS[*]} " != *" $job "* ]]; then
      printf 'unknown job %s\n\njobs:\n%s\nmethods: %s\n' "$job" "$JOBS" "${METHODS[*]}" >&2
      exit 2
    fi
    "${RUN[@]}" tga_zsr.py --Method "$job" "$@"
    ;;
esac
