"""TGA-ZSR: adversarial fine-tuning of CLIP with text-guided attention, then zero-shot evaluation.

Trains the visual tower of CLIP (open_clip ViT-B/32, OpenAI weights) on TinyImageNet with
PGD examples and `L = CE + Alpha · L_AR + Beta · L_AMC` (paper Eq. 6–8, SPEC §1), or any
baseline of the method registry (`--Method`), then evaluates clean and PGD-100 robust
zero-shot accuracy on the test datasets (SPEC §5).

    python tga_zsr.py -c configs/synthetic.yaml                      # tiny model, synthetic data, CPU
    python tga_zsr.py --Method TGA-ZSR --Alpha 0.08 --Beta 0.05  # the paper's run (GPU)
    python tga_zsr.py --eval_only --resume checkpoints/<run>      # evaluate a run
    python tga_zsr.py --visualize --resume checkpoints/<run>      # attention grid (visualize.py)
    torchrun --nproc_per_node 4 tga_zsr.py --Method TGA-ZSR       # 4 GPUs (distributed.py)
"""
from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import torch
import yaml
from torch.distributed.elastic.multiprocessing.errors import record

import datasets as ds_registry
import distributed
from checkpoint import CHECKPOINT_NAME, checkpoint_id, load_file, load_visual_weights, resolve_checkpoint
from clip_model import load_clip
from evaluate import append_result, evaluate_dataset, find_done, format_table, read_results
from losses import tga_zsr_loss  # noqa: F401  (public API: from tga_zsr import tga_zsr_loss)
from methods import FrozenMapCache, StepContext, canonical_method, get_method, prepare_model
from params import parse_args
from runtime import environment, resolve_precision, seed_everything
from train import NonFiniteLoss, Trainer

log = logging.getLogger("tga_zsr")


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is now (tests and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _):
        pass


def setup_logging(run_dir: Path | None, rank: int = 0, world: int = 1) -> None:
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    for old in log.handlers:
        old.close()
    log.handlers.clear()
    fmt = logging.Formatter("%(asctime)s " + (f"[rank {rank}/{world}] " if world > 1 else "") + "%(message)s",
                            "%H:%M:%S")
    h = _CurrentStdout()
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
    if args.eval_only:  # pretrained weights only (e.g. CLIP itself): named after what is evaluated
        arch = re.sub(r"[^A-Za-z0-9.-]+", "-", Path(str(args.arch)).stem)
        weights = re.sub(r"[^A-Za-z0-9.-]+", "-", Path(str(args.pretrained)).stem.replace(".pth", ""))
        return Path(args.output_dir) / (args.name or f"eval_{arch}_{weights}"), None
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
    # An evaluation of a training run keeps the run's own args.yaml (what --resume continues from).
    prefix = "eval_" if args.eval_only and (run_dir / "args.yaml").exists() else ""
    with open(run_dir / f"{prefix}args.yaml", "w") as f:
        yaml.safe_dump(vars(args), f, sort_keys=True)
    (run_dir / f"{prefix}environment.json").write_text(json.dumps(environment(), indent=2))


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
    try:
        model = load_clip(args.arch, pretrained, device=device)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # wrong arch / activation / file: say so
        raise SystemExit(f"--arch {args.arch} --pretrained {args.pretrained}: {e}") from e
    log.info(f"model {model.arch} (QuickGELU={model.quick_gelu}) weights={pretrained}")
    return model


def eval_settings(args, checkpoint_desc: str, precision: str) -> dict:
    """The settings a results.jsonl row is keyed by (ε and step size in 1/255 units)."""
    steps, step_size = args.test_numsteps, args.test_stepsize
    if args.attack == "autoattack":  # APGD: 100 iterations, adaptive step size (the library's values)
        steps, step_size = 100, None
    return {"attack": args.attack, "norm": args.norm, "eps": args.test_eps, "steps": steps, "step_size": step_size,
            "precision": precision, "n_samples": args.n_samples, "seed": args.seed, "checkpoint": checkpoint_desc}


def evaluate_run(args, model, run_dir: Path, checkpoint_desc: str, device, precision: str,
                 method_label: str | None = None) -> list[dict]:
    """Evaluate on every --testdata, one results.jsonl line per dataset; skips what is done."""
    results_path = run_dir / "results.jsonl"
    done_rows = distributed.broadcast_from_main(read_results(results_path))  # every rank skips the same sets
    settings = eval_settings(args, checkpoint_desc, precision)
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
        row = {"dataset": canon, **res, **settings, "method": method_label or canonical_method(args.Method),
               "run": run_dir.name, "classes": len(data.classnames), "arch": model.arch,
               "pretrained": str(args.pretrained), "batch_size": args.test_batch_size}
        if distributed.is_main():
            append_result(results_path, row)
        log.info(f"{canon}: clean {res['clean_acc']:.2f}  robust {res['robust_acc']:.2f}  (n={res['n']})")
        rows.append(row)
    log.info("\n" + format_table(rows))
    return rows


def pretrained_id(pretrained) -> str:
    p = Path(str(pretrained))
    return f"pretrained:{checkpoint_id(p)}" if p.is_file() else f"pretrained:{pretrained}"


def eval_method_label(args, argv, obj, ckpt) -> str:
    """The `method` of an evaluation's results: --Method if given (CLI or -c file), else the
    checkpoint's own, else `clip` for pretrained weights alone, else the file's name."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    given = any(t == "--Method" or t.startswith("--Method=") for t in tokens)
    if not given and args.config:
        given = "Method" in (yaml.safe_load(Path(args.config).read_text()) or {})
    if given:
        return canonical_method(args.Method)
    meta = obj.get("meta") if isinstance(obj, dict) and isinstance(obj.get("meta"), dict) else {}
    if meta.get("method"):
        return meta["method"]
    if ckpt is None:
        return "clip"
    return Path(ckpt).name.split(".")[0]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--visualize" in argv:  # figures have their own flags: see visualize.py --help
        from visualize import main as visualize_main
        return visualize_main([a for a in argv if a != "--visualize"])
    args = parse_args(argv)
    if args.table:
        from make_table import main as table_main
        return table_main(args.table)
    dist_info = distributed.init_distributed(args.device, args.dist_timeout)
    try:
        return run(args, dist_info, argv)
    except BaseException as e:
        if dist_info.world > 1 and not (isinstance(e, SystemExit) and e.code in (0, None)):
            # torchrun stops the other ranks when this one exits non-zero; say which one failed.
            log.error(f"rank {dist_info.rank}/{dist_info.world} failed: {type(e).__name__}: {e}",
                      exc_info=not isinstance(e, SystemExit))
        raise
    finally:
        distributed.cleanup(dist_info)


def run(args, dist_info: distributed.DistInfo, argv=None) -> int:
    """Train (unless eval-only or CLIP) and evaluate, as one process or one torchrun rank."""
    method = get_method(args.Method, args.atten_methods)
    args.Method = method.name
    device = dist_info.device
    precision = resolve_precision(args.precision, device)
    train = method.trains and args.epochs > 0 and not args.eval_only

    run_dir, resume_ckpt = prepare_run_dir(args, method.name)
    check_datasets(args, train)
    if dist_info.main:
        write_run_header(run_dir, args)
    setup_logging(run_dir, dist_info.rank, dist_info.world)
    log.info(f"run folder {run_dir}  device {device}  precision {precision}"
             + (f"  {dist_info.world} processes" if dist_info.world > 1 else ""))
    seed_everything(args.seed)
    model = build_model(args, device)

    checkpoint_desc = pretrained_id(args.pretrained)
    method_label = None
    if train:
        train_data = ds_registry.get_dataset(args.dataset, args.root, "train")
        with torch.no_grad():
            text = model.encode_text(train_data.prompts)
        frozen = model.frozen_image_tower() if method.needs_frozen else None  # before any prompts
        prepare_model(model, args, method)
        if args.compile:  # in place (nn.Module.compile): state dict keys unchanged; after the frozen copy
            for tower in (model.image_tower, frozen):
                if tower is not None:
                    tower.compile()
        cache = FrozenMapCache(len(train_data), model.grid_size, device) if args.cache_frozen_maps else None
        ctx = StepContext(model=model, text_features=text, args=args, frozen=frozen, map_cache=cache,
                          prompts=list(train_data.prompts), classnames=list(train_data.classnames))
        distributed.seed_rank_streams(args.seed)  # model built alike on all ranks; PGD starts differ
        writer = None
        if args.tensorboard and dist_info.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
                writer = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                log.warning("--tensorboard: tensorboard is not installed, scalars not written")
        train_precision = method.precision or precision
        if train_precision != precision:
            log.info(f"{method.name} trains in {train_precision} (SPEC §4), whatever --precision says")
        trainer = Trainer(args, model, method, ctx, train_data, run_dir, device, train_precision,
                          rank=dist_info.rank, world=dist_info.world, writer=writer)
        if resume_ckpt is not None:
            trainer.load_state_dict(load_file(resume_ckpt))
            log.info(f"resumed from {resume_ckpt} at step {trainer.step} (epoch {trainer.epoch})")
        log.info(f"training {method.name}: {trainer.total_steps} steps of batch {args.batch_size}"
                 + (f" ({trainer.micro_batch} per micro-batch: {dist_info.world} processes x "
                    f"{trainer.accum_steps} accumulation steps)" if trainer.micro_batch != args.batch_size else ""))
        try:
            trainer.fit()
        except NonFiniteLoss as e:
            log.error(str(e))
            return 2
        checkpoint_desc = f"{CHECKPOINT_NAME}@step{trainer.step}"
    elif resume_ckpt is not None:
        prepare_model(model, args, method)  # the prompts must exist before they are loaded
        obj = load_file(resume_ckpt)
        fmt = load_visual_weights(model, resume_ckpt, obj)
        checkpoint_desc = checkpoint_id(resume_ckpt, obj)
        method_label = eval_method_label(args, argv, obj, resume_ckpt)
        log.info(f"loaded {resume_ckpt} ({fmt}) as {checkpoint_desc}")
    elif args.eval_only:
        method_label = eval_method_label(args, argv, None, None)

    if not args.no_eval:
        if args.compile and not train:
            model.image_tower.compile()
        evaluate_run(args, model, run_dir, checkpoint_desc, device, precision, method_label)
    return 0


if __name__ == "__main__":
    # record: under torchrun, the failing rank's traceback goes into torchrun's error summary
    sys.exit(record(main)())
