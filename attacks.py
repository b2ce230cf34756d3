"""Stateless attacks in [0, 1] pixel space (the training attack of every method, FARE's inner attack, the evaluation's attacks).

`pgd(loss_fn, x, eps, alpha, steps)` returns the perturbation δ of the final iterate;
`loss_fn(x_adv)` returns the scalar to maximise. Gradients are taken with respect to δ
only (`torch.autograd.grad`), so no model parameter ever receives a `.grad`, and callers
switch parameter gradients off for the attack (`no_param_grad`) so the forward does not even
record what a weight gradient would need. ε and step sizes are in pixel units here; the CLI
takes them in 1/255 units.

AutoAttack (paper Table 3; docs/evaluation.md) comes from the `pyautoattack` package (`autoattack_batch`), in one of
five versions (`AA_VERSIONS`): `aa-papers` (APGD-CE + APGD-DLR, what TeCoA and TGA-ZSR call
AutoAttack; APGD-CE alone below 4 classes, e.g. PCAM), `standard` (AutoAttack's own: APGD-CE,
APGD-T, FAB-T, Square) and `apgd-ce-t` (APGD-CE + APGD-T, RobustVLM's), or `apgd-ce` / `apgd-t` alone. Targeted attacks get at
most C − 1 target classes (AutoAttack's 9 need 10 classes); the targeted DLR loss needs 4. The evaluation's PGD random start is drawn per sample from
(seed, sample index) (`per_sample_start`), so accuracies depend neither on the batch size nor
on how torchrun processes share the samples.

Under fp16 autocast the input gradient of a step can underflow to exact zeros (fp16's smallest
value is 6e-8; PMG-AFT's temperature-1 attack at batch 128 measured 38 % zeros on the tiny
model), and `sign(0) = 0` silently weakens the attack: `pgd` scales the loss there, as GradScaler
does for weights (`LossScale`), and counts the zero entries (`GradStats`). fp32 and bf16 attacks
are computed exactly as before (bf16 has fp32's exponent range).

    delta = pgd(lambda xa: F.cross_entropy(model.logits(xa, T), y), x, 1/255, 1/255, 100)
    python -m pytest tests/test_attacks.py -q
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("l_inf", "l_2")
ATTACKS = ("pgd", "cw", "autoattack")
log = logging.getLogger("tga_zsr")


def autocast_dtype(device_type: str):
    """The dtype autocast runs `device_type` in now, or None (torch 2.3 has only per-device functions)."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except (AttributeError, TypeError):  # torch < 2.4
        if device_type == "cuda":
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return None


class LossScale:
    """The loss scale of fp16 attack gradients, one per objective and kept across calls, as GradScaler
    keeps its own: start at 2¹⁶, halve and recompute the step when the input gradient is not finite
    (an fp16 overflow somewhere in the backward), double after `growth_interval` finite steps.
    Powers of two: scaling and unscaling are exact. Below `MIN` (the loss itself is not finite) the
    step is taken unscaled, as it would be without scaling."""
    INIT, MIN = 2.0 ** 16, 2.0 ** -8

    def __init__(self, growth_interval: int = 1000):
        self.value = self.INIT
        self.growth_interval = growth_interval
        self.good = 0

    def backoff(self) -> bool:
        """Halve; False once the scale is below MIN (give up scaling this step)."""
        self.value /= 2
        self.good = 0
        return self.value >= self.MIN

    def step_done(self) -> None:
        self.good += 1
        if self.good >= self.growth_interval:
            self.value, self.good = self.value * 2, 0


_LOSS_SCALES: dict = {}  # objective (its code object) -> LossScale


def loss_scale_for(loss_fn) -> LossScale:
    """The LossScale of an objective: the training attack's and the evaluation's need different scales
    (a batch-mean at temperature 1 against a batch sum at ×100), each its own."""
    key = getattr(loss_fn, "__code__", None) or type(loss_fn)
    if key not in _LOSS_SCALES:
        _LOSS_SCALES[key] = LossScale()
    return _LOSS_SCALES[key]


@dataclass
class GradStats:
    """What the input gradients of an attack looked like: entries seen, entries exactly 0, steps
    recomputed at a lower loss scale, and the last scale (1: unscaled)."""
    entries: int = 0
    zeros: int = 0
    retries: int = 0
    scale: float = 1.0

    @property
    def zero_fraction(self) -> float:
        return int(self.zeros) / max(1, self.entries)

    def as_dict(self) -> dict:
        return {"entries": self.entries, "zeros": int(self.zeros), "zero_fraction": self.zero_fraction,
                "retries": self.retries, "scale": self.scale}


ZERO_GRAD_WARN = 0.01  # an fp16 attack with more exact-zero gradient entries than this (after scaling) is said
_WARNED: set = set()


def input_gradient(loss_fn, x: torch.Tensor, delta: torch.Tensor, scale: LossScale | None = None,
                   stats: GradStats | None = None) -> torch.Tensor:
    """∂ loss_fn(x + δ) / ∂δ; with `scale` (fp16 autocast), of the scaled loss, unscaled again."""
    if scale is None:
        loss = loss_fn(x + delta)
        (grad,) = torch.autograd.grad(loss.float(), delta)
    else:
        while True:
            loss = loss_fn(x + delta)
            s = scale.value
            (grad,) = torch.autograd.grad(loss.float() * s, delta)
            if bool(torch.isfinite(grad).all()):   # one host sync per step, fp16 only
                scale.step_done()
                grad = grad / s
                break
            if stats is not None:
                stats.retries += 1
            if not scale.backoff():
                (grad,) = torch.autograd.grad(loss_fn(x + delta).float(), delta)
                break
    if stats is not None:  # the zero count stays on the device: no host sync for it
        stats.entries += grad.numel()
        stats.zeros = stats.zeros + (grad == 0).sum()
        stats.scale = scale.value if scale is not None else 1.0
    return grad


@dataclass(frozen=True)
class PGDSettings:
    """One PGD attack. ε and step size in pixel units (the command line's 1/255 units ÷ 255);
    `momentum` > 0: the momentum-on-the-sign step of FARE's inner attack."""
    eps: float
    step_size: float
    steps: int
    norm: str = "l_inf"
    momentum: float = 0.0


@contextlib.contextmanager
def no_param_grad(*modules: nn.Module):
    """Temporarily turn off requires_grad on every parameter of `modules` (restored after).

    The attack then builds a graph only through the input: its backward is input-only.
    """
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def input_gradient_kernels(device: torch.device):
    """On the CPU, compute the attack without oneDNN convolutions.

    oneDNN's convolution backward to the *input* is slow for a ViT patch embedding (kernel =
    stride = 32): measured 0.35 s vs 0.09 s for PyTorch's own kernel at ViT-B/32, batch 16 (the
    forward is equal), i.e. about a third of a forward pass saved on every attack step. Training
    never needs that gradient; attacks always do. Same values either way.
    """
    if device.type != "cpu" or _cpu_autocast_on():
        # under CPU autocast (bf16) it is the other way round: PyTorch's own low-precision kernels took
        # 0.54 s per forward + input gradient against oneDNN's 0.065 s (tiny-world ViT, batch 48)
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _cpu_autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


def attack_list(text: str) -> list[str]:
    """`"pgd,cw"` -> ["pgd", "cw"] (the evaluation's `--attack`); unknown names raise ValueError."""
    names = [a.strip().lower() for a in str(text).split(",") if a.strip()]
    bad = [a for a in names if a not in ATTACKS]
    if not names or bad:
        raise ValueError(f"unknown attack {bad or text!r}: use one or more of {', '.join(ATTACKS)}, comma-separated")
    return list(dict.fromkeys(names))


def _l2_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def random_init(x: torch.Tensor, eps: float, norm: str = "l_inf", generator=None) -> torch.Tensor:
    """Uniform in the l_inf ball, or Gaussian direction at a uniform radius ≤ ε for l_2;
    then clipped so that x + δ stays in [0, 1]. `generator` defaults to the global RNG."""
    if norm == "l_inf":
        delta = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    elif norm == "l_2":
        delta = torch.empty_like(x).normal_(generator=generator)
        r = torch.empty(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype).uniform_(
            generator=generator)
        delta = delta / _l2_norm(delta).clamp_min(1e-12) * r * eps
    else:
        raise ValueError(f"unknown norm '{norm}', choose from {NORMS}")
    return (x + delta).clamp(0, 1) - x


def project(delta: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Back into the ε-ball, then into the image box [0, 1]."""
    if norm == "l_inf":
        delta = delta.clamp(-eps, eps)
    else:
        n = _l2_norm(delta)
        delta = delta * torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
    return (x + delta).clamp(0, 1) - x


def start_seed(seed: int, index: int) -> int:
    """The seed of one sample's PGD start generator."""
    return seed * 1_000_003 + int(index)


def per_sample_start(x: torch.Tensor, idx: torch.Tensor, eps: float, norm: str, seed: int,
                     on_device: bool | None = None) -> torch.Tensor:
    """The PGD random start of each sample, drawn from its own (seed, index) generator: that of
    `torch.Generator().manual_seed(start_seed(seed, index))` on the CPU, `random_init` of the image.

    On an accelerator (`on_device`, default: x not on the CPU) the l_inf start is computed there,
    bit for bit the same numbers (`mt19937_uniform`), without copying the batch to the CPU and
    back: ~0.34 s of one CPU core per batch of 256 ViT images, with the GPU waiting. The l_2 start
    (Gaussian draws) keeps the CPU route."""
    if on_device is None:
        on_device = x.device.type != "cpu"
    if on_device and norm == "l_inf":
        seeds = [start_seed(seed, i) for i in idx.tolist()]
        delta = mt19937_uniform(seeds, x[0].numel(), -eps, eps, x.device).view_as(x)
        return (x.detach() + delta).clamp(0, 1) - x.detach()
    xc = x.detach().cpu()
    out = torch.stack([random_init(xc[j:j + 1], eps, norm, torch.Generator().manual_seed(start_seed(seed, i)))[0]
                       for j, i in enumerate(idx.tolist())])
    return out.to(x.device)


# --- torch's CPU generator, on any device ------------------------------------------------------------
# torch.Generator() is MT19937 (seeded with the low 32 bits of the seed); `uniform_(lo, hi)` on
# float32 takes one 32-bit output per element, keeps its low 24 bits k and returns
# `k·2⁻²⁴·(hi − lo) + lo`, fused into one rounding (FMA) by the x86 and ARM builds. Here the state
# is seeded on the host (624 words per sample, numpy) and twisted and tempered on the device, all
# samples at once, in int64 arithmetic; the last step is computed exactly in float64 (k·2⁻²⁴·(hi−lo)
# needs 48 bits; with lo = −hi the sum is a multiple of that product's last bit and needs 48 too)
# and rounded once to float32: the FMA's result. tests/test_gpu_ready.py compares it with
# torch.Generator bit for bit.
_MT_N, _MT_M = 624, 397
_MASK32 = 0xFFFFFFFF


def _mt_seed_states(seeds: list[int]) -> np.ndarray:
    """`[B, 624]` MT19937 states of `torch.Generator().manual_seed(s)` for each seed (host, uint64)."""
    state = np.empty((len(seeds), _MT_N), dtype=np.uint64)
    prev = np.array([s & _MASK32 for s in seeds], dtype=np.uint64)
    state[:, 0] = prev
    for j in range(1, _MT_N):
        prev = (np.uint64(1812433253) * (prev ^ (prev >> np.uint64(30))) + np.uint64(j)) & np.uint64(_MASK32)
        state[:, j] = prev
    return state


def _mt_mix(cur, nxt, far):
    y = (cur & 0x80000000) | (nxt & 0x7FFFFFFF)
    return far ^ (y >> 1) ^ ((y & 1) * 0x9908B0DF)


def _mt_twist(st: torch.Tensor) -> torch.Tensor:
    """The next 624 words of every row; word i needs the new word i − 227, hence four slices."""
    new = torch.empty_like(st)
    new[:, :227] = _mt_mix(st[:, :227], st[:, 1:228], st[:, _MT_M:])
    new[:, 227:454] = _mt_mix(st[:, 227:454], st[:, 228:455], new[:, :227])
    new[:, 454:623] = _mt_mix(st[:, 454:623], st[:, 455:624], new[:, 227:396])
    new[:, 623:] = _mt_mix(st[:, 623:], new[:, :1], new[:, 396:397])
    return new


def _mt_temper(y: torch.Tensor) -> torch.Tensor:
    y = y ^ (y >> 11)
    y = y ^ ((y << 7) & 0x9D2C5680)
    y = y ^ ((y << 15) & 0xEFC60000)
    return y ^ (y >> 18)


_MT_TWISTS = 4  # twists per call of _mt_draws: one compiled graph of ~150 ops (inductor builds it in ~10 s)


def _mt_draws(state: torch.Tensor, span: float, low: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`_MT_TWISTS` twists of every row: the new state and the `[B, _MT_TWISTS·624]` float32 draws."""
    words = []
    for _ in range(_MT_TWISTS):
        state = _mt_twist(state)
        words.append(state)
    k = _mt_temper(torch.cat(words, 1)) & 0xFFFFFF
    return state, (k.double() * 2.0 ** -24 * span + low).float()


_DRAWS: dict = {}  # "compiled" -> the compiled _mt_draws, or None once it failed to build


def _draws_function(compiled: bool):
    """`_mt_draws`, compiled when asked: eagerly, one 224×224 image's 150 528 draws take 242 twists of
    ~40 elementwise kernels each (~10 000 launches, 60–100 ms per batch on a GPU by the issue's count);
    compiled, 61 calls of a few fused kernels. Inductor's integer and float64 operations are exact, so
    the numbers are the same; if it cannot build (no Triton, no C++ compiler) the eager one is used."""
    if not compiled or _DRAWS.get("compiled", 0) is None:
        return _mt_draws
    if "compiled" not in _DRAWS:
        _DRAWS["compiled"] = torch.compile(_mt_draws, dynamic=True)
    return _DRAWS["compiled"]


def mt19937_uniform(seeds: list[int], n: int, lo: float, hi: float, device, compiled: bool | None = None) -> torch.Tensor:
    """`[B, n]` float32: row b equals `torch.empty(n).uniform_(lo, hi, generator=Generator().manual_seed(seeds[b]))`
    for symmetric bounds (lo = −hi), computed on `device`; `compiled` (default: on CUDA) fuses the
    generator's kernels with torch.compile (`_draws_function`)."""
    if lo != -hi:
        raise ValueError("mt19937_uniform reproduces torch's draws exactly for symmetric bounds only")
    device = torch.device(device)
    state = torch.from_numpy(_mt_seed_states(seeds).astype(np.int64)).to(device, non_blocking=True)
    lo32, hi32 = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
    span, low = float(hi32 - lo32), float(lo32)   # float32 `hi − lo`, as the C code computes it
    out = torch.empty(len(seeds), n, dtype=torch.float32, device=device)
    draws = _draws_function(device.type == "cuda" if compiled is None else compiled)
    for start in range(0, n, _MT_TWISTS * _MT_N):
        try:
            state, values = draws(state, span, low)
        except Exception as e:  # noqa: BLE001  (a compiler that cannot build: the eager kernels, same numbers)
            if draws is _mt_draws:
                raise
            log.warning(f"the compiled PGD-start generator failed ({type(e).__name__}: {e}); using the eager one")
            _DRAWS["compiled"], draws = None, _mt_draws
            state, values = draws(state, span, low)
        take = min(values.shape[1], n - start)
        out[:, start:start + take] = values[:, :take]
    return out


def linf_update(delta: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, alpha: float, eps: float) -> torch.Tensor:
    """One l_inf PGD update: `δ + α·sign(∇δ)` into the ε-ball, then `x + δ` into [0, 1] (`project`'s
    operations in its order, so the values are the same; written as one expression for torch.compile)."""
    return (x + (delta + alpha * grad.sign()).clamp(-eps, eps)).clamp(0, 1) - x


_COMPILED_UPDATES: dict = {}


def compiled_linf_update(backend: str = "inductor"):
    """`linf_update` compiled once per process (batch dimension dynamic): the evaluation attack's
    100 updates per batch become one fused kernel each instead of six passes over the batch."""
    if backend not in _COMPILED_UPDATES:
        _COMPILED_UPDATES[backend] = torch.compile(linf_update, dynamic=True, backend=backend)
    return _COMPILED_UPDATES[backend]


def pgd(loss_fn, x: torch.Tensor, eps: float, alpha: float, steps: int, norm: str = "l_inf",
        random_start: bool = True, momentum: float | None = None,
        init: torch.Tensor | None = None, update=linf_update, stats: GradStats | None = None) -> torch.Tensor:
    """Projected gradient ascent on `loss_fn`; returns δ (detached) of the final iterate.

    l_inf: `δ ← Π(δ + α·sign(∇δ))`. l_2: `δ ← Π(δ + α·∇δ/‖∇δ‖)`. No restarts, no best-loss
    tracking, as the original code. `momentum` (FARE's inner attack): `v ← sign(μ·v + sign(∇δ))`,
    `δ ← Π(δ + α·v)`. Works under autocast: δ stays fp32, the loss may be half precision; under
    fp16 autocast the loss is scaled (`LossScale`) so that its input gradient does not underflow,
    and an attack whose gradient still has more than ZERO_GRAD_WARN exact zeros is logged.
    `update`: the l_inf step without momentum (`compiled_linf_update()` under `--compile`).
    `stats`: filled with the gradients' zero count, recomputed steps and the loss scale.
    """
    x = x.detach()
    if norm not in NORMS:
        raise ValueError(f"unknown norm '{norm}', choose from {NORMS}")
    if init is not None:
        delta = project(init.to(x), x, eps, norm)
    else:
        delta = random_init(x, eps, norm) if random_start else torch.zeros_like(x)
    velocity = torch.zeros_like(x) if momentum is not None else None
    scale = loss_scale_for(loss_fn) if autocast_dtype(x.device.type) == torch.float16 else None
    if scale is not None and stats is None:
        stats = GradStats()  # for the warning below
    for _ in range(int(steps)):
        delta.requires_grad_(True)
        with input_gradient_kernels(x.device):
            grad = input_gradient(loss_fn, x, delta, scale, stats)
        with torch.no_grad():
            if norm == "l_inf" and velocity is None:
                delta = update(delta.detach(), grad, x, alpha, eps)
            elif norm == "l_inf":
                velocity = (momentum * velocity + grad.sign()).sign()
                delta = project(delta.detach() + alpha * velocity, x, eps, norm)
            else:
                step = grad / _l2_norm(grad).clamp_min(1e-12)
                delta = project(delta.detach() + alpha * step, x, eps, norm)
    if scale is not None and steps and stats.zero_fraction > ZERO_GRAD_WARN and "zeros" not in _WARNED:
        _WARNED.add("zeros")
        log.warning(f"fp16 attack: {100 * stats.zero_fraction:.1f} % of the input-gradient entries were exactly 0 "
                    f"at loss scale {stats.scale:g}: those pixels do not move (--attack_precision fp32 avoids it)")
    return delta.detach()


def cw_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """CW margin loss to maximise (paper Table 4): `−Σ relu(z_y − max_{j≠y} z_j + κ)`."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).max(dim=1).values
    return -F.relu(true - others + kappa).sum()


def ce_loss_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch: per-sample gradients independent of batch size."""
    return F.cross_entropy(logits.float(), y, reduction="sum")


# --- AutoAttack (pyautoattack) -------------------------------------------------------------------
# `pyautoattack` 0.2.0 is called `AutoAttack(model, norm=..., eps=..., version='custom', attacks=[...],
# device=..., seed=...)`; `run_standard_evaluation(x, y, batch_size=N)` returns `(x_adv, y_adv)` (clean
# images where no attack succeeded). APGD re-seeds torch's global RNG before each batch: we fork the RNG
# around the call so the caller's random stream is untouched. Its own checks (randomised defence, too
# few classes, zero gradients) are printed through our log, each distinct message once per process.
AA_NORMS = {"l_inf": "Linf", "l_2": "L2"}
MIN_CLASSES_FOR_DLR = 4  # as TeCoA's code: APGD-DLR only with at least 4 classes
# version -> (pyautoattack version, attacks). `aa-papers` is the call of docs/evaluation.md (version 'custom': APGD
# with the library's 5 restarts; the original code builds version 'standard', 1 restart, and then
# swaps the attack list); `apgd-ce-t` is RobustVLM's (its fork, version 'custom', 100 iterations).
AA_VERSIONS = {
    "aa-papers": ("custom", ["apgd-ce", "apgd-dlr"]),
    "standard": ("standard", ["apgd-ce", "apgd-t", "fab-t", "square"]),
    "apgd-ce-t": ("custom", ["apgd-ce", "apgd-t"]),
    "apgd-ce": ("custom", ["apgd-ce"]),  # each of RobustVLM's two alone (the audit's attack rows, docs/audit.md)
    "apgd-t": ("custom", ["apgd-t"]),
}
AA_TARGETS = 9  # AutoAttack's number of target classes (APGD-T, FAB-T)
# The smallest class count each attack works with: DLR needs the 3rd-largest logit (we keep
# TeCoA's 4), the targeted DLR the 4th; FAB-T and Square need a second class.
MIN_CLASSES = {"apgd-ce": 2, "apgd-dlr": MIN_CLASSES_FOR_DLR, "apgd-t": 4, "fab-t": 2, "square": 2}
_TOLD: set[str] = set()


class ZeroShotClassifier(nn.Module):
    """Pixels in [0, 1] -> zero-shot logits against fixed text features (float32 output)."""

    def __init__(self, model, text_features: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("text_features", text_features.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x, self.text_features).float()


class _Collect(logging.Handler):
    """Keeps AutoAttack's check messages of one call, so that results can carry them."""

    def __init__(self, sink: list):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg not in self.sink:
            self.sink.append(msg)


class _OncePerMessage(logging.Filter):
    """Let each distinct AutoAttack warning through once: a per-batch check would repeat it."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg in self.seen:
            return False
        self.seen.add(msg)
        return True


def _route_autoattack_log() -> None:
    """Show AutoAttack's warnings (its logger 'auto-attack') in our log instead of losing them."""
    aa_log = logging.getLogger("auto-attack")
    if getattr(aa_log, "_tga_zsr_routed", False):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[AutoAttack] %(levelname)s: %(message)s"))
    handler.addFilter(_OncePerMessage())
    aa_log.addHandler(handler)
    aa_log.setLevel(logging.WARNING)  # its per-batch progress is DEBUG; its checks are WARNING
    aa_log.propagate = False
    aa_log._tga_zsr_routed = True


def attacks_for(num_classes: int, version: str = "aa-papers") -> tuple[list[str], list[str]]:
    """(attacks that can run on `num_classes` classes, what was left out and why)."""
    if version not in AA_VERSIONS:
        raise ValueError(f"unknown AutoAttack version '{version}'; choose from {list(AA_VERSIONS)}")
    wanted = AA_VERSIONS[version][1]
    kept = [a for a in wanted if num_classes >= MIN_CLASSES[a]]
    notes = [f"{a.upper()} left out: it needs at least {MIN_CLASSES[a]} classes, the dataset has {num_classes}"
             for a in wanted if a not in kept]
    targets = min(AA_TARGETS, num_classes - 1)
    if targets < AA_TARGETS and any(a in kept for a in ("apgd-t", "fab-t")):
        notes.append(f"targeted attacks use {targets} target classes (AutoAttack's {AA_TARGETS} need "
                     f"{AA_TARGETS + 1} classes; the dataset has {num_classes})")
    return kept, notes


def autoattack_batch(model, x: torch.Tensor, y: torch.Tensor, text_features: torch.Tensor, eps: float,
                     settings: dict, notes: list | None = None) -> torch.Tensor:
    """Adversarial images for one batch; `eps` in pixel units; norm, seed and `aa_version` from
    `settings`. AutoAttack's own check messages and our class-count adjustments are appended to
    `notes` (each once) and printed once per process."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:
        raise SystemExit("--attack autoattack needs the pyautoattack package: pip install pyautoattack") from e
    _route_autoattack_log()
    norm = settings.get("norm", "l_inf")
    if norm not in AA_NORMS:
        raise ValueError(f"AutoAttack norm '{norm}' not supported; choose from {list(AA_NORMS)}")
    num_classes = text_features.shape[0]
    version = settings.get("aa_version") or "aa-papers"
    attacks, adjustments = attacks_for(num_classes, version)
    if not attacks:  # AutoAttack would return the clean images: robust accuracy would read as clean accuracy
        raise ValueError(f"AutoAttack {version}: no attack of it runs on {num_classes} classes ({adjustments[0]}); "
                         f"choose another --aa_version")
    notes = [] if notes is None else notes
    for msg in adjustments:
        if msg not in notes:
            notes.append(msg)
        if msg not in _TOLD:
            log.info(f"AutoAttack ({version}): {msg}")
            _TOLD.add(msg)
    classifier = ZeroShotClassifier(model, text_features).eval()
    aa_version = AA_VERSIONS[version][0]
    kwargs = {"attacks": attacks} if aa_version == "custom" else {}
    adversary = AutoAttack(classifier, norm=AA_NORMS[norm], eps=eps, version=aa_version,
                           device=x.device, seed=int(settings.get("seed", 0)), **kwargs)
    adversary.attacks_to_run = attacks  # the standard list less what this class count cannot run
    targets = max(1, min(AA_TARGETS, num_classes - 1))
    adversary.apgd_targeted.n_target_classes = targets
    adversary.fab.n_target_classes = targets
    collect = _Collect(notes)
    aa_log = logging.getLogger("auto-attack")
    aa_log.addHandler(collect)
    cuda_devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices), input_gradient_kernels(x.device):
            x_adv, _ = adversary.run_standard_evaluation(x.detach(), y, batch_size=x.shape[0])
    finally:
        aa_log.removeHandler(collect)
    return x_adv.detach()
