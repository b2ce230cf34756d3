"""Run folders and checkpoints: atomic writes, exact resume, and loading weights from elsewhere.

Our checkpoint (`last.pt`) holds the trainable state (`vision_encoder_state_dict`: open_clip /
OpenAI names of `model.visual`, the key the original TGA-ZSR/TeCoA code uses), prompt
parameters if any, optimizer, scaler, global step, epoch, RNG states and the args. Everything
is stored as tensors and plain values, and every checkpoint is read with
`torch.load(..., weights_only=True)`: no arbitrary object is ever unpickled.

Foreign formats (SPEC §7) load strictly into `model.visual`, with mismatched keys named:
the original `.pth.tar` (`vision_encoder_state_dict`, or `state_dict` with `module.` /
`visual.` prefixes), a bare visual `state_dict` (RobustVLM / FARE), a whole-CLIP state dict.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

CHECKPOINT_NAME = "last.pt"
FINISHED_MARK = "finished"


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
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SystemExit(f"could not read {path} with weights_only=True ({type(e).__name__}: {e}). "
                         f"Only tensors and plain values are loaded; re-save the weights as a state dict.") from e


def resolve_checkpoint(run_or_file: str | Path) -> Path:
    """A run folder means its last.pt; a file is itself."""
    p = Path(run_or_file)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise SystemExit(f"--resume {run_or_file}: no checkpoint at {p}")
    return p


def _strip(state: dict, prefix: str) -> dict:
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
    state = _strip(dict(state), "module.")
    if any(k.startswith("visual.") for k in state):  # whole-CLIP dict: keep the visual tower
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        fmt += " (whole CLIP, visual tower taken)"
    return state, fmt


def load_visual_strict(visual: torch.nn.Module, state: dict, source: str) -> None:
    """load_state_dict(strict) with an error that names every mismatched key and shape."""
    own = visual.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise SystemExit(f"{source} does not fit this model's visual tower (wrong --arch?).\n"
                         f"  missing keys: {missing}\n  unexpected keys: {unexpected}\n  shape mismatches: {shapes}")
    visual.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def load_visual_weights(model, path: str | Path) -> str:
    """Load visual weights of any supported format into `model.visual`; returns the format name."""
    obj = load_file(path)
    meta = obj.get("meta", {}) if isinstance(obj, dict) else {}
    if isinstance(meta, dict) and meta.get("quick_gelu") is not None and meta["quick_gelu"] != model.quick_gelu:
        raise SystemExit(f"{path} was trained with {'QuickGELU' if meta['quick_gelu'] else 'GELU'} but the model "
                         f"uses {'QuickGELU' if model.quick_gelu else 'GELU'}: pick the matching --arch")
    state, fmt = extract_visual_state(obj)
    load_visual_strict(model.visual, state, str(path))
    if isinstance(obj, dict):
        load_prompts_and_extra(model, obj)
    return fmt


def load_prompts_and_extra(model, ckpt: dict) -> None:
    """Visual prompts (`prompter_state_dict`) and other trained tensors (`extra_trainable_state`,
    e.g. TIMA's text tower, named as in model.clip) of our checkpoints, strictly."""
    prompter = getattr(model, "prompter", None)
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
