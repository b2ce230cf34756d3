"""TGA-ZSR: adversarial fine-tuning of CLIP with text-guided attention, then zero-shot evaluation.

Trains the visual tower of CLIP (open_clip ViT-B/32, OpenAI weights) on TinyImageNet with
PGD examples and `L = CE + Alpha · L_AR + Beta · L_AMC` (paper Eq. 6–8, SPEC §1), or any
baseline of the method registry (`--Method`), then evaluates clean and PGD-100 robust
zero-shot accuracy on the test datasets (SPEC §5).

    python tga_zsr.py -c configs/smoke.yaml                      # tiny model, synthetic data, CPU
    python tga_zsr.py --Method TGA-ZSR --Alpha 0.08 --Beta 0.05  # the paper's run (GPU)
    python tga_zsr.py --eval_only --resume checkpoints/<run>      # evaluate a run
"""
from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import torch
import yaml

import datasets as ds_registry
from checkpoint import CHECKPOINT_NAME, load_file, load_visual_weights, resolve_checkpoint
from clip_model import load_clip
from evaluate import append_result, evaluate_dataset, find_done, format_table, read_results
from losses import tga_zsr_loss  # noqa: F401  (public API: from tga_zsr import tga_zsr_loss)
from methods import FrozenMapCache, StepContext, canonical_method, get_method, prepare_model
from params import parse_args
from runtime import environment, resolve_device, resolve_precision, seed_everything
from train import NonFiniteLoss, Trainer

log = logging.getLogger("tga_zsr")


def setup_logging(run_dir: Path | None, rank: int = 0) -> None:
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    h = logging.StreamHandler(sys.stdout)
    h.setFormatter(fmt)
    log.addHandler(h)
    if run_dir is not None and rank == 0:
        fh = logging.FileHandler(run_dir / "log.txt")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    log.propagate = False


def run_name(args, method: str) -> str:
    arch = re.sub(r"[^A-Za-z0-9.-]+", "-", Path(str(args.arch)).stem)
    parts = [method, arch, f"lr{args.learning_rate:g}", f"bs{args.batch_size}", f"ep{args.epochs}",
             f"eps{args.train_eps:g}"]
    if method in ("tga_zsr", "comp_tga", "tga_zsr_visual"):
        parts += [f"a{args.Alpha:g}", f"b{args.Beta:g}", args.Distance_metric]
    if method == "tga_zsr_visual" and args.differentiable_cam:
        parts.append("dcam")
    if args.adaptation_method == "VPT":
        parts.append(f"vpt-{args.method}-p{args.prompt_size}-t{args.add_prompt_size}")
    parts.append(f"seed{args.seed}")
    return "_".join(parts)


def prepare_run_dir(args, method: str) -> tuple[Path, Path | None]:
    """The run folder, and the checkpoint to resume from (or None). Refuses to clobber runs."""
    if args.resume:
        ckpt = resolve_checkpoint(args.resume)
        obj_is_ours = ckpt.name == CHECKPOINT_NAME and (ckpt.parent / "args.yaml").exists()
        if obj_is_ours:
            return ckpt.parent, ckpt
        if not args.eval_only:
            raise SystemExit(f"--resume {args.resume} is not a run of this project (no args.yaml beside it); "
                             f"to evaluate foreign weights use --eval_only --resume FILE")
        return Path(args.output_dir) / (args.name or f"eval_{ckpt.stem.replace('.pth', '')}"), ckpt
    run_dir = Path(args.output_dir) / (args.name or run_name(args, method))
    last = run_dir / CHECKPOINT_NAME
    if last.exists() and not args.eval_only:
        meta = load_file(last).get("meta", {})
        state = "a finished" if meta.get("finished") else "an unfinished"
        raise SystemExit(f"{run_dir} already holds {state} run. Continue or re-evaluate it with "
                         f"--resume {run_dir}, or pick another --name / --output_dir.")
    return run_dir, None


def write_run_header(run_dir: Path, args) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "args.yaml", "w") as f:
        yaml.safe_dump(vars(args), f, sort_keys=True)
    (run_dir / "environment.json").write_text(json.dumps(environment(), indent=2))


def check_datasets(args, train: bool) -> None:
    """Fail before training, not after ten epochs: every requested dataset must be in place."""
    names = ([args.dataset] if train else []) + ([] if args.no_eval else list(args.testdata))
    problems = []
    check = getattr(ds_registry, "check_dataset", None)
    for i, name in enumerate(names):
        split = "train" if (train and i == 0) else "test"
        try:
            canon = ds_registry.canonical_name(name)
            if check is not None:
                check(canon, args.root, split)
        except ds_registry.DatasetError as e:
            problems.append(f"- {name} ({split}): {e}")
    if problems:
        raise SystemExit("dataset check failed before training:\n" + "\n".join(problems))


def subset(data, n: int, seed: int):
    if not n or n >= len(data.dataset):
        return data
    return ds_registry.class_balanced_subset(data, n, seed)


def build_model(args, device):
    pretrained = None if str(args.pretrained).lower() in ("none", "") else args.pretrained
    model = load_clip(args.arch, pretrained, device=device)
    log.info(f"model {model.arch} (QuickGELU={model.quick_gelu}) weights={pretrained}")
    return model


def evaluate_run(args, model, run_dir: Path, checkpoint_desc: str, device, precision: str) -> list[dict]:
    """Evaluate on every --testdata, one results.jsonl line per dataset; skips what is done."""
    results_path = run_dir / "results.jsonl"
    done_rows = read_results(results_path)
    settings = {"attack": args.attack, "norm": args.norm, "eps": args.test_eps, "steps": args.test_numsteps,
                "step_size": args.test_stepsize, "precision": precision, "n_samples": args.n_samples,
                "seed": args.seed, "checkpoint": checkpoint_desc}
    rows = []
    for name in args.testdata:
        canon = ds_registry.canonical_name(name)
        done = find_done(done_rows, canon, settings)
        if done is not None:
            log.info(f"{canon}: already evaluated with these settings, skipped")
            rows.append(done)
            continue
        data = subset(ds_registry.get_dataset(canon, args.root, "test"), args.n_samples, args.seed)
        with torch.no_grad():
            text = model.encode_text(data.prompts)
        res = evaluate_dataset(model, data, text, settings, device, precision, args.test_batch_size, args.workers)
        row = {"dataset": canon, **res, **settings, "method": canonical_method(args.Method),
               "run": run_dir.name, "classes": len(data.classnames)}
        append_result(results_path, row)
        log.info(f"{canon}: clean {res['clean_acc']:.2f}  robust {res['robust_acc']:.2f}  (n={res['n']})")
        rows.append(row)
    log.info("\n" + format_table(rows))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        from make_table import main as table_main
        return table_main(args.table)
    method = get_method(args.Method, args.atten_methods)
    args.Method = method.name
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    train = method.trains and args.epochs > 0 and not args.eval_only

    run_dir, resume_ckpt = prepare_run_dir(args, method.name)
    check_datasets(args, train)
    write_run_header(run_dir, args)
    setup_logging(run_dir)
    log.info(f"run folder {run_dir}  device {device}  precision {precision}")
    seed_everything(args.seed)
    model = build_model(args, device)

    checkpoint_desc = f"pretrained:{args.pretrained}"
    if train:
        train_data = ds_registry.get_dataset(args.dataset, args.root, "train")
        with torch.no_grad():
            text = model.encode_text(train_data.prompts)
        frozen = model.frozen_image_tower() if method.needs_frozen else None  # before any prompts
        prepare_model(model, args, method)
        cache = FrozenMapCache(len(train_data), model.grid_size, device) if args.cache_frozen_maps else None
        ctx = StepContext(model=model, text_features=text, args=args, frozen=frozen, map_cache=cache,
                          prompts=list(train_data.prompts), classnames=list(train_data.classnames))
        writer = None
        if args.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                writer = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                log.warning("--tensorboard: tensorboard is not installed, scalars not written")
        train_precision = method.precision or precision
        if train_precision != precision:
            log.info(f"{method.name} trains in {train_precision} (SPEC §4), whatever --precision says")
        trainer = Trainer(args, model, method, ctx, train_data, run_dir, device, train_precision, writer=writer)
        if resume_ckpt is not None:
            trainer.load_state_dict(load_file(resume_ckpt))
            log.info(f"resumed from {resume_ckpt} at step {trainer.step} (epoch {trainer.epoch})")
        log.info(f"training {method.name}: {trainer.total_steps} steps of batch {args.batch_size}")
        try:
            trainer.fit()
        except NonFiniteLoss as e:
            log.error(str(e))
            return 2
        checkpoint_desc = f"{run_dir / CHECKPOINT_NAME}@step{trainer.step}"
    elif resume_ckpt is not None:
        prepare_model(model, args, method)  # the prompts must exist before they are loaded
        fmt = load_visual_weights(model, resume_ckpt)
        obj = load_file(resume_ckpt)
        checkpoint_desc = f"{resume_ckpt}@step{obj.get('step', 'na')}" if isinstance(obj, dict) else str(resume_ckpt)
        log.info(f"loaded {resume_ckpt} ({fmt})")

    if not args.no_eval:
        evaluate_run(args, model, run_dir, checkpoint_desc, device, precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
