"""Zero-shot evaluation (SPEC §5): clean top-1 and robust top-1 under PGD / CW / AutoAttack
(autoattack_eval.py), per dataset, appended to `<run>/results.jsonl` (results.py) as each
dataset finishes; a rerun skips what is done.

Cost per batch: text features once per dataset, the attack's gradients w.r.t. the input only
(every model parameter has requires_grad off during evaluation), model in eval mode.
The random start of PGD is drawn per sample from (seed, sample index), so accuracies do not
depend on the batch size, nor on how torchrun processes share the samples: each rank takes
`range(rank, n, world)` and the correct counts are summed exactly (distributed.py).

    python tga_zsr.py --eval_only --resume checkpoints/<run> --testdata cifar10 STL10
    python tga_zsr.py --table checkpoints/run_a checkpoints/run_b
"""
from __future__ import annotations

import contextlib
import logging
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import distributed
from attacks import ce_loss_sum, cw_loss, pgd, random_init
from results import SETTING_KEYS, append_result, find_done, read_results  # noqa: F401  (re-exported)
from runtime import autocast
from train import Indexed

log = logging.getLogger("tga_zsr")


@contextlib.contextmanager
def frozen_params(module: torch.nn.Module):
    """requires_grad off for every parameter (restored after): attacks take input gradients only."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def per_sample_start(x: torch.Tensor, idx: torch.Tensor, eps: float, norm: str, seed: int) -> torch.Tensor:
    """The PGD random start of each sample, drawn from its own (seed, index) generator."""
    xc = x.detach().cpu()
    out = torch.stack([random_init(xc[j:j + 1], eps, norm, torch.Generator().manual_seed(seed * 1_000_003 + int(i)))[0]
                       for j, i in enumerate(idx.tolist())])
    return out.to(x.device)


def attack_batch(model, x, y, idx, text_features, settings: dict) -> torch.Tensor:
    """Adversarial images for one batch under `settings` (eps and step size in 1/255 units).

    `settings["random_start"]` (default True) switches PGD's uniform start off (tests)."""
    eps, steps = settings["eps"] / 255.0, settings["steps"]
    if eps == 0 or steps == 0:
        return x
    if settings["attack"] == "autoattack":
        from autoattack_eval import autoattack_batch
        return autoattack_batch(model, x, y, text_features, eps, settings)
    alpha = settings["step_size"] / 255.0
    loss_of = cw_loss if settings["attack"] == "cw" else ce_loss_sum

    def objective(xa):
        return loss_of(model.logits(xa, text_features), y)

    if settings.get("random_start", True):
        init = per_sample_start(x, idx, eps, settings["norm"], settings["seed"])
    else:
        init = torch.zeros_like(x)
    return x + pgd(objective, x, eps, alpha, steps, norm=settings["norm"], init=init)


def evaluate_dataset(model, data, text_features, settings: dict, device, precision: str,
                     batch_size: int = 256, workers: int = 0, show_progress: bool = True) -> dict:
    """Clean and robust top-1 (in %) of `model` on `data` (a ZeroShotData).

    Under torchrun each rank evaluates its shard (`batch_size` per rank) and the counts are summed."""
    rank, world = distributed.rank_world()
    samples = Indexed(data.dataset)
    if world > 1:  # no DistributedSampler: its padding would count some samples twice
        samples = Subset(samples, distributed.shard_indices(len(samples), rank, world))
    loader = DataLoader(samples, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    n = clean = robust = 0
    t0 = time.time()
    bar = tqdm(total=len(samples), unit="img", desc=f"eval {data.name}", dynamic_ncols=True,
               disable=not show_progress or rank != 0)
    with frozen_params(model):
        for x, y, idx in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, precision):
                with torch.no_grad():
                    clean += (model.logits(x, text_features).argmax(1) == y).sum().item()
                x_adv = attack_batch(model, x, y, idx, text_features, settings)
                with torch.no_grad():
                    robust += (model.logits(x_adv, text_features).argmax(1) == y).sum().item()
            n += y.numel()
            bar.update(y.numel())
            bar.set_postfix(clean=f"{100 * clean / n:.2f}", robust=f"{100 * robust / n:.2f}")
    bar.close()
    n, clean, robust = distributed.sum_over_ranks([n, clean, robust])
    model.train(was_training)
    return {"n": n, "clean_acc": 100.0 * clean / max(1, n), "robust_acc": 100.0 * robust / max(1, n),
            "seconds": round(time.time() - t0, 2)}


def format_table(rows: list[dict]) -> str:
    """A small per-dataset table of one run's results (the challenge table is make_table.py)."""
    lines = ["| dataset | n | clean | robust |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['n']} | {r['clean_acc']:.2f} | {r['robust_acc']:.2f} |")
    if rows:
        mc = sum(r["clean_acc"] for r in rows) / len(rows)
        mr = sum(r["robust_acc"] for r in rows) / len(rows)
        lines.append(f"| **mean** | | {mc:.2f} | {mr:.2f} |")
    return "\n".join(lines)
