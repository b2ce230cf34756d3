"""Checkpoints: our run format (written and read here) and visual-tower weights of every origin.

Our checkpoint (`last.pt`, written by `train.Trainer` through `trainable_state` + `atomic_save`) holds the trainable state (`vision_encoder_state_dict`: open_clip /
OpenAI names of `model.visual`, the key the original TGA-ZSR/TeCoA code uses), prompt
parameters if any, optimizer, scaler, global step, epoch, RNG states and the args. Everything
is stored as tensors and plain values, and every checkpoint is read with
`torch.load(..., weights_only=True)`: no arbitrary object is ever unpickled.

Foreign formats (SPEC §7) load strictly into `model.visual`, with mismatched keys named:
the original `.pth.tar` (`vision_encoder_state_dict`, or `state_dict` with `module.` /
`visual.` prefixes), a bare visual `state_dict` (RobustVLM / FARE), a whole-CLIP state dict.
Whole-CLIP files and folders (what `load_clip` reads) are in `weight_files.py`.
A visual file whose weights equal the model's before the load is refused: it changes nothing,
so it is the wrong file or its keys were not the ones meant.

    from engine.checkpoint import load_visual_weights, trainable_state, atomic_save
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
# Buffers only OpenAI's own CLIP state dicts carry: their presence means OpenAI weights (QuickGELU).
OPENAI_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")

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


def resolve_checkpoint(run_or_file: str | Path) -> Path:
    """A run folder means its last.pt; a file is itself."""
    p = Path(run_or_file)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise SystemExit(f"--resume {run_or_file}: no checkpoint at {p}")
    return p


def strip_prefix(state: dict, prefix: str) -> dict:
    """Drop `prefix` from every key, if every key has it (DDP's `module.`, a whole CLIP's `visual.`)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def extract_visual_state(obj: dict) -> tuple[dict, str]:
    """Find the visual-tower weights in any supported checkpoint dict. Returns (state, format)."""
    if "vision_encoder_state_dict" in obj:
        state, fmt = obj["vision_encoder_state_dict"], "tga_zsr/tecoa (.pth.tar) or this project"
    elif "state_dict" in obj and isinstance(obj["state_dict"], dict):
        state, fmt = obj["state_dict"], "checkpoint state_dict"
    else:
        state, fmt = obj, "bare state_dict"
    state = strip_prefix(dict(state), "module.")
    if any(k.startswith("visual.") for k in state):  # whole-CLIP dict: keep the visual tower
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        fmt += " (whole CLIP, visual tower taken)"
    return state, fmt


def check_fits(module: torch.nn.Module, state: dict, source: str, what: str = "visual tower") -> None:
    """Every missing, unexpected and mis-shaped key named, before anything is loaded."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise SystemExit(f"{source} does not fit this model's {what} (wrong --arch?).\n"
                         f"  missing keys: {missing}\n  unexpected keys: {unexpected}\n  shape mismatches: {shapes}")


def load_strict(module: torch.nn.Module, state: dict, source: str, what: str = "visual tower") -> None:
    """load_state_dict(strict) with an error that names every mismatched key and shape."""
    check_fits(module, state, source, what)
    own = module.state_dict()
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


load_visual_strict = load_strict


def equals_model(module: torch.nn.Module, state: dict) -> bool:
    """Whether `state` (which fits `module`) holds exactly the weights the module has now."""
    own = module.state_dict()
    return all(torch.equal(state[k].to(own[k].dtype), own[k]) for k in own)


def trained_activation(obj: dict) -> tuple[bool | None, str]:
    """(quick_gelu the weights were trained with, or None if the file cannot tell; why)."""
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    if meta.get("quick_gelu") is not None:
        return bool(meta["quick_gelu"]), "its metadata"
    if "vision_encoder_state_dict" in obj:  # the original code fine-tunes OpenAI's CLIP
        return True, "the original TGA-ZSR/TeCoA code fine-tunes OpenAI CLIP"
    inner = obj.get("state_dict") if isinstance(obj.get("state_dict"), dict) else obj
    if any(k.split(".")[-1] in OPENAI_ONLY_KEYS for k in inner):
        return True, "it is an OpenAI CLIP state dict"
    return None, ""


def _prompt_tensors(obj: dict) -> list[str]:
    """Non-empty visual-prompt weights of the original format (`state_dict` = pixel prompter,
    `add_prompter` = token prompter when `vision_encoder_state_dict` holds the tower)."""
    if "vision_encoder_state_dict" not in obj:
        return []
    names = []
    for entry in ("state_dict", "add_prompter"):
        sub = obj.get(entry)
        if isinstance(sub, dict):
            names += [f"{entry}.{k}" for k, v in sub.items() if torch.is_tensor(v) and v.numel() > 0]
    return names


def load_visual_weights(model, path: str | Path, obj: dict | None = None) -> str:
    """Load visual weights of any supported format into `model.visual`; returns the format name.

    Refuses, with a message that says what to do: a file that does not fit the tower (every
    missing / unexpected / mis-shaped key named), weights trained with the other activation
    (GELU vs QuickGELU), and original checkpoints with visual prompts this model cannot apply."""
    obj = load_file(path) if obj is None else obj
    if not isinstance(obj, dict):
        raise SystemExit(f"{path}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    act = lambda q: "QuickGELU" if q else "GELU"  # noqa: E731
    trained_qg, why = trained_activation(obj)
    if trained_qg is not None and trained_qg != model.quick_gelu:
        raise SystemExit(f"{path} was trained with {act(trained_qg)} ({why}) but the model uses "
                         f"{act(model.quick_gelu)}: pick the matching --arch / --pretrained "
                         f"(OpenAI weights: --pretrained openai, or ViT-B-32-quickgelu)")
    prompts = _prompt_tensors(obj)
    if prompts:  # the original prompters' tensors are not mapped onto prompters.py's
        raise SystemExit(f"{path} holds visual-prompt weights ({', '.join(prompts[:6])}) of the original code, "
                         f"which this model does not apply; evaluating the tower without them would measure a "
                         f"different model")
    state, fmt = extract_visual_state(obj)
    check_fits(model.visual, state, str(path))
    trains_more = bool(obj.get("prompter_state_dict") or obj.get("extra_trainable_state"))
    if not trains_more and equals_model(model.visual, state):
        raise SystemExit(f"{path} changes nothing: its visual weights equal those of the model it is loaded into "
                         f"(--arch {model.arch}, --pretrained {model.pretrained}). It is the base model itself, or "
                         f"the wrong file, or the fine-tuned tensors sit under other keys; check what the file holds "
                         f"(python -c \"import torch; print(list(torch.load('{path}', weights_only=True)))\")")
    load_strict(model.visual, state, str(path))
    if trained_qg is None:
        log.info(f"{path}: the file does not say which activation it was trained with; the model uses "
                 f"{act(model.quick_gelu)} (RobustVLM/FARE ViT-B-32 weights are fine-tuned OpenAI CLIP: QuickGELU)")
    if isinstance(obj, dict):
        load_prompts_and_extra(model, obj)
    return fmt


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
