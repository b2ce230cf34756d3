"""AutoAttack evaluation (SPEC §5) through the `pyautoattack` package: APGD-CE + APGD-DLR.

AutoAttack wants a model that maps pixels in [0, 1] to logits. `ZeroShotClassifier` is that
model: CLIP's image tower (preprocessing inside) against text features computed once per
dataset, `logits = s · norm(f(x)) · Tᵀ`. The attack set follows TeCoA's evaluation:
`version='custom'` with APGD-CE and APGD-DLR (the library's defaults for those: 100 iterations,
5 restarts), and APGD-CE alone for datasets with fewer than 4 classes (PCAM has 2), since the
DLR loss needs the third-largest logit. AutoAttack's own checks (randomised or dynamic
defence, probability outputs, too few classes, zero gradients) are printed through our log,
each distinct message once per process.

`pyautoattack` 0.2.0 is called `AutoAttack(model, norm=..., eps=..., version='custom',
attacks=[...], device=..., seed=...)`; `run_standard_evaluation(x, y, batch_size=N)` returns
`(x_adv, y_adv)`: the adversarial images (clean images where no attack succeeded) and the
predicted labels on them. APGD re-seeds torch's global RNG with `seed` before each batch; we
fork the RNG around the call so the caller's random stream is untouched.

    python tga_zsr.py --eval_only --resume checkpoints/<run> --attack autoattack --test_eps 1
    python -m pytest -q tests/test_evaluate.py -k autoattack
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from attacks import input_gradient_kernels

log = logging.getLogger("tga_zsr")

AA_NORMS = {"l_inf": "Linf", "l_2": "L2"}
MIN_CLASSES_FOR_DLR = 4  # SPEC §5 / TeCoA: APGD-DLR only with at least 4 classes
_TOLD_CE_ONLY: set[int] = set()


class ZeroShotClassifier(nn.Module):
    """Pixels in [0, 1] -> zero-shot logits against fixed text features (float32 output)."""

    def __init__(self, model, text_features: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("text_features", text_features.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x, self.text_features).float()


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


def attacks_for(num_classes: int) -> list[str]:
    return ["apgd-ce", "apgd-dlr"] if num_classes >= MIN_CLASSES_FOR_DLR else ["apgd-ce"]


def autoattack_batch(model, x: torch.Tensor, y: torch.Tensor, text_features: torch.Tensor, eps: float,
                     settings: dict) -> torch.Tensor:
    """Adversarial images for one batch; `eps` in pixel units, norm and seed from `settings`."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:
        raise SystemExit("--attack autoattack needs the pyautoattack package: pip install pyautoattack") from e
    _route_autoattack_log()
    norm = settings.get("norm", "l_inf")
    if norm not in AA_NORMS:
        raise ValueError(f"AutoAttack norm '{norm}' not supported; choose from {list(AA_NORMS)}")
    num_classes = text_features.shape[0]
    attacks = attacks_for(num_classes)
    if len(attacks) == 1 and num_classes not in _TOLD_CE_ONLY:
        log.info(f"AutoAttack: {num_classes} classes < {MIN_CLASSES_FOR_DLR}, running APGD-CE only")
        _TOLD_CE_ONLY.add(num_classes)
    classifier = ZeroShotClassifier(model, text_features).eval()
    adversary = AutoAttack(classifier, norm=AA_NORMS[norm], eps=eps, version="custom", attacks=attacks,
                           device=x.device, seed=int(settings.get("seed", 0)))
    cuda_devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), input_gradient_kernels(x.device):
        x_adv, _ = adversary.run_standard_evaluation(x.detach(), y, batch_size=x.shape[0])
    return x_adv.detach()
