"""Zero-shot evaluation (paper Tables 1-4; docs/evaluation.md): clean top-1 and robust top-1 under one attack or the worst
case over several (PGD / CW / AutoAttack, attacks.py), per dataset, appended to
`<run>/results.jsonl` (results.py) as each dataset finishes; a rerun skips what is done.

`--attack pgd,cw,autoattack` attacks every image with each attack; an image counts as robust only
if it survives all of them, and each attack's own accuracy is recorded too (`attack_acc`). The
attacks run under `--attack_precision` (autocast fp16 / bf16, or fp32), the clean and adversarial
predictions under `--precision`. `--test_eps 2 4` evaluates each budget in turn.

Images: `--transform tga_zsr` uses each dataset's transform of the original code (the image is 224×224 before
the attack); `robustvlm` is RobustVLM's: CIFAR-10/100 and STL-10 stay at their native 32 / 96
pixels, so the perturbation lives there and the bicubic resize to the model's input happens
inside the model (clip_model.ImageTower.preprocess: bicubic, no antialias, as RobustVLM's tensor
Resize), the other sets get open_clip's preprocessing without normalisation (bicubic resize of the
short side to 224, centre crop), not the original's bilinear 256 + crop. `resize` / `crop` apply one of the
original's two transforms to every set (the in-memory world sets too). `--restarts N` attacks from N
random starts (robust: survives all); `--templates ensemble` averages the text features of a template
ensemble per class (datasets/templates.py). `per_sample` keeps each image's outcome (the audit,
docs/audit.md).

Cost per batch: text features once per dataset, the attack's gradients w.r.t. the input only
(every model parameter has requires_grad off during evaluation), model in eval mode.
The random start of PGD is drawn per sample from (seed, sample index), so accuracies do not
depend on the batch size, nor on how torchrun processes share the samples: each rank takes
`range(rank, n, world)` and the correct counts are summed exactly (distributed.py).
An image that cannot be decoded stops the evaluation of its dataset with `CorruptImage` (the
datasets finished before are in results.jsonl), or with `--skip_corrupt` is left out: the row's
`n` counts the images evaluated and `skipped` those left out (datasets/labelled.py).

    python tga_zsr.py --eval_only --resume checkpoints/<run> --testdata cifar10 STL10
    python tga_zsr.py --eval_only --pretrained hf-hub:chs20/fare2-clip --protocol robustvlm
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import transforms as T
from tqdm import tqdm

import datasets
from datasets.common import resize_center_crop, resize_square
from engine import distributed
from attacks import (attack_list, autoattack_batch, ce_loss_sum, compiled_linf_update, cw_loss, linf_update,
                     no_param_grad, per_sample_start, pgd)
from engine.device import autocast, is_compiled, resolve_precision, tf32_active
from engine.results import append_result, find_done, format_table, read_results
from engine.settings import EvalSettings

log = logging.getLogger("tga_zsr")
TRANSFORMS = ("tga_zsr", "robustvlm", "resize", "crop")
NATIVE_RESOLUTION = ("cifar10", "cifar100", "STL10")  # RobustVLM: "compute robustness wrt. original resolution"
# `--transform resize` / `crop`, one for every set: the original code's two transforms (datasets/common.py)
ONE_TRANSFORM = {"resize": resize_square, "crop": resize_center_crop}
# Restart r of PGD / CW draws its starts as seed `seed + r · RESTART_SEED_STRIDE` (restart 0: the plain
# evaluation's). The start generator keeps the low 32 bits of `seed · 1 000 003 + index`: with a stride of
# 2^20 and an odd multiplier, the first 4096 restarts of a seed never repeat one another's starts.
RESTART_SEED_STRIDE = 1 << 20


def eval_transform(kind: str, dataset: str, size: int):
    """The image transform of `--transform kind` for `dataset` (None: the dataset's own)."""
    if kind not in TRANSFORMS:
        raise ValueError(f"unknown --transform '{kind}'; choose from {TRANSFORMS}")
    if kind == "tga_zsr" or dataset not in datasets.TEST_DATASETS:
        return None  # world and synthetic sets are built at their native size (in_memory_transform)
    if kind in ONE_TRANSFORM:
        return ONE_TRANSFORM[kind](size)
    if dataset in NATIVE_RESOLUTION:
        return T.ToTensor()
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor()])


def in_memory_transform(kind: str, size: int):
    """`--transform resize` / `crop` for the sets held as image tensors (world, synthetic), whose builders
    take no transform: the same resize (and crop) on the tensor, without the PIL-to-tensor step."""
    if kind not in ONE_TRANSFORM:
        return None
    return T.Compose(ONE_TRANSFORM[kind](size).transforms[:-1])


def load_test_data(e: EvalSettings, name: str, transform: str, size: int):
    """The test split of `name` as the evaluation reads it: `transform` (a `--transform` value), the
    decoded cache where it applies, the seeded class-balanced subset of `e.n_samples`."""
    canon = datasets.canonical_name(name)
    data = datasets.get_dataset(canon, e.root, "test", transform=eval_transform(transform, canon, size))
    on_tensors = in_memory_transform(transform, size) if canon not in datasets.TEST_DATASETS else None
    if on_tensors is not None:
        data = replace(data, dataset=datasets.Transformed(data.dataset, on_tensors))
    if e.decoded_cache and canon == datasets.canonical_name(e.dataset) \
            and transform == "tga_zsr" and size == 224:  # the training set's test split
        data = with_decoded_cache(data, "test", e.decoded_cache, e.workers, e.seed)
    return datasets.class_balanced_subset(data, e.n_samples, e.seed)


def class_features(model, data, templates: str = "single") -> torch.Tensor:
    """`[C, D]` normalised text features of `data`'s classes: its prompts (`single`), or per class the
    mean of the normalised features of its template ensemble, normalised again (`ensemble`: CLIP's
    prompt ensembling; datasets/templates.py)."""
    with torch.no_grad():
        if templates == "single":
            return model.encode_text(data.prompts)
        if templates != "ensemble":
            raise ValueError(f"unknown --templates '{templates}'; choose single or ensemble")
        per_class = datasets.ensemble_prompts(data)
        feats = model.encode_text([p for prompts in per_class for p in prompts])
        means = [f.mean(0) for f in torch.split(feats, [len(p) for p in per_class])]
        return F.normalize(torch.stack(means), dim=-1)


def attack_batch(model, x, y, idx, text_features, settings: dict, attack: str | None = None,
                 notes: list | None = None, restart: int = 0) -> torch.Tensor:
    """Adversarial images for one batch under `settings` (eps and step size in 1/255 units) and one
    `attack` (default: `settings["attack"]`), from the random starts of `restart` (PGD / CW).
    AutoAttack's check messages go to `notes`.

    `settings["random_start"]` (default True) switches PGD's uniform start off (tests)."""
    attack = attack or settings.get("attack", "pgd")
    eps, steps = settings["eps"] / 255.0, settings["steps"]
    if eps == 0 or (steps == 0 and attack != "autoattack"):
        return x
    if attack == "autoattack":
        return autoattack_batch(model, x, y, text_features, eps, settings, notes)
    alpha = settings["step_size"] / 255.0
    loss_of = cw_loss if attack == "cw" else ce_loss_sum

    def objective(xa):
        return loss_of(model.logits(xa, text_features), y)

    if settings.get("random_start", True):
        init = per_sample_start(x, idx, eps, settings["norm"], settings["seed"] + restart * RESTART_SEED_STRIDE)
    else:
        init = torch.zeros_like(x)
    # under --compile the tower is compiled, and so is the attack's update (the 100-step loop is the hot path)
    update = compiled_linf_update() if is_compiled(model.image_tower) else linf_update
    return x + pgd(objective, x, eps, alpha, steps, norm=settings["norm"], init=init, update=update)


def strided(n: int, batch_size: int, stride: int) -> list[int]:
    """Indices of every `stride`-th batch of `batch_size` (TeCoA's validation: stride 20)."""
    return [i for i in range(n) if (i // batch_size) % stride == 0]


def evaluate_dataset(model, data, text_features, settings: dict, device, precision: str,
                     batch_size: int = 256, workers: int = 0, show_progress: bool = True, save_adv: int = 0,
                     skip_corrupt: bool = False, root: str = "<root>", per_sample: bool = False) -> dict:
    """Clean and robust top-1 (in %) of `model` on `data` (a ZeroShotData); robust is the worst case
    over `settings["attack"]` (one name or a comma list) and its `restarts` (PGD / CW), each attack's
    own accuracy in `attack_acc`.

    Under torchrun each rank evaluates its shard (`batch_size` per rank) and the counts are summed.
    `save_adv` > 0 returns the first that many images with their worst-case adversarial images
    (`adv`: the first attack's that fooled the model, else the last attack's). Unreadable images
    raise `CorruptImage`, or are left out and counted (`skipped`) with `skip_corrupt`. `per_sample`: also
    each image's outcome (`per_sample`: clean, robust and each attack's, one character per position in
    `data.dataset`: "1" correct, "0" wrong, "-" not evaluated), what a paired comparison needs."""
    rank, world = distributed.rank_world()
    attacks = attack_list(settings.get("attack", "pgd"))
    restarts = settings.get("restarts") or 1
    attack_precision = settings.get("attack_precision") or precision
    samples = datasets.Indexed(data.dataset)
    stride = settings.get("batch_stride")
    if stride:  # "KxB": every K-th batch of B images
        k, b = (int(v) for v in str(stride).split("x"))
        samples = Subset(samples, strided(len(samples), b, k))
    if world > 1:  # no DistributedSampler: its padding would count some samples twice
        samples = Subset(samples, distributed.shard_indices(len(samples), rank, world))
    loader = DataLoader(samples, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
                        collate_fn=datasets.collate_indexed)
    was_training = model.training
    model.eval()
    n = clean = robust = skipped = 0
    per_attack = {a: 0 for a in attacks}
    notes: list[str] = []
    kept: dict[str, list] = {"x": [], "x_adv": [], "y": [], "index": [], "fooled_by": []}
    # per position: 0 not evaluated, 1 wrong, 2 correct (a sum over the ranks, which evaluate disjoint positions)
    marks = {k: torch.zeros(len(data.dataset), dtype=torch.int64) for k in ("clean", "robust", *attacks)} \
        if per_sample else None
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
            x, y = datasets.images_to(x, device, data.on_device), y.to(device, non_blocking=True)
            with torch.no_grad(), autocast(device, precision):
                clean_ok = model.logits(x, text_features).argmax(1) == y
            clean += clean_ok.sum().item()
            survives = torch.ones_like(y, dtype=torch.bool)
            worst, fooled_by = None, torch.full_like(y, -1)
            for j, attack in enumerate(attacks):
                holds = torch.ones_like(survives)  # survives every restart of this attack
                for r in range(1 if attack == "autoattack" else restarts):  # APGD restarts inside the library
                    with autocast(device, attack_precision):
                        x_adv = attack_batch(model, x, y, idx, text_features, settings, attack, notes, restart=r)
                    with torch.no_grad(), autocast(device, precision):
                        ok = model.logits(x_adv, text_features).argmax(1) == y
                    if save_adv:
                        first = (~ok) & (fooled_by < 0)
                        fooled_by[first] = j
                        worst = x_adv.clone() if worst is None else torch.where(first[:, None, None, None], x_adv,
                                                                                worst)
                    holds &= ok
                per_attack[attack] += holds.sum().item()
                if marks is not None:
                    marks[attack][idx] = 1 + holds.long().cpu()
                survives &= holds
            robust += survives.sum().item()
            if marks is not None:
                marks["clean"][idx], marks["robust"][idx] = 1 + clean_ok.long().cpu(), 1 + survives.long().cpu()
            have = sum(len(v) for v in kept["y"])
            if save_adv and have < save_adv:
                take = save_adv - have
                for key, value in (("x", x), ("x_adv", worst), ("y", y), ("index", idx), ("fooled_by", fooled_by)):
                    kept[key].append(value[:take].detach().cpu())
            n += y.numel()
            bar.update(y.numel())
            bar.set_postfix(clean=f"{100 * clean / n:.2f}", robust=f"{100 * robust / n:.2f}")
    bar.close()
    counts = distributed.sum_over_ranks([n, clean, robust, skipped] + [per_attack[a] for a in attacks])
    n, clean, robust, skipped = counts[:4]
    model.train(was_training)
    pct = lambda c: 100.0 * c / max(1, n)  # noqa: E731
    out = {"n": n, "clean_acc": pct(clean), "robust_acc": pct(robust),
           "attack_acc": {a: pct(c) for a, c in zip(attacks, counts[4:])}, "seconds": round(time.time() - t0, 2),
           "skipped": skipped}
    if notes:
        out["aa_checks"] = notes
    if marks is not None:
        text = {k: "".join("-01"[v] for v in distributed.sum_over_ranks(m.tolist())) for k, m in marks.items()}
        out["per_sample"] = {"clean": text["clean"], "robust": text["robust"], "attack": {a: text[a] for a in attacks}}
    if save_adv and kept["y"]:
        out["adv"] = {k: torch.cat(v) for k, v in kept.items()}
        out["adv"]["attacks"] = list(attacks)
    return out


def with_decoded_cache(data, split: str, cache_dir: str, workers: int, seed: int):
    """`data` from its decoded cache (`--decoded_cache`): under torchrun rank 0 builds a missing cache
    while the other ranks wait, then every rank maps the same files."""
    if not distributed.is_main():
        distributed.barrier()
    data = datasets.use_decoded_cache(data, split, cache_dir, workers, seed)
    if distributed.is_main():
        distributed.barrier()
    return data


def save_adversarial(run_dir: Path, dataset: str, settings: dict, adv: dict) -> Path:
    """`<run>/adv/<dataset>_<attacks>_eps<ε>_<attack precision>.pt`: clean and adversarial images in
    [0, 1] (fp32), labels, dataset indices and the attack that fooled each (-1: none), with the
    settings (RobustBench asks for the adversarial examples of an external evaluation)."""
    folder = Path(run_dir) / "adv"
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{settings['attack'].replace(',', '+')}_eps{settings['eps']:g}_{settings['attack_precision']}"
    path = folder / f"{dataset}_{tag}.pt"
    torch.save({**adv, "settings": {k: v for k, v in settings.items() if v is not None}}, path)
    return path


def row_settings(e: EvalSettings, eps: float, checkpoint: str, device, precision: str) -> dict:
    """The settings of `e`'s evaluation at `eps` as its results rows record them (what finds them done).
    --tf32 on a GPU is part of the precision a result was measured in (its own table, never skipped as
    done). The attack's precision is resolved first: TF32 is a matmul setting, not another autocast
    ("amp+tf32" is still fp16 autocast; engine.device.autocast reads the label's first part)."""
    attack_precision = resolve_precision(e.attack_precision or precision, device)
    tf32 = "+tf32" if tf32_active(device) else ""
    return e.setting(eps, checkpoint, precision + tf32, attack_precision + tf32)


def evaluate_run(e: EvalSettings, model, run_dir: Path, checkpoint_desc: str, device, precision: str,
                 method: str, label: str, stopped: str | None = None, partial: dict | None = None,
                 per_sample: bool = False) -> list[dict]:
    """Evaluate on every test dataset and every ε of `e`, one results.jsonl line per dataset and ε;
    skips what is done. Each row carries the settings, the method's name and its display `label`, and
    the marks of what it is not: `stopped` ('stopped at step N of M': weights of an unfinished training)
    and `partial` ({dataset: 'partial (30 / 27 000)'}: a test set short of its release, --allow_partial).
    A row measured on a partial set is not done once the set is whole. With `per_sample` each image's
    outcome is kept too (evaluate_dataset), and a row without them is redone."""
    results_file = Path(run_dir) / "results.jsonl"
    done_rows = distributed.broadcast_from_main(read_results(results_file, log.warning))  # every rank: same sets
    size = model.image_tower.image_size[0]
    rows = []
    for eps in e.test_eps:
        settings = row_settings(e, eps, checkpoint_desc, device, precision)
        for name in e.testdata:
            canon = datasets.canonical_name(name)
            marks = {**({"stopped": stopped} if stopped else {}),
                     **({"partial": partial[canon]} if partial and canon in partial else {})}
            done = find_done(done_rows, canon, settings)
            if done is not None and per_sample and "per_sample" not in done:
                done = None
            if done is not None and done.get("partial") == marks.get("partial"):
                log.info(f"{canon} (ε {eps:g}): already evaluated with these settings, skipped")
                rows.append(done)
                continue
            data = load_test_data(e, canon, settings["transform"], size)
            text = class_features(model, data, settings["templates"])
            res = evaluate_dataset(model, data, text, settings, device, settings["precision"], e.test_batch_size,
                                   e.workers,
                                   save_adv=e.save_adv, skip_corrupt=e.skip_corrupt, root=str(e.root),
                                   per_sample=per_sample)
            adv = res.pop("adv", None)
            row = {"dataset": canon, **res, **settings, "method": method, "label": label, "run": Path(run_dir).name,
                   "classes": len(data.classnames), "arch": model.arch, "pretrained": str(e.pretrained),
                   "batch_size": e.test_batch_size, **marks}
            if distributed.is_main():
                append_result(results_file, row)
                if adv is not None:
                    log.info(f"{canon}: {len(adv['y'])} adversarial examples -> "
                             f"{save_adversarial(run_dir, canon, settings, adv)}")
            for msg in res.get("aa_checks", []):
                log.warning(f"{canon}: AutoAttack: {msg}")
            per = "  ".join(f"{a} {v:.2f}" for a, v in res["attack_acc"].items()) if len(res["attack_acc"]) > 1 else ""
            log.info(f"{canon}: clean {res['clean_acc']:.2f}  robust {res['robust_acc']:.2f}  (n={res['n']})"
                     + (f"  [{per}]" if per else "") + "".join(f"  {m}" for m in marks.values()))
            rows.append(row)
    log.info("\n" + format_table(rows))
    return rows
