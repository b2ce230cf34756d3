"""TGA-ZSR: adversarial fine-tuning of CLIP with text-guided attention, then zero-shot evaluation.

Trains the visual tower of CLIP (open_clip ViT-B/32, OpenAI weights) on TinyImageNet with
PGD examples and `L = CE + Alpha · L_AR + Beta · L_AMC` (paper Eq. 6–8, SPEC §1), or any
baseline of the method registry (`--Method`), then evaluates clean and PGD-100 robust
zero-shot accuracy on the test datasets (SPEC §5). This file only wires the pieces together:
params (flags), run_folder, clip_model, methods, train, evaluate, results, visualize.

    python tga_zsr.py -c configs/synthetic.yaml                      # tiny model, synthetic data, CPU
    python tga_zsr.py --Method TGA-ZSR --Alpha 0.08 --Beta 0.05      # the paper's run (GPU)
    python tga_zsr.py --eval_only --resume checkpoints/<run>         # evaluate a run
    python tga_zsr.py --table checkpoints/<run_a> checkpoints/<run_b>  # the challenge table
    python tga_zsr.py --leaderboard checkpoints/                     # ranking of the model cards
    python tga_zsr.py --export checkpoints/<run> --format hf_hub      # a full CLIP for plain open_clip
    python tga_zsr.py --visualize --resume checkpoints/<run>         # figures (visualize.py --help)
    torchrun --nproc_per_node 4 tga_zsr.py --Method TGA-ZSR          # 4 GPUs (distributed.py)
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

import datasets
from engine import distributed
import visualize
from reports.plots import plot_loss_curve
from engine.checkpoint import CHECKPOINT_NAME, checkpoint_id, load_file, load_visual_weights
from engine.model import build_model, is_weights_folder
from engine.device import compile_module, log_recompiles, resolve_precision, seed_everything, set_tf32
from engine.evaluate import evaluate_run, with_decoded_cache
from reports.export import export_run, model_description
from reports.model_card import leaderboard_main, write_card
from methods.losses import tga_zsr_loss  # noqa: F401  (public API: from tga_zsr import tga_zsr_loss)
from methods import DEFAULT_METHOD_NAME, build_method, get_method, method_label, prepare_model
from engine.settings import parse_args, validate
from engine.results import table_main
from engine.run_folder import (RunLock, check_resume, environment, prepare_run_dir, refuse_to_overwrite, setup_logging,
                        write_run_header)
from engine.train import NonFiniteLoss, RunStopped, StopSignals, Trainer

log = logging.getLogger("tga_zsr")


def check_datasets(args, train: bool) -> None:
    """Fail before training, not after ten epochs: every requested dataset must be in place."""
    names = ([args.dataset] if train else []) + ([] if args.no_eval else list(args.testdata))
    problems = []
    for i, name in enumerate(names):
        split = "train" if (train and i == 0) else "test"
        try:
            info = datasets.check_dataset(datasets.canonical_name(name), args.root, split)
        except datasets.CorruptImage as e:
            if not args.skip_corrupt:
                problems.append(f"- {name} ({split}): {e}")
            continue
        except datasets.DatasetError as e:
            problems.append(f"- {name} ({split}): {e}")
            continue
        if split == "test" and args.n_samples > info["count"]:
            problems.append(f"- {name} ({split}): --n_samples {args.n_samples} is more than its {info['count']} "
                            f"images; use at most {info['count']}, or 0 for all of them")
    if problems:
        raise SystemExit("dataset check failed before training:\n" + "\n".join(problems))


def pretrained_id(pretrained) -> str:
    p = Path(str(pretrained))
    return f"pretrained:{checkpoint_id(p)}" if p.is_file() else f"pretrained:{pretrained}"


def eval_method(args, obj, ckpt) -> str:
    """The method an evaluation's results are filed under: --Method if given (CLI, -c file or the
    run's args.yaml), else the checkpoint's own, else `clip` for pretrained weights alone, else the
    file's name."""
    if args.Method:
        return get_method(args.Method, args.atten_methods).name
    meta = obj.get("meta") if isinstance(obj, dict) and isinstance(obj.get("meta"), dict) else {}
    if meta.get("method"):
        return meta["method"]
    if ckpt is None and is_weights_folder(args.pretrained):  # a published robust CLIP: named after its folder / repo
        return Path(str(args.pretrained).split(":", 1)[-1]).name
    return "clip" if ckpt is None else Path(ckpt).name.split(".")[0]


def tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional dependency
    except ImportError:
        log.warning("--tensorboard: tensorboard is not installed, scalars not written")
        return None
    return SummaryWriter(str(run_dir / "tb"))


def loss_curve_callback(run_dir: Path):
    """What the trainer calls after each epoch: `<run>/loss_curve.png`; a figure never stops training."""
    def callback():
        try:
            plot_loss_curve(run_dir)
        except Exception as e:  # noqa: BLE001  (any failure of a figure is only a warning)
            log.warning(f"loss curve not written ({type(e).__name__}: {e}); training continues")
    return callback


def train(args, model, run_dir: Path, resume_ckpt, dist_info, precision: str,
          stop: StopSignals) -> tuple[str | None, int]:
    """Fine-tune `model` in place with the method of `args`; returns (the checkpoint's description,
    exit code): (None, code) when training stopped early (a non-finite loss, a signal, a fault)."""
    device = dist_info.device
    train_data = datasets.get_dataset(args.dataset, args.root, "train")
    if args.decoded_cache:
        train_data = with_decoded_cache(train_data, "train", args)
    with torch.no_grad():
        text = model.encode_text(train_data.prompts)
    method = build_method(args, model, text, list(train_data.prompts), list(train_data.classnames), len(train_data))
    if args.compile:  # in place: state dict keys unchanged; after the frozen copy
        for tower in (model.image_tower, method.frozen):
            if tower is not None:
                compile_module(tower)
    distributed.seed_rank_streams(args.seed)  # model built alike on all ranks; PGD starts differ
    writer = tensorboard_writer(run_dir) if args.tensorboard and dist_info.main else None
    train_precision = method.precision or precision
    if train_precision != precision:
        log.info(f"{method.name} trains in {train_precision} (SPEC §4), whatever --precision says")
    trainer = Trainer(args, model, method, train_data, run_dir, device, train_precision, rank=dist_info.rank,
                      world=dist_info.world, writer=writer, on_epoch_end=loss_curve_callback(run_dir),
                      should_stop=lambda: stop.received and stop.name)
    if resume_ckpt is not None:
        trainer.load_state_dict(load_file(resume_ckpt, "--resume"))
        log.info(f"resumed from {resume_ckpt} at step {trainer.step} (epoch {trainer.epoch})")
    log.info(f"training {method.name}: {trainer.total_steps} steps of batch {args.batch_size}"
             + (f" ({trainer.micro_batch} per micro-batch: {dist_info.world} processes x "
                f"{trainer.accum_steps} accumulation steps)" if trainer.micro_batch != args.batch_size else ""))
    try:
        with stop.deferred():
            trainer.fit()
    except NonFiniteLoss as e:
        log.error(str(e))
        return None, 2
    except RunStopped as e:
        log.error(str(e))
        return None, e.code
    if stop.received:  # arrived during the last step: the final checkpoint is on disk
        log.error(f"{stop.name}: training finished (step {trainer.step}); evaluation not started. "
                  f"Evaluate with: python tga_zsr.py --resume {run_dir}")
        return None, stop.exit_code
    return f"{CHECKPOINT_NAME}@step{trainer.step}", 0


def run(args, dist_info: distributed.DistInfo, stop: StopSignals) -> int:
    """Train (unless eval-only or CLIP) and evaluate, as one process or one torchrun rank.
    Everything that can be checked is checked before the run folder is written."""
    validate(args, dist_info.world)
    method_cls = get_method(args.Method or DEFAULT_METHOD_NAME, args.atten_methods)
    device = dist_info.device
    precision = resolve_precision(args.precision, device)
    training = method_cls.trains != "nothing" and args.epochs > 0 and not args.eval_only
    if training:
        args.Method = method_cls.name
    run_dir, resume_ckpt = prepare_run_dir(args, method_cls)
    with RunLock(run_dir, hold=dist_info.main) as lock:
        if not args.resume and not args.eval_only:
            refuse_to_overwrite(run_dir)
        check_datasets(args, training)
        obj = load_file(resume_ckpt, "--resume") if resume_ckpt is not None else None
        if training and obj is not None:
            check_resume(args, obj, resume_ckpt)
            obj = None  # the trainer reads it again: no second copy held while it trains
        if dist_info.main:
            write_run_header(run_dir, args)
        setup_logging(run_dir, dist_info.rank, dist_info.world)
        log.info(f"run folder {run_dir}  device {device}  precision {precision}"
                 + (f"  {dist_info.world} processes" if dist_info.world > 1 else ""))
        set_tf32(args.tf32, device)
        if args.compile:
            log_recompiles()
        seed_everything(args.seed)
        model = build_model(args, device)

        checkpoint_desc, method = pretrained_id(args.pretrained), method_cls.name
        if obj is not None:
            prepare_model(model, args)  # the prompts must exist before they are loaded
            fmt = load_visual_weights(model, resume_ckpt, obj)
            checkpoint_desc, method = checkpoint_id(resume_ckpt, obj), eval_method(args, obj, resume_ckpt)
            log.info(f"loaded {resume_ckpt} ({fmt}) as {checkpoint_desc}")
        elif args.eval_only:
            method = eval_method(args, None, None)
        lock.started = True  # from here on the folder holds work: a failure keeps it
        if training:
            checkpoint_desc, code = train(args, model, run_dir, resume_ckpt, dist_info, precision, stop)
            if checkpoint_desc is None:
                return code

        if not args.no_eval:
            if args.compile and not training:
                compile_module(model.image_tower)
            label = method_label(method)
            try:
                evaluate_run(args, model, run_dir, checkpoint_desc, device, precision, method, label)
            except datasets.CorruptImage as e:
                again = f"python tga_zsr.py --resume {run_dir}" if training else "the same command"
                raise SystemExit(f"{e}\nThe datasets evaluated before it are in {run_dir / 'results.jsonl'}; "
                                 f"{again} evaluates the rest.") from None
            if dist_info.main:
                weights = run_dir / CHECKPOINT_NAME if training else resume_ckpt
                card = write_card(run_dir, checkpoint_desc,
                                  model_description(args, model, weights, method, label, run_dir), environment())
                log.info(f"model card -> {card}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--visualize", action="store_true")
    known, rest = pre.parse_known_args(argv)
    if known.visualize:  # figures have their own flags: see visualize.py --help
        return visualize.main(rest)
    args = parse_args(argv)
    if args.table:
        return table_main(args.table, order=datasets.TABLE_ORDER, label_of=method_label)
    if args.leaderboard:
        return leaderboard_main(args.leaderboard)
    if args.export:
        setup_logging(None)
        export_run(args.export, args.format, args.export_dir)
        return 0
    dist_info = distributed.init_distributed(args.device, args.dist_timeout)
    try:
        with StopSignals() as stop:
            try:
                return run(args, dist_info, stop)
            except KeyboardInterrupt:  # a stop signal outside the training loop: stop at once
                log.error(f"{stop.name}: stopped. Finished work is kept: checkpoints, and in results.jsonl the "
                          f"datasets evaluated so far; the same command (or --resume RUN) goes on from there.")
                return stop.exit_code
    except BaseException as e:
        if dist_info.world > 1 and not (isinstance(e, SystemExit) and e.code in (0, None)):
            # torchrun stops the other ranks when this one exits non-zero; say which one failed.
            log.error(f"rank {dist_info.rank}/{dist_info.world} failed: {type(e).__name__}: {e}",
                      exc_info=not isinstance(e, SystemExit))
        raise
    finally:
        distributed.cleanup(dist_info)


if __name__ == "__main__":
    # record: under torchrun, the failing rank's traceback goes into torchrun's error summary
    sys.exit(record(main)())
