#!/usr/bin/env bash
# TGA-ZSR: one entry point for the common jobs. Each block below is the exact command.
#
#   bash main.sh smoke              # TGA-ZSR on the bundled tiny-world CLIP, mini world, CPU, < 2 min
#   METHOD=fare bash main.sh smoke  # the same smoke setup with any method of the registry
#   bash main.sh smoke-all          # all eleven methods on the smoke setup, one folder, one table
#   bash main.sh test               # the test suite (what CI runs)
#   bash main.sh doctor             # self-check of this machine's device paths + estimate of a tga_zsr run (doctor.json)
#   bash main.sh mini               # the mini benchmark: every row in the procedural world, CPU, one table
#   bash main.sh tga_zsr            # one row of the paper's table (GPU): ViT-B/32, TinyImageNet, 16 test sets
#   bash main.sh all                # every row in sequence, each evaluated after training
#   bash main.sh paper --list       # every table of the paper; `bash main.sh paper T7` runs one (paper.py)
#   bash main.sh mini-paper T7      # the mini version of a table on the CPU (three seeds)
#
# Rows: clip ft_clean ft_adv tecoa tecoa_vpt pmg_aft fare tga_zsr_visual tga_zsr comp_tga tima.
# Each row's method-specific defaults come from configs/<method>.yaml; the command spells out the
# ones that define the row. Extra arguments are passed on, e.g. `bash main.sh tga_zsr --Alpha 0.1`.
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

# The GPU protocol shared by every row (SPEC §0, §5): OpenAI ViT-B/32, TinyImageNet training,
# zero-shot PGD-100 at 1/255 on the 16 test sets.
PROTOCOL=(--arch vit_b32 --pretrained openai --dataset tinyImageNet --root ./data
          --test_eps 1 --test_numsteps 100 --test_stepsize 1)
ROWS=(clip ft_clean ft_adv tecoa tecoa_vpt pmg_aft fare tga_zsr_visual tga_zsr comp_tga tima)

row() {  # row <name> [extra args]: the paper-table command of one method
  local name="$1"; shift
  case "$name" in
    clip)
      # CLIP (4.90 / 64.42): the pretrained model, no training (--epochs 0; the original forgot it).
      "${RUN[@]}" tga_zsr.py --Method CLIP "${PROTOCOL[@]}" --epochs 0 "$@" ;;
    ft_clean)
      # FT-Clean (7.05 / 54.37): in-batch contrastive CE on clean images; SGD lr 1e-4, batch 128, 10 epochs.
      "${RUN[@]}" tga_zsr.py --Method FT-Clean "${PROTOCOL[@]}" --learning_rate 1e-4 --batch_size 128 --epochs 10 \
        --warmup 1000 "$@" ;;
    ft_adv)
      # FT-Adv. (28.83 / 43.36): in-batch contrastive CE on PGD-2 images at 1/255; SGD lr 1e-4.
      "${RUN[@]}" tga_zsr.py --Method FT-Adv "${PROTOCOL[@]}" --learning_rate 1e-4 --batch_size 128 --epochs 10 \
        --warmup 1000 --train_eps 1 --train_numsteps 2 --train_stepsize 1 "$@" ;;
    tecoa)
      # TeCoA (28.06 / 45.81): CE over all classes on PGD-2 images (= TGA-ZSR with Alpha = Beta = 0), lr 1e-5.
      "${RUN[@]}" tga_zsr.py --Method TeCoA "${PROTOCOL[@]}" --learning_rate 1e-5 --batch_size 128 --epochs 10 \
        --warmup 1000 --train_eps 1 --train_numsteps 2 --train_stepsize 1 "$@" ;;
    tecoa_vpt)
      # TeCoA w/ prompting (TeCoA's README: 32.00 / 53.00 on ImageNet; not a row of the TGA table):
      # CLIP frozen, padding prompt 30 + 100 prompt tokens (TeCoA's command), SGD lr 40, batch 256, eps 1/255.
      "${RUN[@]}" tga_zsr.py --Method tecoa_vpt --adaptation_method VPT --pixel_prompt padding --prompt_size 30 --add_prompt_size 100 \
        "${PROTOCOL[@]}" --learning_rate 40 --batch_size 256 --epochs 10 --warmup 1000 --train_eps 1 \
        --train_numsteps 2 --train_stepsize 1 "$@" ;;
    pmg_aft)
      # PMG-AFT (32.51 / 46.60): CE + KL(frozen, x_adv) + KL(clean), raw cosine logits, SGD lr 5e-5.
      "${RUN[@]}" tga_zsr.py --Method PMG-AFT "${PROTOCOL[@]}" --learning_rate 5e-5 --batch_size 128 --epochs 10 \
        --warmup 1000 --train_eps 1 --train_numsteps 2 --train_stepsize 1 "$@" ;;
    fare)
      # FARE (18.25 / 59.85): embedding loss to the frozen model; inner attack 10 momentum steps of 1/255
      # at eps 1/255; AdamW lr 1e-5, wd 1e-4, trained in fp32.
      "${RUN[@]}" tga_zsr.py --Method FARE "${PROTOCOL[@]}" --optimizer adamw --learning_rate 1e-5 --weight_decay 1e-4 \
        --batch_size 128 --epochs 10 --warmup 1000 --train_eps 1 --train_numsteps 10 --train_stepsize 1 \
        --train_momentum 0.9 "$@" ;;
    tga_zsr_visual)
      # Vision-based (29.47 / 45.02): TGA-ZSR with Grad-CAM maps; the map carries no gradient (CE only)
      # [faithful]; add --differentiable_cam for the paper's intent.
      "${RUN[@]}" tga_zsr.py --Method TGA-ZSR --atten_methods visual "${PROTOCOL[@]}" --learning_rate 1e-4 \
        --batch_size 128 --epochs 10 --warmup 1000 --train_eps 1 --train_numsteps 2 --train_stepsize 1 \
        --Alpha 0.08 --Beta 0.05 --Distance_metric l2 "$@" ;;
    tga_zsr)
      # TGA-ZSR (41.96 / 56.48): lr 1e-4, batch 128, 10 epochs, eps 1/255, 2 PGD steps,
      # Alpha 0.08, Beta 0.05, l2 distance; evaluated with PGD-100 at 1/255 on all 16 datasets.
      # One GPU:    python tga_zsr.py --Method TGA-ZSR ...   (the command below)
      # Four GPUs:  torchrun --nproc_per_node 4 tga_zsr.py --Method TGA-ZSR ...   (= NPROC=4 bash main.sh tga_zsr)
      #             global batch 128 = 32 per GPU; add --accum_steps 2 for 16 per GPU on small-memory GPUs
      # Two nodes of 8 GPUs (run on each node, NODE_RANK 0 and 1; run folder and data on a shared disk):
      #   torchrun --nnodes 2 --node_rank $NODE_RANK --nproc_per_node 8 --master_addr $MASTER_ADDR \
      #     --master_port 29500 tga_zsr.py --Method TGA-ZSR ...   (= NNODES=2 NODE_RANK=.. MASTER_ADDR=.. NPROC=8 bash main.sh tga_zsr)
      "${RUN[@]}" tga_zsr.py --Method TGA-ZSR "${PROTOCOL[@]}" --batch_size 128 --learning_rate 1e-4 --epochs 10 \
        --warmup 1000 --train_eps 1 --train_numsteps 2 --train_stepsize 1 --Alpha 0.08 --Beta 0.05 \
        --Distance_metric l2 "$@" ;;
    comp_tga)
      # Comp-TGA (44.46 / 55.44, later README): complementary maps with "This is not a photo of a {}",
      # Alpha 0.10, Beta 0.07.
      "${RUN[@]}" tga_zsr.py --Method Comp-TGA "${PROTOCOL[@]}" --batch_size 128 --learning_rate 1e-4 --epochs 10 \
        --warmup 1000 --train_eps 1 --train_numsteps 2 --train_stepsize 1 --Alpha 0.10 --Beta 0.07 \
        --Distance_metric l2 "$@" ;;
    tima)
      # TIMA (no public code, no number in the TGA table): our reading of the paper, every open
      # choice in configs/tima.yaml.
      "${RUN[@]}" tga_zsr.py --Method TIMA "${PROTOCOL[@]}" "$@" ;;
  esac
}

case "$job" in
  smoke)
    # Embedded default: the smoke setup (bundled tiny-world CLIP, one epoch in the mini world,
    # configs/smoke.yaml) with METHOD's own config (default TGA-ZSR) and its mini learning rate
    # (smoke.yaml sets --mini_lr: the method's paper rate x 100, methods.py),
    # then the results table (training writes loss_curve.png); then its starting model evaluated
    # as the CLIP baseline (<run>/clip_start), and the figures: attention_grid.png/.pdf and
    # trade_off.png/.pdf (the run vs its start) in the run folder (docs/figures/ shows them).
    METHOD="${METHOD:-TGA-ZSR}"
    run="smoke-${METHOD}-$(date +%Y%m%d-%H%M%S)"
    "${RUN[@]}" tga_zsr.py -c configs/smoke.yaml --Method "$METHOD" --device cpu --name "$run" "$@"
    run_dir="$(flag_value --output_dir ./checkpoints "$@")/$(flag_value --name "$run" "$@")"
    "$PY" tga_zsr.py -c configs/smoke.yaml --device cpu "$@" --Method CLIP --epochs 0 \
      --output_dir "$run_dir" --name clip_start
    "$PY" visualize.py --resume "$run_dir" --trade_off "$run_dir/clip_start" "$run_dir" --out "$run_dir" \
      --n_images 3 --dpi 80 --png_colors 160 --device cpu
    ;;
  smoke-all)
    # Every method on the smoke setup into one folder, then one table.
    out="${OUT:-checkpoints/smoke-all-$(date +%Y%m%d-%H%M%S)}"
    runs=()
    for m in "${ROWS[@]}"; do
      echo "[main.sh] smoke: $m" >&2
      "$PY" tga_zsr.py -c configs/smoke.yaml --Method "$m" --device cpu --output_dir "$out" --name "$m" "$@"
      runs+=("$out/$m")
    done
    "$PY" tga_zsr.py --table "${runs[@]}"
    ;;
  mini)
    # The mini benchmark (configs/mini.yaml; README "Mini benchmark"): every row of the table
    # fine-tuned from the bundled tiny-world CLIP on world_train and evaluated with PGD-10 at 4/255
    # on the six world test sets, then one table and the trade-off plot (trade_off.png).
    # About 10 minutes on 2 CPU cores; OUT=dir picks the folder.
    out="${OUT:-checkpoints/mini-$(date +%Y%m%d-%H%M%S)}"
    runs=()
    for m in "${ROWS[@]}"; do
      echo "[main.sh] mini: $m" >&2
      "$PY" tga_zsr.py -c configs/mini.yaml --Method "$m" --output_dir "$out" --name "$m" "$@"
      runs+=("$out/$m")
    done
    "$PY" tga_zsr.py --table "${runs[@]}"
    "$PY" visualize.py --trade_off "${runs[@]}" --out "$out"
    ;;
  test)
    "$PY" -m pytest -q tests "$@"
    ;;
  doctor)
    # What a GPU run would meet, in minutes: every device path against the CPU, fp16/bf16, compile,
    # DDP over the visible GPUs, ViT-B/32 memory, speed, MFU and the wall clock of `bash main.sh tga_zsr`.
    "$PY" doctor.py "$@"
    ;;
  paper)
    # The paper's tables, one command each (README "The paper's tables"; configs/paper/<table>.yaml):
    #   bash main.sh paper --list | T7 --plan | T7 --dry_run | T7 | T1 T6 --gpus 0,1,2,3 | all --submitit slurm
    # Runs are shared between tables and never computed twice; the tables (ours beside the paper's
    # numbers) are printed from whatever has finished, and written to checkpoints/paper/tables/.
    "$PY" paper.py "$@"
    ;;
  mini-paper)
    # The mini version of a table (the mini world of configs/mini.yaml, three seeds, mean ± std) on the
    # CPU: bash main.sh mini-paper T7 T18 T14 T6. Tables -> checkpoints/mini-paper/tables/.
    # Independent runs go JOBS at a time (default: the cores, at most 8), one torch thread each: the
    # tiny model gains little from a second thread, and one thread gives the README's numbers exactly.
    jobs="${JOBS:-$(nproc)}"; (( jobs > 8 )) && jobs=8
    "$PY" paper.py --mini --jobs "$jobs" "$@"
    ;;
  all)
    # Every row of the paper's table in sequence (GPU); each run is evaluated after training.
    for m in "${ROWS[@]}"; do
      echo "[main.sh] row: $m" >&2
      row "$m" "$@"
    done
    ;;
  *)
    if [[ " ${ROWS[*]} " != *" $job "* ]]; then
      echo "unknown job '$job'. Jobs: smoke, smoke-all, mini, test, doctor, all, paper, mini-paper, ${ROWS[*]}" >&2
      exit 2
    fi
    row "$job" "$@"
    ;;
esac
