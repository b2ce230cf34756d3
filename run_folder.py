"""A run's folder: its name, what it records before any work starts, and its log.

`<output_dir>/<name>/` holds `args.yaml` (the resolved flags), `environment.json` (package
versions, git revision, command line), `log.txt`, then what training and evaluation write
(`last.pt`, `history.jsonl`, `results.jsonl`, figures). A finished run is never overwritten;
`--resume` continues or re-evaluates it. The default name says what the run is: method, arch,
learning rate, batch, epochs, ε, the method's own settings (methods.py `run_name`), the visual
prompts and the seed, so a second run with another setting lands in its own folder.

    python tga_zsr.py -c configs/synthetic.yaml      # -> checkpoints/tga_zsr_tiny-vit_lr0.0001_..._seed0/
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import torch
import torchvision
import yaml

from checkpoint import CHECKPOINT_NAME, load_file, resolve_checkpoint
from methods import run_name_parts

log = logging.getLogger("tga_zsr")


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", str(text))


def run_name(args, method) -> str:
    """The default folder name of a training run of `method` (a methods.Method class)."""
    parts = [method.name, _slug(Path(str(args.arch)).stem), f"lr{args.learning_rate:g}", f"bs{args.batch_size}",
             f"ep{args.epochs}", f"eps{args.train_eps:g}", *run_name_parts(method, args)]
    if args.adaptation_method == "VPT":
        parts.append(f"vpt-{args.pixel_prompt}-p{args.prompt_size}-t{args.add_prompt_size}")
    parts.append(f"seed{args.seed}")
    return "_".join(parts)


def prepare_run_dir(args, method) -> tuple[Path, Path | None]:
    """The run folder, and the checkpoint to resume from (or None). Refuses to clobber runs."""
    if args.resume:
        ckpt = resolve_checkpoint(args.resume)
        if ckpt.name == CHECKPOINT_NAME and (ckpt.parent / "args.yaml").exists():
            return ckpt.parent, ckpt
        if not args.eval_only:
            raise SystemExit(f"--resume {args.resume} is not a run of this project (no args.yaml beside it); "
                             f"to evaluate foreign weights use --eval_only --resume FILE")
        return Path(args.output_dir) / (args.name or f"eval_{ckpt.stem.replace('.pth', '')}"), ckpt
    if args.eval_only:  # pretrained weights only (e.g. CLIP itself): named after what is evaluated
        weights = _slug(Path(str(args.pretrained)).stem.replace(".pth", ""))
        return Path(args.output_dir) / (args.name or f"eval_{_slug(Path(str(args.arch)).stem)}_{weights}"), None
    run_dir = Path(args.output_dir) / (args.name or run_name(args, method))
    last = run_dir / CHECKPOINT_NAME
    if last.exists():
        meta = load_file(last).get("meta", {})
        state = "a finished" if meta.get("finished") else "an unfinished"
        raise SystemExit(f"{run_dir} already holds {state} run. Continue or re-evaluate it with "
                         f"--resume {run_dir}, or pick another --name / --output_dir.")
    return run_dir, None


def git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    """Package versions, hardware, git revision and command line: what produced a result."""
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "open_clip": open_clip.__version__, "numpy": np.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "git": git_revision(), "argv": sys.argv, "cwd": os.getcwd(),
    }


def write_run_header(run_dir: Path, args) -> None:
    """args.yaml and environment.json, before any work. An evaluation of a training run keeps the
    run's own args.yaml (what --resume continues from) and writes eval_args.yaml beside it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    prefix = "eval_" if args.eval_only and (run_dir / "args.yaml").exists() else ""
    with open(run_dir / f"{prefix}args.yaml", "w") as f:
        yaml.safe_dump(vars(args), f, sort_keys=True)
    (run_dir / f"{prefix}environment.json").write_text(json.dumps(environment(), indent=2))


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is now (tests and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _):
        pass


def setup_logging(run_dir: Path | None, rank: int = 0, world: int = 1) -> None:
    """The "tga_zsr" logger: stdout on every rank (warnings only off rank 0), `<run>/log.txt` on rank 0."""
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    for old in log.handlers:
        old.close()
    log.handlers.clear()
    fmt = logging.Formatter("%(asctime)s " + (f"[rank {rank}/{world}] " if world > 1 else "") + "%(message)s",
                            "%H:%M:%S")
    h = _CurrentStdout()
    h.setFormatter(fmt)
    log.addHandler(h)
    if run_dir is not None and rank == 0:
        fh = logging.FileHandler(run_dir / "log.txt")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    log.propagate = False
