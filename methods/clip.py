"""CLIP: the pretrained model, evaluated as it is (no training; `--epochs 0`, which the original
main.sh line forgets, so its CLIP row would have trained).

    python tga_zsr.py --Method CLIP --eval_only
"""
from __future__ import annotations

from methods import Method, register


@register
class Clip(Method):
    """CLIP: the pretrained model, evaluated as is."""
    name, label, aliases, order, trains, mini_lr = "clip", "CLIP", ("CLIP",), 10, "nothing", 0.0

    def step(self, x, y, idx=None):
        raise RuntimeError("CLIP is evaluated as pretrained: run it with --epochs 0")
