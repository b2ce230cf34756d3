"""Stateless attacks in [0, 1] pixel space (SPEC §0, §4 FARE, §5).

`pgd(loss_fn, x, eps, alpha, steps)` returns the perturbation δ of the final iterate;
`loss_fn(x_adv)` returns the scalar to maximise. Gradients are taken with respect to δ
only (`torch.autograd.grad`), so no model parameter ever receives a `.grad`, and callers
switch parameter gradients off for the attack (`no_param_grad`) so the forward does not even
record what a weight gradient would need. ε and step sizes are in pixel units here; the CLI
takes them in 1/255 units.

    delta = pgd(lambda xa: F.cross_entropy(model.logits(xa, T), y), x, 1/255, 1/255, 100)
    python -m pytest tests/test_attacks.py -q
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("l_inf", "l_2")


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
    if device.type != "cpu":
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


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


def pgd(loss_fn, x: torch.Tensor, eps: float, alpha: float, steps: int, norm: str = "l_inf",
        random_start: bool = True, momentum: float | None = None,
        init: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient ascent on `loss_fn`; returns δ (detached) of the final iterate.

    l_inf: `δ ← Π(δ + α·sign(∇δ))`. l_2: `δ ← Π(δ + α·∇δ/‖∇δ‖)`. No restarts, no best-loss
    tracking (SPEC §0). `momentum` (FARE's inner attack, SPEC §4): `v ← sign(μ·v + sign(∇δ))`,
    `δ ← Π(δ + α·v)`. Works under autocast: δ stays fp32, the loss may be half precision.
    """
    x = x.detach()
    if norm not in NORMS:
        raise ValueError(f"unknown norm '{norm}', choose from {NORMS}")
    if init is not None:
        delta = project(init.to(x), x, eps, norm)
    else:
        delta = random_init(x, eps, norm) if random_start else torch.zeros_like(x)
    velocity = torch.zeros_like(x) if momentum is not None else None
    for _ in range(int(steps)):
        delta.requires_grad_(True)
        with input_gradient_kernels(x.device):
            loss = loss_fn(x + delta)
            (grad,) = torch.autograd.grad(loss.float(), delta)
        with torch.no_grad():
            if norm == "l_inf":
                step = grad.sign()
                if velocity is not None:
                    velocity = (momentum * velocity + step).sign()
                    step = velocity
            else:
                step = grad / _l2_norm(grad).clamp_min(1e-12)
            delta = project(delta.detach() + alpha * step, x, eps, norm)
    return delta.detach()


def cw_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """CW margin loss to maximise (SPEC §5): `−Σ relu(z_y − max_{j≠y} z_j + κ)`."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).max(dim=1).values
    return -F.relu(true - others + kappa).sum()


def ce_loss_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch: per-sample gradients independent of batch size."""
    return F.cross_entropy(logits.float(), y, reduction="sum")
