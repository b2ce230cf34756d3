"""TGA-ZSR: adversarial fine-tuning of CLIP with text-guided attention, then zero-shot evaluation.

Trains the visual tower of CLIP (open_clip ViT-B/32, OpenAI weights) on TinyImageNet with PGD
examples and `L = CE + Alpha · L_AR + Beta · L_AMC` (paper Eq. 6–8; methods/tga_zsr.py), or any
baseline of the method registry (`--Method`, methods/), then evaluates clean and PGD-100 robust
zero-shot accuracy on the 16 test datasets (paper Tables 1–2). This file only wires the pieces:
the flags (engine/settings.py), the run folder, the model, the method, the training loop
(engine/train.py), the evaluation (engine/evaluate.py) and the model card.

    python tga_zsr.py -c configs/synthetic.yaml                      # tiny model, synthetic data, CPU
    python tga_zsr.py --Method TGA-ZSR                               # the paper's run (GPU)
    python tga_zsr.py --eval_only --resume checkpoints/RUN           # evaluate a run
    torchrun --nproc_per_node 4 tga_zsr.py --Method TGA-ZSR          # 4 GPUs (engine/distributed.py)
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

import datasets
from engine import distributed
from engine.checkpoint import CHECKPOINT_NAME, checkpoint_id, load_file, pretrained_id, stopped_at, training_status
from engine.device import compile_module, log_recompiles, resolve_precision, seed_everything, set_tf32
from engine.evaluate import evaluate_run, with_decoded_cache
from engine.model import build_model, install_prompts, is_weights_folder, load_clip  # noqa: F401  (load_clip: API)
from engine.run_folder import (RunLock, check_resume, environment, prepare_run_dir, refuse_to_overwrite,
                               setup_logging, write_run_header)
from engine.settings import Settings, parse_args, validate
from engine.train import NonFiniteLoss, RunStopped, StopSignals, Trainer, build_method
from engine.weights import load_visual_weights
from methods import method_label
from methods.tga_zsr import tga_zsr_loss  # noqa: F401  (public API: from tga_zsr import tga_zsr_loss)
from reports.export import model_description
from reports.model_card import write_card
from reports.plots import plot_loss_curve

log = logging.getLogger("tga_zsr")
# Jobs that have their own script now; the old flags say where they went.
MOVED = {"--table": "python report.py table RUN [RUN ...]", "--leaderboard": "python report.py leaderboard DIR",
         "--export": "python report.py export RUN [--format hf_hub]", "--visualize": "python visualize.py ..."}


def check_datasets(s: Settings, train: bool) -> dict[tuple[str, str], str]:
    """Fail before training, not after ten epochs: every requested dataset in place and whole
    (datasets.check_datasets); {(dataset, split): 'partial (found / expected)'} under --allow_partial."""
    splits = ([(s.train.dataset, "train")] if train else []) + \
        ([] if s.run.no_eval else [(name, "test") for name in s.eval.testdata])
    try:
        partial = datasets.check_datasets(splits, s.train.root, s.eval.n_samples, s.run.allow_partial,
                                          s.train.skip_corrupt)
    except datasets.DatasetError as e:
        raise SystemExit(f"dataset check failed before training:\n{e}") from None
    for (name, split), label in partial.items():
        log.warning(f"{name} ({split}): {label} (--allow_partial): its results are marked so")
    return partial


def eval_method(s: Settings, obj, ckpt) -> str:
    """The method an evaluation's results are filed under: --Method if given (CLI, -c file or the
    run's args.yaml), else the checkpoint's own, else `clip` for pretrained weights alone, else the
    file's name."""
    if s.method.named:
        return s.method.name
    meta = obj.get("meta") if isinstance(obj, dict) and isinstance(obj.get("meta"), dict) else {}
    if meta.get("method"):
        return meta["method"]
    pretrained = s.model.pretrained
    if ckpt is None and is_weights_folder(pretrained):  # a published robust CLIP: named after its folder / repo
        return Path(str(pretrained).split(":", 1)[-1]).name
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


def train(s: Settings, model, run_dir: Path, resume_ckpt, dist_info, precision: str,
          stop: StopSignals) -> tuple[str | None, int, str | None]:
    """Fine-tune `model` in place with the method of `s`; returns (the checkpoint's description,
    exit code, 'stopped at step N of M' when --max_steps ended it before its schedule): (None, code, None)
    when training stopped early (a non-finite loss, a signal, a fault)."""
    t = s.train
    train_data = datasets.get_dataset(t.dataset, t.root, "train")
    if t.decoded_cache:
        train_data = with_decoded_cache(train_data, "train", t.decoded_cache, t.workers, t.seed)
    with torch.no_grad():
        text = model.encode_text(train_data.prompts)
    method = build_method(s, model, text, list(train_data.prompts), list(train_data.classnames), len(train_data))
    if s.run.compile:  # in place: state dict keys unchanged; after the frozen copy
        for tower in (model.image_tower, method.frozen):
            if tower is not None:
                compile_module(tower)
    distributed.seed_rank_streams(t.seed)  # model built alike on all ranks; PGD starts differ
    writer = tensorboard_writer(run_dir) if t.tensorboard and dist_info.main else None
    train_precision = method.precision or precision
    if train_precision != precision:
        log.info(f"{method.name} trains in {train_precision}, whatever --precision says")
    trainer = Trainer(t, model, method, train_data, run_dir, dist_info.device, train_precision,
                      rank=dist_info.rank, world=dist_info.world, writer=writer,
                      on_epoch_end=loss_curve_callback(run_dir), should_stop=lambda: stop.received and stop.name,
                      record=s.values)
    if resume_ckpt is not None:
        trainer.load_state_dict(load_file(resume_ckpt, "--resume"))
        log.info(f"resumed from {resume_ckpt} at step {trainer.step} (epoch {trainer.epoch})")
    log.info(f"training {method.name}: {trainer.total_steps} steps of batch {t.batch_size}"
             + (f" ({trainer.micro_batch} per micro-batch: {dist_info.world} processes x "
                f"{trainer.accum_steps} accumulation steps)" if trainer.micro_batch != t.batch_size else ""))
    try:
        with stop.deferred():
            trainer.fit()
    except NonFiniteLoss as e:
        log.error(str(e))
        return None, 2, None
    except RunStopped as e:
        log.error(str(e))
        return None, e.code, None
    if stop.received:  # arrived during the last step: the final checkpoint is on disk
        log.error(f"{stop.name}: training finished (step {trainer.step}); evaluation not started. "
                  f"Evaluate with: python tga_zsr.py --resume {run_dir}")
        return None, stop.exit_code, None
    stopped = stopped_at(trainer.step, trainer.total_steps)
    if stopped:
        log.warning(f"{stopped} (--max_steps): its results and model card say so; the same command with "
                    f"--resume {run_dir} and no --max_steps finishes the schedule")
    return f"{CHECKPOINT_NAME}@step{trainer.step}", 0, stopped


def run(args, dist_info: distributed.DistInfo, stop: StopSignals) -> int:
    """Train (unless eval-only or CLIP) and evaluate, as one process or one torchrun rank.
    Everything that can be checked is checked before the run folder is written."""
    validate(args, dist_info.world)
    s = Settings.from_args(args)
    device = dist_info.device
    precision = resolve_precision(s.run.precision, device)
    training = s.method.cls.trains != "nothing" and s.train.epochs > 0 and not s.run.eval_only
    if training:  # a training run records the method it trains
        args.Method = s.method.name
        s = Settings.from_args(args)
    run_dir, resume_ckpt = prepare_run_dir(s)
    with RunLock(run_dir, hold=dist_info.main) as lock:
        if not s.run.resume and not s.run.eval_only:
            refuse_to_overwrite(run_dir)
        partial = check_datasets(s, training)
        obj = load_file(resume_ckpt, "--resume") if resume_ckpt is not None else None
        if training and obj is not None:
            check_resume(s.values, obj, resume_ckpt)
            obj = None  # the trainer reads it again: no second copy held while it trains
        if dist_info.main:
            write_run_header(run_dir, s.values, s.run.eval_only)
        setup_logging(run_dir, dist_info.rank, dist_info.world)
        log.info(f"run folder {run_dir}  device {device}  precision {precision}"
                 + (f"  {dist_info.world} processes" if dist_info.world > 1 else ""))
        set_tf32(s.run.tf32, device)
        if s.run.compile:
            log_recompiles()
        seed_everything(s.train.seed)
        model = build_model(s.model, device)

        checkpoint_desc, method, stopped = pretrained_id(s.model.pretrained), s.method.name, None
        if obj is not None:
            install_prompts(model, s.model)  # the prompts must exist before they are loaded
            fmt = load_visual_weights(model, resume_ckpt, obj)
            checkpoint_desc, method = checkpoint_id(resume_ckpt, obj), eval_method(s, obj, resume_ckpt)
            stopped = training_status(obj)
            log.info(f"loaded {resume_ckpt} ({fmt}) as {checkpoint_desc}")
        elif s.run.eval_only:
            method = eval_method(s, None, None)
        lock.started = True  # from here on the folder holds work: a failure keeps it
        if training:
            checkpoint_desc, code, stopped = train(s, model, run_dir, resume_ckpt, dist_info, precision, stop)
            if checkpoint_desc is None:
                return code

        if not s.run.no_eval:
            if s.run.compile and not training:
                compile_module(model.image_tower)
            label = method_label(method)
            try:
                evaluate_run(s.eval, model, run_dir, checkpoint_desc, device, precision, method, label,
                             stopped=stopped, partial={n: p for (n, split), p in partial.items() if split == "test"})
            except datasets.CorruptImage as e:
                again = f"python tga_zsr.py --resume {run_dir}" if training else "the same command"
                raise SystemExit(f"{e}\nThe datasets evaluated before it are in {run_dir / 'results.jsonl'}; "
                                 f"{again} evaluates the rest.") from None
            if dist_info.main:
                weights = run_dir / CHECKPOINT_NAME if training else resume_ckpt
                desc = model_description(s.values, model, weights, method, label, run_dir)
                train_set = (datasets.canonical_name(s.train.dataset), "train")
                if training and train_set in partial:  # known to the process that trained
                    desc.setdefault("training", {})["data"] = f"{train_set[0]} train: {partial[train_set]}"
                card = write_card(run_dir, checkpoint_desc, desc, environment())
                log.info(f"model card -> {card}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    moved = [f for f in MOVED if f in argv]
    if moved:
        raise SystemExit(f"{moved[0]} has its own script now: {MOVED[moved[0]]}")
    args = parse_args(argv)
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
