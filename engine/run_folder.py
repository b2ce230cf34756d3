"""A run's folder: its name, what it records before any work starts, and its log.

`<output_dir>/<name>/` holds `args.yaml` (the resolved flags), `environment.json` (package
versions, git revision, command line), `log.txt`, then what training and evaluation write
(`last.pt`, `history.jsonl`, `results.jsonl`, figures). A finished run is never overwritten;
`--resume` continues or re-evaluates it. One process works in a run folder at a time: `.lock`
holds its host and pid while it runs (`RunLock`). The default name says what the run is: method, arch,
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
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torchvision
import yaml

from engine.checkpoint import CHECKPOINT_NAME, load_file, pid_alive, remove_stale_temp_files, resolve_checkpoint
from engine.settings import Settings, flags_with_role
from methods import run_name_parts

log = logging.getLogger("tga_zsr")


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", str(text))


def run_name(s: Settings) -> str:
    """The default folder name of a training run."""
    m, t = s.model, s.train
    parts = [s.method.name, _slug(Path(str(m.arch)).stem), f"lr{t.learning_rate:g}", f"bs{t.batch_size}",
             f"ep{t.epochs}", f"eps{s.values['train_eps']:g}", *run_name_parts(s.method.cls, s.method.options)]
    if m.adaptation_method == "VPT":
        parts.append(f"vpt-{m.pixel_prompt}-p{m.prompt_size}-t{m.add_prompt_size}")
    parts.append(f"seed{t.seed}")
    return "_".join(parts)


def prepare_run_dir(s: Settings) -> tuple[Path, Path | None]:
    """The run folder, and the checkpoint to resume from (or None). Reads, never writes."""
    r = s.run
    if r.resume:
        ckpt = resolve_checkpoint(r.resume)
        if ckpt.name == CHECKPOINT_NAME and (ckpt.parent / "args.yaml").exists():
            return ckpt.parent, ckpt
        if not r.eval_only:
            if ckpt.name == CHECKPOINT_NAME:
                raise SystemExit(
                    f"--resume {r.resume}: {ckpt.parent} has {CHECKPOINT_NAME} but no args.yaml (deleted, or not "
                    f"copied with it), so the run's settings are unknown. Restore it from the checkpoint's own "
                    f"copy of the settings:\n  python -c \"import torch, yaml; a = torch.load('{ckpt}', "
                    f"weights_only=True)['args']; yaml.safe_dump(a, open('{ckpt.parent / 'args.yaml'}', 'w'))\"\n"
                    f"or evaluate the weights alone with --eval_only --resume {ckpt}")
            raise SystemExit(f"--resume {r.resume} is not a run of this project (no args.yaml beside it); "
                             f"to evaluate foreign weights use --eval_only --resume FILE")
        return Path(r.output_dir) / (r.name or f"eval_{ckpt.stem.replace('.pth', '')}"), ckpt
    if r.eval_only:  # pretrained weights only (e.g. CLIP itself): named after what is evaluated
        weights = _slug(Path(str(s.model.pretrained)).stem.replace(".pth", ""))
        return Path(r.output_dir) / (r.name or f"eval_{_slug(Path(str(s.model.arch)).stem)}_{weights}"), None
    return Path(r.output_dir) / (r.name or run_name(s)), None


def refuse_to_overwrite(run_dir: Path) -> None:
    """A new training run never lands on a folder that already holds one."""
    last = run_dir / CHECKPOINT_NAME
    if last.exists():
        meta = load_file(last).get("meta", {})
        state = "a finished" if meta.get("finished") else "an unfinished"
        raise SystemExit(f"{run_dir} already holds {state} run. Continue or re-evaluate it with "
                         f"--resume {run_dir}, or pick another --name / --output_dir.")


def check_resume(values: dict, ckpt: dict, path: Path) -> None:
    """Refuse to continue a checkpoint with a model other than the one it trained (an edited args.yaml):
    the method and every flag of the `model` role must be those the checkpoint was trained with."""
    saved = ckpt.get("args") if isinstance(ckpt, dict) and isinstance(ckpt.get("args"), dict) else {}
    diff = [f"{k}: {saved[k]!r} in the checkpoint, {values.get(k)!r} now" for k in ["Method", *flags_with_role("model")]
            if k in saved and saved[k] != values.get(k)]
    if diff:
        raise SystemExit(f"--resume {path}: the checkpoint was trained with other settings than args.yaml and the "
                         f"command line give ({'; '.join(diff)}). A resumed run keeps the model it started with: "
                         f"restore those values in {path.parent / 'args.yaml'}, or start a new run with another --name")


HEADER_FILES = ("args.yaml", "environment.json", "eval_args.yaml", "eval_environment.json", "log.txt")


class RunLock:
    """One process at a time in a run folder: `<run>/.lock` holds its host, pid, start time and
    command line, from before anything is read until the process ends. A second process exits
    naming the first; the lock of a process that died on this host is taken over with a warning.
    Creating the folder here also checks that `--output_dir` is writable before data or weights
    are loaded. If the run fails before its work starts (`started` unset), a folder this process
    created is removed again with what it wrote (args.yaml, environment.json, log.txt).
    Under torchrun only rank 0 holds it (`hold=False` elsewhere)."""

    NAME = ".lock"

    def __init__(self, run_dir: Path, hold: bool = True):
        self.run_dir, self.path, self.hold = Path(run_dir), Path(run_dir) / self.NAME, hold
        self.made: list[Path] = []  # folders created here, deepest first
        self.held = self.started = False

    def __enter__(self) -> "RunLock":
        if not self.hold:
            return self
        self.made = [d for d in (self.run_dir, *self.run_dir.parents) if not d.exists()]
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise SystemExit(f"cannot create the run folder {self.run_dir}: a file stands in its path; "
                             f"pick another --output_dir or --name") from None
        except OSError as e:
            raise SystemExit(f"cannot create the run folder {self.run_dir} ({e.strerror}): "
                             f"pick a writable --output_dir") from None
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "argv": sys.argv}
        tmp = self.run_dir / f"{self.NAME}.{me['host']}.{me['pid']}"
        try:
            tmp.write_text(json.dumps(me))
            while not self._link(tmp):
                holder = self._holder()
                if not holder:
                    raise SystemExit(f"{self.path} exists but cannot be read: if no other process works in "
                                     f"{self.run_dir}, delete it")
                if holder.get("host") != me["host"] or pid_alive(int(holder.get("pid", -1))):
                    raise SystemExit(
                        f"{self.run_dir} is in use by another process: pid {holder.get('pid')} on "
                        f"{holder.get('host')}, started {holder.get('started')} ({' '.join(holder.get('argv', []))}). "
                        f"Wait for it to end or stop it; if no such process runs any more, delete {self.path}")
                log.warning(f"{self.path}: taking over the lock of pid {holder.get('pid')}, which no longer runs")
                self.path.unlink(missing_ok=True)
        except OSError as e:
            self._remove_made()
            raise SystemExit(f"cannot write in the run folder {self.run_dir} ({e.strerror}): "
                             f"pick a writable --output_dir") from None
        finally:
            tmp.unlink(missing_ok=True)
        self.held = True
        for stale in remove_stale_temp_files(self.run_dir):
            log.warning(f"removed {stale}, left by a checkpoint write that was killed")
        return self

    def _link(self, tmp: Path) -> bool:
        """Create the lock with its content in one step (a hard link fails if the lock exists)."""
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def _remove_made(self) -> None:
        for d in self.made:  # only folders this process created, and only if empty
            try:
                d.rmdir()
            except OSError:
                break

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.held:
            return
        if exc_type is not None and not self.started and self.made:
            for name in HEADER_FILES:  # a setup failure leaves nothing behind
                (self.run_dir / name).unlink(missing_ok=True)
        if self._holder().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False
        if exc_type is not None and not self.started:
            self._remove_made()


def git_revision() -> str:
    here = Path(__file__).resolve().parents[1]
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


def write_run_header(run_dir: Path, values: dict, eval_only: bool = False) -> None:
    """args.yaml and environment.json, before any work. An evaluation of a training run keeps the
    run's own args.yaml (what --resume continues from) and writes eval_args.yaml beside it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    prefix = "eval_" if eval_only and (run_dir / "args.yaml").exists() else ""
    with open(run_dir / f"{prefix}args.yaml", "w") as f:
        yaml.safe_dump(values, f, sort_keys=True)
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
