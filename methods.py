"""The method registry: one training step per method, every one behind the same loop.

A method is a function `step(ctx, x, y, idx) -> {"loss": ..., <term>: ...}` registered with
`@register(name, *aliases, frozen=..., config=...)`; its defaults live in
`configs/<name>.yaml`. Adding a baseline touches no loop code.

`ctx` (`StepContext`) carries the model, the frozen reference tower (if the method needs
one), the training text features (computed once), the parsed args and the frozen-map cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from attacks import no_param_grad, pgd
from losses import tga_zsr_loss


@dataclass
class Method:
    name: str
    step: Callable
    needs_frozen: bool = False
    aliases: tuple = ()
    trains: bool = True


_METHODS: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "_").replace(" ", "_").replace(".", "")


def register(name: str, *aliases: str, needs_frozen: bool = False, trains: bool = True):
    def wrap(fn):
        _METHODS[name] = Method(name, fn, needs_frozen, aliases, trains)
        for a in (name, *aliases):
            _ALIASES[_key(a)] = name
        return fn
    return wrap


def canonical_method(name: str) -> str:
    key = _key(name)
    if key not in _ALIASES:
        raise SystemExit(f"unknown --Method '{name}'. Known: {', '.join(sorted(_METHODS))} "
                         f"(original names such as TGA-ZSR, TeCoA, FT-Standard are accepted)")
    return _ALIASES[key]


def get_method(name: str) -> Method:
    return _METHODS[canonical_method(name)]


def available_methods() -> list[str]:
    return sorted(_METHODS)


@dataclass
class StepContext:
    model: object                      # clip_model.ClipModel (trainable image tower inside)
    text_features: torch.Tensor        # [C, D] normalised training prompts, computed once
    args: object                       # parsed flags (eps etc. already in pixel units: see eps())
    frozen: object = None              # frozen ImageTower of the original weights, or None
    map_cache: object = None           # FrozenMapCache or None
    extra: dict = field(default_factory=dict)

    def eps(self):
        a = self.args
        return a.train_eps / 255.0, a.train_stepsize / 255.0, int(a.train_numsteps)


def train_pgd(ctx: StepContext, x, y, loss="ce"):
    """SPEC §0 training attack on the current trainable model: PGD on the batch-mean CE."""
    eps, alpha, steps = ctx.eps()
    if steps == 0 or eps == 0:
        return x
    model, T = ctx.model, ctx.text_features

    def objective(xa):
        return F.cross_entropy(model.logits(xa, T).float(), y)

    with no_param_grad(model.clip):
        delta = pgd(objective, x, eps, alpha, steps, norm=getattr(ctx.args, "norm", "l_inf"))
    return x + delta


def _frozen_maps(ctx, x, y, idx):
    """Cached frozen clean maps for this batch, or None (then the loss computes them)."""
    cache = ctx.map_cache
    if cache is None or idx is None:
        return None
    maps = cache.get(idx)
    if maps is None:
        from attention import attention_grid
        with torch.no_grad():
            maps = attention_grid(ctx.frozen(x), ctx.text_features[y])
        cache.put(idx, maps)
    return maps


@register("tga_zsr", "TGA-ZSR", "TGA_ZSR", "tgazsr", needs_frozen=True)
def tga_zsr_step(ctx: StepContext, x, y, idx=None):
    a = ctx.args
    x_adv = x if a.VPbaseline else train_pgd(ctx, x, y)
    return tga_zsr_loss(ctx.model, ctx.frozen, x, x_adv, y, ctx.text_features, a.Alpha, a.Beta,
                        a.Distance_metric, frozen_maps=_frozen_maps(ctx, x, y, idx))


@register("tecoa", "TeCoA")
def tecoa_step(ctx: StepContext, x, y, idx=None):
    """TeCoA (SPEC §4): CE over all classes on PGD images = TGA-ZSR with Alpha = Beta = 0."""
    x_adv = x if ctx.args.VPbaseline else train_pgd(ctx, x, y)
    return tga_zsr_loss(ctx.model, None, x, x_adv, y, ctx.text_features, 0.0, 0.0)


@register("clip", "CLIP", trains=False)
def clip_step(ctx: StepContext, x, y, idx=None):
    raise RuntimeError("CLIP is evaluated as pretrained: run it with --epochs 0")


class FrozenMapCache:
    """Frozen clean attention maps per training image (SPEC §1 A_ori never changes: frozen
    weights, no augmentation). `[N, 1, g, g]` fp32 + a filled mask; 100 000 × 49 floats = 20 MB."""

    def __init__(self, n: int, grid: int, device):
        self.maps = torch.zeros(n, 1, grid, grid, device=device)
        self.filled = torch.zeros(n, dtype=torch.bool, device=device)

    def get(self, idx):
        idx = idx.to(self.filled.device)
        if not bool(self.filled[idx].all()):
            return None
        return self.maps[idx]

    def put(self, idx, maps):
        idx = idx.to(self.filled.device)
        self.maps[idx] = maps.detach().float()
        self.filled[idx] = True
