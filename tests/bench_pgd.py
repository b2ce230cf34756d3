"""Benchmark (not a test): the cost of one PGD-100 evaluation batch against its floor.

One batch of the evaluation = the attack of `evaluate.attack_batch` (per-sample random start,
K steps of forward + input-gradient backward, parameters frozen, text features fixed). Its floor
is K × (one forward + one input-gradient backward); the two are timed separately here (median of
`--reps`), then the whole attack once. Random-weight ViT-B/32 by default; prints the load
average too, since other processes share the CPU.

    python tests/bench_pgd.py                                   # ViT-B-32, 16 images, 25 classes, 100 steps
    python tests/bench_pgd.py --arch tiny-vit --steps 10        # a quick check
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attacks import ce_loss_sum  # noqa: E402
from clip_model import load_clip  # noqa: E402
from evaluate import attack_batch, frozen_params  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser("bench_pgd")
    p.add_argument("--arch", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--classes", type=int, default=25)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    torch.manual_seed(0)
    model = load_clip(a.arch, None).eval()
    with torch.no_grad():
        text = model.encode_text([f"This is a photo of a class {i}" for i in range(a.classes)])
    x = torch.rand(a.batch, 3, 224, 224)
    y = torch.randint(a.classes, (a.batch,))
    load0 = os.getloadavg()
    fwd, bwd = [], []
    with frozen_params(model):
        for _ in range(a.reps + 1):  # the first round warms up
            xa = x.clone().requires_grad_(True)
            t0 = time.perf_counter()
            loss = ce_loss_sum(model.logits(xa, text), y)
            t1 = time.perf_counter()
            torch.autograd.grad(loss, xa)
            t2 = time.perf_counter()
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
        f, b = statistics.median(fwd[1:]), statistics.median(bwd[1:])
        print(f"forward (graph recorded) {f:.3f} s   input-gradient backward {b:.3f} s   (median of {a.reps})",
              flush=True)
        settings = {"attack": "pgd", "norm": "l_inf", "eps": 1.0, "steps": a.steps, "step_size": 1.0, "seed": 0}
        t0 = time.perf_counter()
        attack_batch(model, x, y, torch.arange(a.batch), text, settings)
        total = time.perf_counter() - t0
    floor = a.steps * (f + b)
    print(f"{a.arch} random weights, {a.batch} images, {a.classes} classes, PGD-{a.steps}, fp32, "
          f"torch threads {torch.get_num_threads()}, load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"PGD-{a.steps} batch {total:.1f} s   floor {a.steps} x (fwd + bwd) = {floor:.1f} s   "
          f"floor / total = {100 * floor / total:.0f}%")


if __name__ == "__main__":
    main()
