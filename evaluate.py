"""Zero-shot evaluation (SPEC §5): clean top-1 and robust top-1 under PGD / CW / AutoAttack
(attacks.py), per dataset, appended to `<run>/results.jsonl` (results.py) as each dataset
finishes; a rerun skips what is done.

Cost per batch: text features once per dataset, the attack's gradients w.r.t. the input only
(every model parameter has requires_grad off during evaluation), model in eval mode.
The random start of PGD is drawn per sample from (seed, sample index), so accuracies do not
depend on the batch size, nor on how torchrun processes share the samples: each rank takes
`range(rank, n, world)` and the correct counts are summed exactly (distributed.py).
An image that cannot be decoded stops the evaluation of its dataset with `CorruptImage` (the
datasets finished before are in results.jsonl), or with `--skip_corrupt` is left out: the row's
`n` counts the images evaluated and `skipped` those left out (datasets/labelled.py).

    python tga_zsr.py --eval_only --resume checkpoints/<run> --testdata cifar10 STL10
    python tga_zsr.py --table checkpoints/run_a checkpoints/run_b
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import datasets
import distributed
from attacks import autoattack_batch, ce_loss_sum, cw_loss, no_param_grad, per_sample_start, pgd
from device import autocast, tf32_active
from results import append_result, find_done, format_table, read_results

log = logging.getLogger("tga_zsr")


def attack_batch(model, x, y, idx, text_features, settings: dict) -> torch.Tensor:
    """Adversarial images for one batch under `settings` (eps and step size in 1/255 units).

    `settings["random_start"]` (default True) switches PGD's uniform start off (tests)."""
    eps, steps = settings["eps"] / 255.0, settings["steps"]
    if eps == 0 or steps == 0:
        return x
    if settings["attack"] == "autoattack":
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
                     batch_size: int = 256, workers: int = 0, show_progress: bool = True,
                     skip_corrupt: bool = False, root: str = "<root>") -> dict:
    """Clean and robust top-1 (in %) of `model` on `data` (a ZeroShotData), over the `n` images read.

    Under torchrun each rank evaluates its shard (`batch_size` per rank) and the counts are summed.
    Unreadable images raise `CorruptImage`, or are left out and counted (`skipped`) with `skip_corrupt`."""
    rank, world = distributed.rank_world()
    samples = datasets.Indexed(data.dataset)
    if world > 1:  # no DistributedSampler: its padding would count some samples twice
        samples = Subset(samples, distributed.shard_indices(len(samples), rank, world))
    loader = DataLoader(samples, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
                        collate_fn=datasets.collate_indexed)
    was_training = model.training
    model.eval()
    n = clean = robust = skipped = 0
    t0 = time.time()
    bar = tqdm(total=len(samples), unit="img", desc=f"eval {data.name}", dynamic_ncols=True,
               disable=not show_progress or rank != 0)
    with no_param_grad(model):
        for x, y, idx, unreadable in loader:
            if unreadable and not skip_corrupt:
                raise datasets.CorruptImage(data.name, unreadable, root)
            for u in unreadable:
                log.warning(f"{data.name}: skipped unreadable image {u.path or f'#{u.index}'} ({u.reason})")
            skipped += len(unreadable)
            bar.update(len(unreadable))
            if not len(x):
                continue
            x, y = datasets.images_to(x, device), y.to(device, non_blocking=True)
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
    n, clean, robust, skipped = distributed.sum_over_ranks([n, clean, robust, skipped])
    model.train(was_training)
    return {"n": n, "clean_acc": 100.0 * clean / max(1, n), "robust_acc": 100.0 * robust / max(1, n),
            "seconds": round(time.time() - t0, 2), "skipped": skipped}


def eval_settings(args, checkpoint_desc: str, precision: str) -> dict:
    """The settings a results.jsonl row is keyed by (ε and step size in 1/255 units)."""
    steps, step_size = args.test_numsteps, args.test_stepsize
    if args.attack == "autoattack":  # APGD: 100 iterations, adaptive step size (the library's values)
        steps, step_size = 100, None
    return {"attack": args.attack, "norm": args.norm, "eps": args.test_eps, "steps": steps, "step_size": step_size,
            "precision": precision, "n_samples": args.n_samples, "seed": args.seed, "checkpoint": checkpoint_desc}


def evaluate_run(args, model, run_dir: Path, checkpoint_desc: str, device, precision: str,
                 method: str, label: str) -> list[dict]:
    """Evaluate on every --testdata, one results.jsonl line per dataset; skips what is done.
    Each row carries the settings, the method's name and its display `label`."""
    results_file = Path(run_dir) / "results.jsonl"
    done_rows = distributed.broadcast_from_main(read_results(results_file, log.warning))  # every rank: same sets
    # --tf32 on a GPU is part of the precision a result was measured in (its own table, never skipped as done)
    settings = eval_settings(args, checkpoint_desc, precision + ("+tf32" if tf32_active(device) else ""))
    rows = []
    for name in args.testdata:
        canon = datasets.canonical_name(name)
        done = find_done(done_rows, canon, settings)
        if done is not None:
            log.info(f"{canon}: already evaluated with these settings, skipped")
            rows.append(done)
            continue
        data = datasets.class_balanced_subset(datasets.get_dataset(canon, args.root, "test"), args.n_samples,
                                              args.seed)
        with torch.no_grad():
            text = model.encode_text(data.prompts)
        res = evaluate_dataset(model, data, text, settings, device, precision, args.test_batch_size, args.workers,
                               skip_corrupt=getattr(args, "skip_corrupt", False), root=str(args.root))
        row = {"dataset": canon, **res, **settings, "method": method, "label": label, "run": Path(run_dir).name,
               "classes": len(data.classnames), "arch": model.arch, "pretrained": str(args.pretrained),
               "batch_size": args.test_batch_size}
        if distributed.is_main():
            append_result(results_file, row)
        log.info(f"{canon}: clean {res['clean_acc']:.2f}  robust {res['robust_acc']:.2f}  (n={res['n']})")
        rows.append(row)
    log.info("\n" + format_table(rows))
    return rows
