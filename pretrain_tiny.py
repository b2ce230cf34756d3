"""Contrastive pre-training of the tiny CLIP of the mini world (the stand-in for OpenAI's CLIP).

The mini protocol replaces ViT-B/32 + OpenAI weights by `tiny-world` (configs/models/
tiny-world.json: ViT 8×8 patches on 32×32 pixels, width 128, 4 layers; text width 128,
3 layers) trained here with the symmetric InfoNCE loss of CLIP (open_clip's `ClipLoss`) on
freshly rendered world images and captions that name a random subset of the six attributes
(datasets/world.py; `--mention` sets how often each is named). The 12 held-out shape–colour
combinations are never shown, so `world_heldout` measures compositional zero-shot transfer.
AdamW, linear warm-up then cosine, logit scale clamped at 100 as in open_clip. Same seed, same
thread count -> same weights.

What was tried (2-core CPU, see checkpoints/README.md): with 4×4 patches, 600–800 steps, with or
without minimal pairs (`--pair_frac`: twins that differ in one attribute, each the other's hard
negative), neither shape without colour nor position rose above chance; 8×8 patches learn shape
(0.45 on 8 classes after 2000 steps) and are twice as fast; position stays at chance in the
mixed-caption world although it is learned when captions name nothing else.

Writes `checkpoints/tiny-world-clip.pt` (via `save_clip`, float16 weights) and `checkpoints/tiny-world-clip.json`
(command, seed, steps, wall time, versions, zero-shot accuracy per world test set).

    python pretrain_tiny.py                                   # the bundled checkpoint (~14 min, 1 thread)
    python pretrain_tiny.py --eval --resume checkpoints/tiny-world-clip.pt --eval_eps 2 4 8
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time

# The CPU is shared: with the default busy-waiting OpenMP threads, two threads on two contended
# cores run 3-5x slower than one; passive waiting keeps 2 threads at least as fast as 1.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from open_clip.loss import ClipLoss  # noqa: E402
from tqdm import tqdm  # noqa: E402

from engine.weights import save_clip  # noqa: E402
from engine.model import load_clip  # noqa: E402
from datasets.world import ATTRIBUTES, DIAGNOSTIC_SETS, HELDOUT_COMBOS, WORLD_TEST_SETS, build_world, stream  # noqa: E402
from engine.device import resolve_device  # noqa: E402
from engine.evaluate import evaluate_dataset  # noqa: E402
from engine.run_folder import environment  # noqa: E402
from engine.train import lr_at  # noqa: E402

ARCH = "tiny-world"
DEFAULT_OUT = "checkpoints/tiny-world-clip.pt"
BUNDLED_MENTION = "shape=0.9,position=0.9,size=0.6,texture=0.6,colour=0.4,background=0.4"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                allow_abbrev=False)
    g = p.add_argument_group("Schedule")
    g.add_argument("--steps", type=int, default=2000, help="optimiser steps (one fresh batch each)")
    g.add_argument("--batch_size", type=int, default=128, help="images (and captions) per step")
    g.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    g.add_argument("--wd", type=float, default=0.1, help="AdamW weight decay (not on gains, biases, embeddings)")
    g.add_argument("--warmup", type=int, default=50, help="linear warm-up steps before the cosine decay")
    g = p.add_argument_group("Data")
    g.add_argument("--mention_p", type=float, default=0.6,
                   help="probability that a caption names each attribute (shape, colour, size, ...)")
    g.add_argument("--mention", type=parse_mention, default=BUNDLED_MENTION,
                   help="per-attribute overrides of --mention_p; the bundled model's: shape and position "
                        "named most often, colour and background (learned first) least")
    g.add_argument("--pair_frac", type=float, default=0.0,
                   help="fraction of each batch made of minimal pairs: two images that differ in one attribute "
                        "(mostly shape or position), captions that differ in one word (datasets/world.py)")
    g = p.add_argument_group("Eval")
    g.add_argument("--eval", action="store_true", help="only evaluate --resume, update its .json")
    g.add_argument("--resume", default=None, help="checkpoint to evaluate (with --eval)")
    g.add_argument("--eval_eps", type=float, nargs="*", default=[],
                   help="also PGD-10 robust accuracy at these l_inf budgets (1/255 units); step ε/4")
    g.add_argument("--eval_steps", type=int, default=10, help="PGD steps of the robust evaluation")
    g = p.add_argument_group("Misc")
    g.add_argument("--arch", default=ARCH, help="open_clip model name or config json of the tiny CLIP")
    g.add_argument("--seed", type=int, default=0, help="initialisation and image-stream seed")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads (the bundled model: 1; the same seed "
                        "and thread count give the same weights)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    g.add_argument("--out", default=DEFAULT_OUT, help="checkpoint path; the .json goes beside it")
    g.add_argument("--fp32", action="store_true",
                   help="save float32 weights (default float16: half the file; loading casts back to float32)")
    return p


def parse_mention(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in ATTRIBUTES or not value:
            raise argparse.ArgumentTypeError(f"--mention: expected attribute=probability with attribute in "
                                             f"{', '.join(ATTRIBUTES)}; got {item!r}")
        out[name] = float(value)
    return out


def evaluate(model, sets=WORLD_TEST_SETS + DIAGNOSTIC_SETS, eps_list=(), steps: int = 10) -> dict:
    """Zero-shot top-1 (fractions) per world test set: clean, and under PGD-`steps` at each ε of
    `eps_list` (1/255 units, step ε/4 so that 10 steps cross the ball) — evaluate.py's own loop."""
    model.eval()
    device = model.clip.logit_scale.device
    res = {}
    for name in sets:
        data = build_world(name, "test")
        with torch.no_grad():
            text = model.encode_text(data.prompts)
        r = {"classes": len(data.classnames), "n": len(data)}
        for e in (0, *eps_list):
            settings = {"attack": "pgd", "norm": "l_inf", "eps": e, "steps": steps, "step_size": e / 4, "seed": 0}
            acc = evaluate_dataset(model, data, text, settings, device, "fp32", show_progress=False)
            if e == 0:
                r["clean"] = round(acc["clean_acc"] / 100, 4)
            else:
                r[f"pgd{steps}_eps{e:g}"] = round(acc["robust_acc"] / 100, 4)
        res[name] = r
        print(f"{name:18s} " + " ".join(f"{k}={v}" for k, v in r.items()), flush=True)
    return res


def train(args) -> None:
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = load_clip(args.arch, pretrained=None, device=device)
    clip = model.clip
    clip.requires_grad_(True)  # load_clip freezes the text tower (for fine-tuning); here we train both
    decay = [p for n, p in clip.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    batches = stream(args.batch_size, seed=args.seed, constraints={"exclude_combos": HELDOUT_COMBOS},
                     p={**{a: args.mention_p for a in ATTRIBUTES}, **args.mention}, pair_frac=args.pair_frac)
    model.train()
    t0, c0 = time.time(), time.process_time()
    bar = tqdm(range(args.steps), desc="pretrain", unit="step", dynamic_ncols=True)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.lr, args.warmup, args.steps)
        x, captions = next(batches)
        x = x.to(device)
        tokens = model.tokenizer(captions).to(device)
        # the tower's CLS path (clip_model.ImageTower): open_clip's own forward would hand its
        # sequence-first blocks a non-contiguous input (the slow batched-matmul projection)
        img = F.normalize(model.image_tower(x, cls_only=True), dim=-1)
        txt = clip.encode_text(tokens, normalize=True)
        loss = loss_fn(img, txt, clip.logit_scale.exp())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}: stop")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        if step % 10 == 0 or step == args.steps - 1:
            el = time.time() - t0
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{(step + 1) * args.batch_size / el:.0f}",
                            scale=f"{clip.logit_scale.exp().item():.1f}")
    wall, cpu = time.time() - t0, time.process_time() - c0
    print(f"trained {args.steps} steps in {wall:.0f} s; final loss {loss.item():.4f}", flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_clip(model, args.out, half=not args.fp32)
    # Evaluate what was written (float16 weights read back as float32), not the in-memory model.
    model = load_clip(args.arch, pretrained=args.out, device=device)
    res = evaluate(model, eps_list=args.eval_eps, steps=args.eval_steps)
    card = {"arch": args.arch, "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "args": vars(args), "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size,
            "wall_time_s": round(wall, 1), "cpu_time_s": round(cpu, 1), "final_loss": round(loss.item(), 4),
            "logit_scale": round(clip.logit_scale.exp().item(), 2), "weights": "float32" if args.fp32 else "float16",
            "environment": environment(),
            "zero_shot": res,
            "note": "clean = zero-shot top-1 on the world test sets (split 'test'); "
                    "pgdK_epsE = robust top-1 under l_inf PGD-K, eps E/255, step eps/4, per-sample random start"}
    write_card(args.out, card)


def write_card(ckpt: str, card: dict) -> None:
    path = os.path.splitext(ckpt)[0] + ".json"
    with open(path, "w") as f:
        json.dump(card, f, indent=2)
    print(f"wrote {ckpt} and {path}")


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.eval:
        ckpt = args.resume or args.out
        model = load_clip(args.arch, pretrained=ckpt, device=resolve_device(args.device))
        res = evaluate(model, eps_list=args.eval_eps, steps=args.eval_steps)
        path = os.path.splitext(ckpt)[0] + ".json"
        card = json.load(open(path)) if os.path.isfile(path) else {}
        for name, r in res.items():
            card.setdefault("zero_shot", {}).setdefault(name, {}).update(r)
        card.setdefault("eval_commands", []).append("python " + " ".join(shlex.quote(a) for a in sys.argv))
        write_card(ckpt, card)
        return
    train(args)


if __name__ == "__main__":
    main()
