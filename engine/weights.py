"""Whole-CLIP weight files and folders of every origin: what `clip_model.load_clip` reads, and the
file `save_clip` writes (the bundled tiny-world model).

Files (`read_weights_file`): OpenAI's TorchScript archive, open_clip checkpoints, plain state
dicts. Folders (`read_weights_folder`, SPEC §10): open_clip hub folders (`open_clip_config.json`
+ `open_clip_model.safetensors` / `open_clip_pytorch_model.bin`) and transformers `CLIPModel`
folders (`config.json` + `model.safetensors` / `pytorch_model.bin`, converted by `hf_clip.py`).
Pickled files are read with `weights_only=True`.

    from engine.weights import read_weights_file, read_weights_folder, save_clip
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch

from engine.checkpoint import OPENAI_ONLY_KEYS, atomic_save, load_file, strip_prefix
from engine.hf_clip import convert_state_dict, is_transformers_config, open_clip_config

HUB_CONFIG, HUB_WEIGHTS = "open_clip_config.json", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_CONFIG, HF_WEIGHTS = "config.json", ("model.safetensors", "pytorch_model.bin")
# Hub repositories fine-tuned from OpenAI's CLIP whose open_clip config does not say QuickGELU
# (RobustVLM's ViT-L/14 models: built as ViT-L-14 + pretrained='openai', open_clip issue 771).
OPENAI_DERIVED_HUB = ("chs20/tecoa2-clip", "chs20/tecoa4-clip", "chs20/fare2-clip", "chs20/fare4-clip")


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
        obj = load_file(path, "--pretrained")
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
