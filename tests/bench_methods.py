"""Per-step training time of every method (a benchmark, not a test: pytest does not collect it).

ViT-B/32 with random weights (`load_clip('ViT-B-32', None)`: the real architecture, no download),
batch 16 of random 224×224 images, 25 classes, each method's own config (the GPU protocol: its
attack steps, its frozen reference, its prompts), fp32, one optimiser step = attack + loss +
backward + step. The first step is a warm-up and is not timed.

    python tests/bench_methods.py                       # all methods, 2 timed steps each
    python tests/bench_methods.py --methods fare tima --steps 3 --threads 2
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import methods  # noqa: E402
from clip_model import load_clip  # noqa: E402
from params import parse_args  # noqa: E402
from train import build_optimizer, trainable_parameters  # noqa: E402

ALL = ["ft_clean", "ft_adv", "tecoa", "tecoa_vpt", "pmg_aft", "fare", "tga_zsr", "tga_zsr_visual", "comp_tga",
       "tima"]


def time_method(name: str, base, steps: int, batch: int, classes: int) -> float:
    import copy
    model = copy.deepcopy(base)
    args = parse_args(["--Method", name, "--device", "cpu"])
    method = methods.get_method(args.Method, args.atten_methods)
    frozen = model.frozen_image_tower() if method.needs_frozen else None
    methods.prepare_model(model, args, method)
    prompts = [f"This is a photo of a class{i}" for i in range(classes)]
    with torch.no_grad():
        text = model.encode_text(prompts)
    ctx = methods.StepContext(model=model, text_features=text, args=args, frozen=frozen, prompts=prompts,
                              classnames=[f"class{i}" for i in range(classes)])
    opt = build_optimizer(args, trainable_parameters(model, args.last_num_ft))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 224, 224, generator=g)
    y = torch.randint(classes, (batch,), generator=g)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = method.step(ctx, x, y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=ALL)
    p.add_argument("--steps", type=int, default=2, help="timed steps per method (after one warm-up)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--classes", type=int, default=25)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    a = p.parse_args(argv)
    logging.disable(logging.WARNING)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base = load_clip("ViT-B-32", None)
    print(f"# ViT-B/32 random weights, batch {a.batch}, {a.classes} classes, fp32, {a.threads} thread(s), "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print("| method | attack steps | s / step |\n|---|---|---|")
    for name in a.methods:
        sec = time_method(name, base, a.steps, a.batch, a.classes)
        steps = parse_args(["--Method", name]).train_numsteps if name != "ft_clean" else 0
        print(f"| {name} | {steps} | {sec:.2f} |", flush=True)
    print(f"# load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
