"""Where and how the computation runs: device, precision (autocast, GradScaler, TF32),
torch.compile, seeds and the saved state of every random number generator (what an exact resume
restores).

Supported PyTorch: 2.3 and newer (requirements.txt); nothing here needs a newer release.

    from engine.device import resolve_device, autocast
    device = resolve_device("auto")          # CUDA when present, else the CPU
"""
from __future__ import annotations

import contextlib
import logging
import random
import types

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger("tga_zsr")


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
    """The autocast of a precision label. A label may carry "+tf32" (results record `amp+tf32` when
    `--tf32` is on): TF32 is a matmul setting, orthogonal to autocast, so the suffix is ignored here."""
    precision = precision.split("+")[0]
    if precision == "amp":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_scaler(device: torch.device, precision: str):
    """GradScaler for fp16 autocast on CUDA, disabled otherwise (`torch.amp.GradScaler`: torch >= 2.3)."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "amp" and device.type == "cuda"))


def set_tf32(enabled: bool, device: torch.device) -> None:
    """`--tf32`: let fp32 matmuls use TF32 tensor cores on Ampere and newer GPUs (about 10 bits of
    mantissa instead of 23: faster, less exact). Off by default, as in the original code; fp16/bf16
    autocast matmuls are unaffected, cuDNN convolutions keep torch's own default. No effect on the CPU."""
    if device.type == "cuda":  # on the CPU "high" may pick reduced-precision oneDNN kernels instead
        torch.set_float32_matmul_precision("high" if enabled else "highest")


def tf32_active(device: torch.device) -> bool:
    return device.type == "cuda" and torch.get_float32_matmul_precision() != "highest"


# --- torch.compile ----------------------------------------------------------------------------------
def compile_module(module: torch.nn.Module, backend: str = "inductor") -> None:
    """torch.compile `module` in place, like `nn.Module.compile` (state dict keys unchanged), with the
    batch dimension of its tensor arguments marked dynamic at every call.

    Without the mark, every new batch size (the last batch of an epoch, TGA-ZSR's [x_adv; x], an
    evaluation remainder) recompiles, on top of one graph per grad mode / train-eval mode / CLS
    path, and past torch's recompile limit (8) the module silently runs eagerly. Recompiles are
    logged (`log_recompiles`). A batch of one keeps its own graph (torch specialises sizes 0 and 1)."""
    # Grad-CAM (the Vision-based row) back-propagates through the tower twice (retain_graph=True):
    # AOTAutograd's donated buffers (torch >= 2.6) forbid that; a little more memory in the backward.
    functorch_config = getattr(torch, "_functorch", None) and getattr(torch._functorch, "config", None)
    if functorch_config is not None and hasattr(functorch_config, "donated_buffer"):
        functorch_config.donated_buffer = False
    own_forward(module)
    compiled = torch.compile(module._call_impl, backend=backend)

    def call(*args, **kwargs):
        for a in args:
            if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] > 1:
                torch._dynamo.maybe_mark_dynamic(a, 0)  # a hint: code that needs a fixed size may still fix it
        return compiled(*args, **kwargs)

    call.backend = backend  # compiled_backend: what a wrapper of this module is compiled with
    module._compiled_call_impl = call  # what nn.Module.compile sets (torch >= 2.2)


def compiled_backend(module: torch.nn.Module, default: str = "inductor") -> str:
    """The backend `compile_module` compiled `module` with."""
    return getattr(getattr(module, "_compiled_call_impl", None), "backend", default)


def own_forward(module: torch.nn.Module) -> None:
    """Give `module` a forward of its own: the same function, on a copy of its code object.

    Dynamo compiles the first frame it does not skip, `forward` (nn.Module's `_call_impl` is
    skipped), and keeps its graphs, guards and recompile limit (8) per code object: without this
    the trained tower, the frozen tower and every other ImageTower share one cache, so the modes
    of both (train/eval, grad, CLS path, hooks) count against one limit, past which the tower
    silently runs eagerly, and a graph traced for one tower is offered to the other (torch guards
    neither on module identity nor on hooks). A copied code object has its own cache."""
    if "forward" in module.__dict__:  # already its own (or set by the user)
        return
    f = type(module).forward
    fn = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    fn.__kwdefaults__, fn.__qualname__, fn.__doc__ = f.__kwdefaults__, f.__qualname__, f.__doc__
    module.forward = types.MethodType(fn, module)


def is_compiled(module: torch.nn.Module) -> bool:
    """Whether `compile_module` (or nn.Module.compile) compiled this module."""
    return getattr(module, "_compiled_call_impl", None) is not None


def log_recompiles() -> None:
    """Print every recompilation of a compiled module with the guard that failed (torch's logger)."""
    torch._logging.set_logs(recompiles=True)


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


def set_rng_state(state: dict) -> list[int]:
    """Restore what `rng_state` saved. CUDA generators are restored for the devices this process sees,
    one by one (`torch.cuda.set_rng_state_all` raises IndexError when fewer are visible than were
    saved: a run of 8 GPUs resumed on 4 or on 1); returns the saved device indices that were dropped.
    Where the device count is unchanged every generator is restored, and resume stays exact."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    saved = list(state.get("cuda") or [])
    visible = torch.cuda.device_count() if saved and torch.cuda.is_available() else 0
    for i, s in enumerate(saved[:visible]):
        torch.cuda.set_rng_state(s, device=i)
    dropped = list(range(visible, len(saved)))
    if dropped:
        log.warning(f"resume: the checkpoint holds the CUDA random states of {len(saved)} device(s), this process "
                    f"sees {visible}: devices {dropped[0]}..{dropped[-1]} are dropped (their PGD random starts "
                    f"differ from the original run's; the data order does not)")
    return dropped


def forward_flops(model, x) -> int:
    """FLOPs of one no-grad forward of the visual tower on `x` (torch's FlopCounterMode)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.image_tokens(x)
    return counter.get_total_flops()
