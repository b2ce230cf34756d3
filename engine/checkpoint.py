"""Our run checkpoint: written atomically, read safely, resumed exactly.

`last.pt` (written by `engine.train.Trainer` through `trainable_state` + `atomic_save`) holds the
trainable state (`vision_encoder_state_dict`: open_clip / OpenAI names of `model.visual`, the key
the original TGA-ZSR/TeCoA code uses), prompt parameters if any, optimizer, scaler, global step,
epoch, RNG states and the args. Everything is stored as tensors and plain values, and every file
is read with `torch.load(..., weights_only=True)` (`load_file`): no arbitrary object is ever
unpickled. Weights of other origins (the original `.pth.tar`, RobustVLM, whole CLIPs, hub and
transformers folders) are engine/weights.py.

    from engine.checkpoint import atomic_save, load_file, trainable_state
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import torch


log = logging.getLogger("tga_zsr")
CHECKPOINT_NAME = "last.pt"


class CheckpointWriteError(SystemExit):
    """A checkpoint could not be written (disk full, quota, read-only disk); the message says where
    and how much space it needs. The file it would have replaced is untouched."""


def temp_path(path: Path) -> Path:
    """Where `atomic_save` writes before the rename: `.<name>.tmp-<pid>` beside the target."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _payload_bytes(obj) -> int:
    """Bytes of the tensors in `obj` (nested dicts / lists): about the size of its checkpoint file."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_payload_bytes(v) for v in obj)
    return 0


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind `e`: torch.save's zip writer reports a failed write as a RuntimeError."""
    for _ in range(8):  # a short chain: OSError, or RuntimeError from the OSError
        if e is None or isinstance(e, OSError):
            return e
        e = e.__cause__ or e.__context__
    return None


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over the target.

    A failed write (disk full, quota, I/O error) removes the temp file and leaves the target as it
    was; the CheckpointWriteError names the folder and the space needed."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        err = _os_error(e) if isinstance(e, (OSError, RuntimeError)) else None
        if err is None:
            raise
        folder = path.parent.resolve()
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(folder).free
            raise CheckpointWriteError(
                f"no space left on the disk of {folder} ({err.strerror}) while writing {path.name}: it needs "
                f"about {_payload_bytes(obj) / 1e6:.0f} MB and {free / 1e6:.0f} MB are free there. "
                f"Free some space in that folder (or move the run folder to a larger disk) and run again; "
                f"the previous {path.name} was not touched.") from e
        raise CheckpointWriteError(f"could not write {path.name} in {folder} ({err.strerror}); "
                                   f"the previous {path.name} was not touched.") from e


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files of `atomic_save` writers that were killed (their pid is gone)."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        pass
    return True


def not_a_torch_file(path: Path) -> str | None:
    """Why `path` cannot be a PyTorch file, from its first bytes (None: it may be one)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "the file is empty (an interrupted copy or download?)"
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format (and TorchScript archives)
        return None if zipfile.is_zipfile(path) else \
            "the zip archive inside is cut short (an interrupted copy or download?)"
    if head.startswith(b"\x80"):  # a pickle: torch.save's legacy format
        return None
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return (f"it is a web page, not weights (it starts with {head[:24].decode('utf-8', 'replace')!r}): "
                f"download the file itself, not the page that links to it")
    if text.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the weights: fetch them with `git lfs pull`"
    return f"it is not a PyTorch file (it starts with {head[:16]!r})"


def load_file(path: str | Path, what: str = "checkpoint") -> dict:
    """torch.load(weights_only=True): tensors and plain containers only, never arbitrary objects.
    `what` names the file in errors (`--resume`, `--pretrained`, ...)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{what} {path}: file not found")
    why = not_a_torch_file(path)
    if why:
        raise SystemExit(f"{what} {path} cannot be read: {why}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        found = refused.group(1) if refused else "not tensors or plain values"
        raise SystemExit(
            f"{what} {path} holds pickled Python objects ({found}), which torch.load(weights_only=True) refuses: "
            f"unpickling can run any code, so this project reads tensors and plain values only.\n"
            f"Never unpickle a file of unknown origin. If you trust its source, re-save just the weights where "
            f"the file was made (torch.save(model.state_dict(), 'weights.pt')) and pass that file.") from e
    except Exception as e:  # a truncated or damaged archive, a read error
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SystemExit(f"{what} {path} could not be read ({type(e).__name__}: {first}): the file is damaged or "
                         f"incomplete; copy or download it again") from e


def file_digest(path: str | Path, length: int = 12) -> str:
    """sha256 of a file's bytes, the first `length` hex digits (64: all of it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:length]


def checkpoint_id(path: str | Path, obj=None) -> str:
    """A stable name for the weights evaluated (results.jsonl `checkpoint`): our checkpoints by
    file name and optimiser step, foreign files by name and content hash, so that the path they
    are given by (relative, absolute, folder or file) does not matter for skipping done work."""
    path = Path(path)
    if isinstance(obj, dict) and "step" in obj and isinstance(obj.get("meta"), dict):
        return f"{path.name}@step{obj['step']}"
    return f"{path.name}#{file_digest(path)}"


def stopped_at(step: int, total_steps: int | None) -> str | None:
    """'stopped at step N of M' for weights of a training run that did not finish its schedule (--max_steps,
    a signal), else None: the mark every result and model card of such weights carries."""
    if total_steps is not None and step >= total_steps:
        return None
    return f"stopped at step {step} of {total_steps if total_steps is not None else '? (an unfinished run)'}"


def training_status(obj) -> str | None:
    """`stopped_at` of a checkpoint of this project (None for a finished run and for foreign weights)."""
    if not (isinstance(obj, dict) and "step" in obj and isinstance(obj.get("meta"), dict)):
        return None
    if obj["meta"].get("finished"):
        return None
    return stopped_at(int(obj["step"]), obj["meta"].get("total_steps"))  # older checkpoints lack the total


def pretrained_id(pretrained) -> str:
    """The `checkpoint` an evaluation of pretrained weights alone records: the file's id, or the tag."""
    p = Path(str(pretrained))
    return f"pretrained:{checkpoint_id(p)}" if p.is_file() else f"pretrained:{pretrained}"


def resolve_checkpoint(run_or_file: str | Path) -> Path:
    """A run folder means its last.pt; a file is itself."""
    p = Path(run_or_file)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise SystemExit(f"--resume {run_or_file}: no checkpoint at {p}")
    return p


def trainable_state(model, extra: dict | None = None) -> dict:
    """What a run trains, in the checkpoint's format: the visual tower (`vision_encoder_state_dict`,
    the key of the original code), the visual prompts if any, and other trained tensors (`extra`:
    {name in model.clip: parameter}, e.g. TIMA's text tower)."""
    state = {"vision_encoder_state_dict": model.visual.state_dict()}
    if model.prompter is not None:
        state["prompter_state_dict"] = model.prompter.state_dict()  # pixel and token prompts
    if extra:
        state["extra_trainable_state"] = {n: p.detach() for n, p in extra.items()}
    return state


def load_trainable_state(model, ckpt: dict) -> None:
    """The inverse of `trainable_state`, strictly."""
    model.visual.load_state_dict(ckpt["vision_encoder_state_dict"], strict=True)
    load_prompts_and_extra(model, ckpt)


def load_prompts_and_extra(model, ckpt: dict) -> None:
    """Visual prompts (`prompter_state_dict`) and other trained tensors (`extra_trainable_state`,
    e.g. TIMA's text tower, named as in model.clip) of our checkpoints, strictly."""
    prompter = model.prompter
    if ckpt.get("prompter_state_dict"):
        if prompter is None:
            raise SystemExit("the checkpoint holds visual prompts but the model has none: evaluate it with "
                             "the run's --adaptation_method VPT --method/--prompt_size/--add_prompt_size")
        prompter.load_state_dict(ckpt["prompter_state_dict"], strict=True)
    for name, value in (ckpt.get("extra_trainable_state") or {}).items():
        try:
            param = model.clip.get_parameter(name)
        except AttributeError as e:
            raise SystemExit(f"checkpoint tensor '{name}' has no place in this model: {e}") from e
        if tuple(param.shape) != tuple(value.shape):
            raise SystemExit(f"checkpoint tensor '{name}': shape {tuple(value.shape)} vs model {tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(value.to(param.dtype))
