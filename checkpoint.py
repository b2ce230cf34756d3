"""Checkpoints and weight files of every origin: the one place that writes and reads them.

Our checkpoint (`last.pt`, written by `train.Trainer` through `trainable_state` + `atomic_save`) holds the trainable state (`vision_encoder_state_dict`: open_clip /
OpenAI names of `model.visual`, the key the original TGA-ZSR/TeCoA code uses), prompt
parameters if any, optimizer, scaler, global step, epoch, RNG states and the args. Everything
is stored as tensors and plain values, and every checkpoint is read with
`torch.load(..., weights_only=True)`: no arbitrary object is ever unpickled.

Foreign formats (SPEC §7) load strictly into `model.visual`, with mismatched keys named:
the original `.pth.tar` (`vision_encoder_state_dict`, or `state_dict` with `module.` /
`visual.` prefixes), a bare visual `state_dict` (RobustVLM / FARE), a whole-CLIP state dict.
Whole-CLIP files for `load_clip` (`read_weights_file`): OpenAI's TorchScript archive, open_clip
checkpoints, plain state dicts, and the files `save_clip` writes (the bundled tiny-world model).
Whole-CLIP folders (`read_weights_folder`, SPEC §10): open_clip hub folders (`open_clip_config.json`
+ `open_clip_model.safetensors` / `open_clip_pytorch_model.bin`) and transformers `CLIPModel`
folders (`config.json` + `model.safetensors` / `pytorch_model.bin`, converted by `hf_clip.py`).
A visual file whose weights equal the model's before the load is refused: it changes nothing,
so it is the wrong file or its keys were not the ones meant.

    from checkpoint import load_visual_weights, read_weights_file, read_weights_folder, save_clip
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import zipfile
from pathlib import Path

import torch

from hf_clip import convert_state_dict, is_transformers_config, open_clip_config

log = logging.getLogger("tga_zsr")
# Buffers only OpenAI's own CLIP state dicts carry: their presence means OpenAI weights (QuickGELU).
OPENAI_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")

CHECKPOINT_NAME = "last.pt"
HUB_CONFIG, HUB_WEIGHTS = "open_clip_config.json", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_CONFIG, HF_WEIGHTS = "config.json", ("model.safetensors", "pytorch_model.bin")
# Hub repositories fine-tuned from OpenAI's CLIP whose open_clip config does not say QuickGELU
# (RobustVLM's ViT-L/14 models: built as ViT-L-14 + pretrained='openai', open_clip issue 771).
OPENAI_DERIVED_HUB = ("chs20/tecoa2-clip", "chs20/tecoa4-clip", "chs20/fare2-clip", "chs20/fare4-clip")


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_file(path: str | Path) -> dict:
    """torch.load(weights_only=True): tensors and plain containers only, never arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(
            f"{path} holds pickled Python objects that torch.load(weights_only=True) refuses: {first}\n"
            f"Checkpoints from elsewhere are read as tensors and plain values only. If you trust the file, "
            f"re-save its weights once and evaluate the new file:\n"
            f"  python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
            f"torch.save({{k: v for k, v in c.items() if k in ('vision_encoder_state_dict', 'state_dict', "
            f"'add_prompter')}}, '{path}.weights.pt')\"") from e
    except Exception as e:
        raise SystemExit(f"could not read {path} ({type(e).__name__}: {e}); is it a torch checkpoint?") from e


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


# --- whole-CLIP weight files (load_clip) ------------------------------------------------------------
def read_weights_file(path: str) -> tuple[dict, dict]:
    """Read a whole CLIP's weights from a local file. Returns (state_dict, info).

    Accepts OpenAI's TorchScript archive (the `.pt` that `clip.load` downloads), an open_clip
    checkpoint (`{'state_dict': ...}` with optional `module.` prefixes), a plain state dict and the
    files `save_clip` writes. Pickled files are read with `weights_only=True`.
    `info['openai']` says whether the weights are OpenAI's (they were trained with QuickGELU).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    info = {"openai": False, "quick_gelu": None, "arch": None}
    state = None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            is_torchscript = any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
        if is_torchscript:
            state = torch.jit.load(path, map_location="cpu").state_dict()
            info["openai"] = True
    if state is None:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        info["quick_gelu"] = meta.get("quick_gelu")
        info["arch"] = meta.get("arch")
        for key in ("clip_state_dict", "state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        state = strip_prefix(dict(obj), "module.")
        info["openai"] = bool(meta.get("openai")) or any(k in state for k in OPENAI_ONLY_KEYS)
    for k in OPENAI_ONLY_KEYS:
        state.pop(k, None)
    state = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in state.items()}
    return state, info


def read_tensors(path: str | Path) -> dict:
    """A state dict from `.safetensors` or a torch file (`weights_only=True`; `{'state_dict': ...}` unwrapped)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file as load_safetensors  # optional dependency
        return load_safetensors(str(path))
    obj = load_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise SystemExit(f"{path}: expected a state dict, got {type(obj).__name__}")
    return strip_prefix(dict(obj), "module.")


def weights_folder_kind(folder: str | Path) -> str | None:
    """"open_clip hub folder", "transformers CLIPModel folder", or None (not a weights folder)."""
    folder = Path(folder)
    if (folder / HUB_CONFIG).is_file():
        return "open_clip hub folder"
    if (folder / HF_CONFIG).is_file():
        try:
            config = json.loads((folder / HF_CONFIG).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if is_transformers_config(config):
            return "transformers CLIPModel folder"
    return None


def hub_origin(folder: Path) -> str | None:
    """`org/name` of a Hugging Face cache snapshot (`models--org--name/snapshots/<rev>`), else None."""
    for part in folder.resolve().parts:
        if part.startswith("models--") and part.count("--") >= 2:
            return part[len("models--"):].replace("--", "/", 1)
    return None


def read_weights_folder(folder: str | Path, origin: str | None = None) -> tuple[dict, dict]:
    """A whole CLIP from an open_clip hub folder or a transformers CLIPModel folder.

    Returns (open_clip state dict, info) with info `model_cfg` (open_clip's model config),
    `quick_gelu` (True / False, from the config, or from the origin for the OpenAI-derived hub
    repositories whose config leaves it out: `quick_gelu_why` says which), `format` and `weights_file`."""
    folder = Path(folder)
    kind = weights_folder_kind(folder)
    if kind is None:
        raise SystemExit(f"{folder} is neither an open_clip hub folder ({HUB_CONFIG} + {' or '.join(HUB_WEIGHTS)}) "
                         f"nor a transformers CLIPModel folder ({HF_CONFIG} + {' or '.join(HF_WEIGHTS)})")
    hub = kind.startswith("open_clip")
    names = HUB_WEIGHTS if hub else HF_WEIGHTS
    weights = next((folder / n for n in names if (folder / n).is_file()), None)
    if weights is None:
        raise SystemExit(f"{folder} ({kind}) holds no weights file: expected {' or '.join(names)}")
    config = json.loads((folder / (HUB_CONFIG if hub else HF_CONFIG)).read_text())
    state = read_tensors(weights)
    origin = origin or hub_origin(folder)
    if hub:
        cfg = config.get("model_cfg", config)
        if cfg.get("quick_gelu"):
            qg, why = True, f"{HUB_CONFIG} says quick_gelu"
        elif origin in OPENAI_DERIVED_HUB:
            qg, why = True, f"{origin} is fine-tuned from OpenAI's CLIP (its config leaves QuickGELU out)"
        else:
            qg, why = False, f"{HUB_CONFIG} does not ask for QuickGELU"
    else:
        cfg = open_clip_config(config)
        qg, why = cfg["quick_gelu"], f"{HF_CONFIG} hidden_act"
        state = convert_state_dict(state)
    state = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in state.items()}
    info = {"format": kind, "model_cfg": dict(cfg), "quick_gelu": qg, "quick_gelu_why": why,
            "weights_file": str(weights), "openai": False, "origin": origin}
    return state, info


def save_clip(model, path: str, half: bool = False) -> None:
    """Save a whole CLIP (both towers) as a plain state dict with the metadata `read_weights_file` reads.

    `half=True` stores floating tensors as float16 (half the file; used for the bundled
    checkpoint); they are cast back to float32 on load."""
    meta = {"arch": model.arch, "quick_gelu": model.quick_gelu, "openai": model.pretrained == "openai",
            "half": half}
    state = model.clip.state_dict()
    if half:
        state = {k: (v.half() if torch.is_floating_point(v) else v) for k, v in state.items()}
    atomic_save({"state_dict": state, "meta": meta}, path)
