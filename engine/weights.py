"""Weights of every origin, read into the model: whole CLIPs (what `engine.model.load_clip` reads) and
visual towers (what `--resume` / `--eval_only --resume` load), with every mismatch named.

Whole CLIP files (`read_weights_file`): OpenAI's TorchScript archive, open_clip checkpoints, plain
state dicts, and the file `save_clip` writes (the bundled tiny-world model). Folders
(`read_weights_folder`): open_clip hub folders (`open_clip_config.json` +
`open_clip_model.safetensors` / `open_clip_pytorch_model.bin`) and transformers `CLIPModel` folders
(`config.json` + `model.safetensors` / `pytorch_model.bin`), converted by key mapping (below; the
transformers package is not needed). Visual towers (`load_visual_weights`): the original code's
`.pth.tar` (`vision_encoder_state_dict`, or `state_dict` with `module.` / `visual.` prefixes), a
bare visual `state_dict` (RobustVLM / FARE), a whole-CLIP state dict, and our own checkpoints. All
load strictly; a visual file whose weights equal the model's before the load is refused (it changes
nothing, so it is the wrong file or its keys were not the ones meant).

The transformers mapping: the two libraries hold the same tensors under other names, with three differences of layout: transformers keeps q, k and v as three linear layers
where open_clip's `nn.MultiheadAttention` has one `in_proj` (q, k, v stacked in that order), its
projections are `nn.Linear` weights (`[out, in]`) where open_clip keeps matrices it multiplies on
the right (`[in, out]`), and its position embeddings are `nn.Embedding` weights. The activation
is named in the config (`hidden_act`: `quick_gelu` for OpenAI's CLIP and what is fine-tuned
from it). Key names were recorded from transformers 5.24 (`tests/test_weight_formats.py` keeps
the list); older versions add `position_ids` buffers, which are dropped.

    from engine.weights import load_visual_weights, read_weights_file, read_weights_folder, save_clip
"""
from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import torch

from engine.checkpoint import atomic_save, load_file, load_prompts_and_extra

log = logging.getLogger("tga_zsr")

# Buffers only OpenAI's own CLIP state dicts carry: their presence means OpenAI weights (QuickGELU).
OPENAI_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")

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


# --- transformers CLIPModel -> open_clip -------------------------------------------------------------
# transformers name (inside one encoder layer) -> open_clip name (inside one residual block)
LAYER_KEYS = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
TOWERS = {"text_model": "", "vision_model": "visual."}
# keys outside the layers: transformers name -> (open_clip name, how the tensor changes)
FIXED_KEYS = {
    "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", None),
    "text_model.embeddings.position_embedding.weight": ("positional_embedding", None),
    "text_model.final_layer_norm.weight": ("ln_final.weight", None),
    "text_model.final_layer_norm.bias": ("ln_final.bias", None),
    "text_projection.weight": ("text_projection", "t"),
    "vision_model.embeddings.class_embedding": ("visual.class_embedding", None),
    "vision_model.embeddings.patch_embedding.weight": ("visual.conv1.weight", None),
    "vision_model.embeddings.position_embedding.weight": ("visual.positional_embedding", None),
    "vision_model.pre_layrnorm.weight": ("visual.ln_pre.weight", None),   # sic: transformers' spelling
    "vision_model.pre_layrnorm.bias": ("visual.ln_pre.bias", None),
    "vision_model.post_layernorm.weight": ("visual.ln_post.weight", None),
    "vision_model.post_layernorm.bias": ("visual.ln_post.bias", None),
    "visual_projection.weight": ("visual.proj", "t"),
    "logit_scale": ("logit_scale", None),
}
DROPPED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def is_transformers_config(config: dict) -> bool:
    return isinstance(config, dict) and "vision_config" in config and "text_config" in config


def open_clip_config(config: dict) -> dict:
    """The open_clip `model_cfg` of a transformers CLIP `config.json` (ViT towers only)."""
    if not is_transformers_config(config):
        raise ValueError("not a transformers CLIP config.json (no text_config / vision_config)")
    v, t = config["vision_config"], config["text_config"]
    acts = {v.get("hidden_act", "quick_gelu"), t.get("hidden_act", "quick_gelu")}
    if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
        raise ValueError(f"activations {sorted(acts)}: open_clip's CLIP has one activation, quick_gelu or gelu")
    for name, tower in (("vision_config", v), ("text_config", t)):
        if tower["hidden_size"] % tower["num_attention_heads"]:
            raise ValueError(f"{name}: hidden_size {tower['hidden_size']} is not a multiple of the heads")
    return {
        "embed_dim": int(config["projection_dim"]),
        "quick_gelu": acts == {"quick_gelu"},
        "vision_cfg": {
            "image_size": int(v["image_size"]), "layers": int(v["num_hidden_layers"]),
            "width": int(v["hidden_size"]), "head_width": int(v["hidden_size"] // v["num_attention_heads"]),
            "mlp_ratio": v["intermediate_size"] / v["hidden_size"], "patch_size": int(v["patch_size"]),
        },
        "text_cfg": {
            "context_length": int(t["max_position_embeddings"]), "vocab_size": int(t["vocab_size"]),
            "width": int(t["hidden_size"]), "heads": int(t["num_attention_heads"]),
            "layers": int(t["num_hidden_layers"]), "mlp_ratio": t["intermediate_size"] / t["hidden_size"],
        },
    }


def _layer_key(key: str) -> tuple[str, str] | None:
    """`vision_model.encoder.layers.3.mlp.fc1.weight` -> ("visual.transformer.resblocks.3.", "mlp.fc1.weight")."""
    for tower, prefix in TOWERS.items():
        head = f"{tower}.encoder.layers."
        if key.startswith(head):
            index, _, rest = key[len(head):].partition(".")
            return f"{prefix}transformer.resblocks.{index}.", rest
    return None


def convert_state_dict(state: dict) -> dict:
    """transformers CLIPModel state dict -> open_clip CLIP state dict. A key the mapping does not
    know is kept under its own name, so that the strict load afterwards names it."""
    out, qkv = {}, {}
    for key, value in state.items():
        if key in DROPPED:
            continue
        if key in FIXED_KEYS:
            name, change = FIXED_KEYS[key]
            out[name] = value.t().contiguous() if change == "t" else value
            continue
        layer = _layer_key(key)
        if layer is None:
            out[key] = value
            continue
        block, rest = layer
        module, _, kind = rest.rpartition(".")
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((block, kind), {})[module[len("self_attn."):][0]] = value
        elif module in LAYER_KEYS:
            out[f"{block}{LAYER_KEYS[module]}.{kind}"] = value
        else:
            out[key] = value
    for (block, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise ValueError(f"{block}: the {kind} of {', '.join(p + '_proj' for p in missing)} is missing")
        out[f"{block}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if "logit_scale" in out and out["logit_scale"].ndim == 0:
        out["logit_scale"] = out["logit_scale"].reshape(())
    return out


# --- visual towers -----------------------------------------------------------------------------------
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
