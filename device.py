"""Where and how the computation runs: device, precision (autocast, GradScaler), seeds and the
saved state of every random number generator (what an exact resume restores).

    from device import resolve_device, autocast
    device = resolve_device("auto")          # CUDA when present, else the CPU
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name} asked for CUDA but no GPU is visible; use --device auto or cpu")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """`amp` is the original's fp16 autocast + GradScaler on CUDA; on the CPU it means fp32."""
    if precision == "amp" and device.type != "cuda":
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "amp":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_scaler(device: torch.device, precision: str):
    return torch.amp.GradScaler(device.type, enabled=(precision == "amp" and device.type == "cuda"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All RNG states as tensors and plain values, loadable with `weights_only=True`."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": list(random.getstate()[1]), "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
