"""The one training loop every method shares: SGD + warmup + cosine set before each
step, mixed precision on CUDA, atomic checkpoints and an exact resume.

The sample order of epoch e is a permutation drawn from `seed + e` (DistributedSampler's own
scheme), so a resumed run can skip the batches already done without touching the global RNG;
the global RNG (PGD random starts) is restored from the checkpoint. Together these make a
resumed run end with the same weights as an uninterrupted one (tests/test_train.py).

Under torchrun (distributed.py) `--batch_size` stays the global batch: each of the W ranks
takes batch/W samples of it (the sampler interleaves ranks, so the union is one process's
batch) in `--accum_steps` K micro-batches of batch/(W·K); each micro-batch loss is weighted by
its share of the rank's batch, DDP averages over ranks, and there is one optimiser step and
one LR update per global batch. The schedule is counted in global steps, `len(loader)·epochs`
of the global batch, whatever W and K are (tests/test_distributed.py). A per-sample-mean loss is
then that of the global batch; a method whose loss couples a batch's samples is told the split
first (`Method.begin_batch` with a `BatchSplit`) and computes the global batch's loss, so every
method's update is the same however the global batch is split (tests/test_distributed.py).

Stops that lose nothing (docs/troubleshooting.md): SIGTERM, SIGINT and SIGUSR1
(`StopSignals`), an image that cannot be decoded (without `--skip_corrupt`) and a checkpoint that
cannot be written end the loop at a step boundary with `RunStopped`, whose message ends with the
command that resumes; the checkpoint on disk is that of the last finished step (or the previous
one, intact, when the disk is full).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from engine import distributed
from engine.checkpoint import CHECKPOINT_NAME, CheckpointWriteError, atomic_save, load_trainable_state, trainable_state
from datasets import CorruptImage, Indexed, collate_indexed, images_to
from engine.device import autocast, make_scaler, rng_state, seed_everything, set_rng_state
from engine.model import install_prompts
from engine.settings import Settings, TrainSettings
from methods import BatchSplit, TrainingAttack, TrainingSetup

log = logging.getLogger("tga_zsr")


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warmup `base·(step+1)/warmup`, then cosine `½(1+cos(π·(step−w)/(total−w)))·base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * base


class ResumableSampler(DistributedSampler):
    """DistributedSampler (seeded permutation per epoch) that can skip its first `start` indices."""

    def __init__(self, dataset, num_replicas=1, rank=0, seed=0, shuffle=True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def __iter__(self):
        it = list(super().__iter__())
        return iter(it[self.start:])

    def __len__(self):
        return self.num_samples - self.start


def trainable_parameters(model, trains: str = "visual", last_num_ft: int = 0, extra: dict | None = None) -> list:
    """What the optimiser steps, with requires_grad set on exactly those tensors:
    the visual tower (all of it, or its last N tensors in registration order) when the method
    trains it and no visual prompts are installed; the visual prompts (`model.prompter`) if any;
    and the method's `extra` tensors (TIMA's text tower). `trains`: see methods.Method."""
    params = []
    if trains in ("visual", "visual+text") and model.prompter is None:
        params = list(model.visual.parameters())
        if last_num_ft > 0:
            for p in params[:-last_num_ft]:
                p.requires_grad_(False)
            params = params[-last_num_ft:]
    else:
        model.visual.requires_grad_(False)
    if model.prompter is not None:
        params += list(model.prompter.parameters())
    params += list((extra or {}).values())
    for p in params:
        p.requires_grad_(True)
    return params


def build_optimizer(t: TrainSettings, params):
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay)


def build_method(s: Settings, model, text_features, prompts=None, classnames=None, n_train: int = 0):
    """The method of `s` set up on `model` as training needs it: the frozen copy of the original tower
    first (before any prompts), then the visual prompts, then the method with its own flags."""
    cls = s.method.cls
    frozen = model.frozen_image_tower() if cls.needs_frozen else None
    install_prompts(model, s.model)
    attack = TrainingAttack(s.attack, on_clean=s.train_on_clean)
    setup = TrainingSetup(model, text_features, attack, frozen, prompts, classnames, n_train)
    return cls(setup, **s.method.options)


class NonFiniteLoss(RuntimeError):
    pass


class RunStopped(Exception):
    """Training stopped at a step boundary without losing work; the message says how to resume."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, n))


class StopSignals:
    """SIGTERM (a cluster's preemption, `kill`), SIGINT (Ctrl-C) and SIGUSR1 (SLURM's `--signal`),
    handled in one place; tga_zsr.py installs it around a run. While the Trainer runs (inside
    `deferred()`) a signal only sets `received`: the Trainer saves a checkpoint at the next step
    boundary and stops. Anywhere else, and at a second Ctrl-C, it stops at once (KeyboardInterrupt);
    what is already on disk (checkpoints, finished datasets' results) stays."""

    def __init__(self):
        self.received = None  # number of the first signal
        self._deferring = False
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        again = self.received is not None
        self.received = self.received or signum
        if self._deferring and not (again and signum == signal.SIGINT):
            hint = " (Ctrl-C again: stop now, without one)" if signum == signal.SIGINT else ""
            os.write(2, f"\n{signal.Signals(signum).name}: stopping at the next step boundary, with a "
                        f"checkpoint{hint}\n".encode())
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    @contextlib.contextmanager
    def deferred(self):
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    @property
    def name(self) -> str:
        return signal.Signals(self.received or signal.SIGINT).name

    @property
    def exit_code(self) -> int:
        return 128 + int(self.received or signal.SIGINT)  # the shell's convention: 130 Ctrl-C, 143 SIGTERM


def ignore_stop_signals(_worker_id: int) -> None:
    """Loader workers leave stop signals to the main process: a terminal's Ctrl-C and a cluster's
    SIGTERM reach every process of the job, and a worker killed by one breaks the loader."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class Trainer:
    """Runs `method.step` over the training set for the whole schedule, checkpointing as it goes."""

    def __init__(self, t: TrainSettings, model, method, train_data, run_dir: Path, device, precision,
                 rank: int = 0, world: int = 1, writer=None, on_epoch_end=None, should_stop=None,
                 record: dict | None = None):
        self.t, self.model, self.method = t, model, method
        self.record = record or {}  # the run's flags, kept in each checkpoint (plain values)
        self.should_stop = should_stop  # () -> signal name or None, checked at each step boundary
        self.data_name, self.skip_corrupt = train_data.name, t.skip_corrupt
        self.on_device = train_data.on_device  # the decoded cache's resize, or None
        self.run_dir, self.device, self.precision = Path(run_dir), device, precision
        self.rank, self.world, self.writer = rank, world, writer
        self.on_epoch_end = on_epoch_end  # called on rank 0 after each epoch's checkpoint (the loss curve)
        self.dataset = Indexed(train_data.dataset)
        self.sampler = ResumableSampler(self.dataset, num_replicas=world, rank=rank, seed=t.seed)
        self.accum_steps = max(1, int(t.accum_steps))
        if t.batch_size % (world * self.accum_steps):
            raise SystemExit(f"--batch_size {t.batch_size} is the global batch: it must split evenly over "
                             f"{world} process(es) x {self.accum_steps} accumulation step(s), i.e. be a multiple "
                             f"of {world * self.accum_steps}")
        self.batch_size = t.batch_size // world          # this rank's share of the global batch
        self.micro_batch = self.batch_size // self.accum_steps
        self.params = trainable_parameters(model, method.trains, t.last_num_ft, method.trainable_extra())
        # DDP over the image tower; trainable tensors outside it get their gradients averaged.
        self.ddp = distributed.wrap_trainable(model, device)
        owned = {id(p) for p in self.ddp.module.parameters()} if self.ddp is not None else set()
        self.unsynced = [p for p in self.params if id(p) not in owned] if world > 1 else []
        self.optimizer = build_optimizer(t, self.params)
        self.scaler = make_scaler(device, precision)
        self.steps_per_epoch = math.ceil(self.sampler.num_samples / self.batch_size)
        self.total_steps = self.steps_per_epoch * t.epochs  # the LR schedule's length
        # --max_steps stops early without changing the schedule, so a stopped run resumes exactly.
        self.stop_at = min(self.total_steps, t.max_steps) if t.max_steps else self.total_steps
        self.step = 0          # optimiser steps done
        self.epoch = 0
        self.batch_in_epoch = 0
        self._loader = None    # built once: its workers persist across epochs
        self._worker_seeds = torch.Generator()
        self.saved_step = None  # step of the checkpoint on disk
        self.skipped = 0        # unreadable training images left out (--skip_corrupt)

    # --- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**trainable_state(self.model, self.method.trainable_extra()), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "rng": rng_state(), "world": self.world,
                "args": {k: v for k, v in self.record.items() if isinstance(v, (int, float, str, bool, list, type(None)))},
                "meta": {"arch": self.model.arch, "quick_gelu": self.model.quick_gelu, "method": self.method.name,
                         "finished": self.step >= self.total_steps, "total_steps": self.total_steps}}

    def load_state_dict(self, ckpt: dict) -> None:
        load_trainable_state(self.model, ckpt)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.epoch, self.batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        self.saved_step = self.step
        per_rank = ckpt.get("rng_per_rank")
        if self.world == 1 or (per_rank and len(per_rank) == self.world):
            set_rng_state(per_rank[self.rank] if self.world > 1 else ckpt["rng"])
        else:  # another number of processes: same data order, but new PGD random-start streams
            seed_everything(self.t.seed + 1_000_003 * self.step + self.rank)
            if self.rank == 0:
                log.warning(f"resuming a {ckpt.get('world', 1)}-process run on {self.world}: the data order is "
                            f"unchanged, the training attack's random starts are not those of the original run")

    def save(self) -> None:
        # Every rank's RNG (its PGD random starts) goes into rank 0's checkpoint: exact resume.
        rngs = distributed.gather_objects(rng_state()) if self.world > 1 else None
        if self.rank == 0:
            state = self.state_dict()
            if rngs is not None:
                state["rng_per_rank"] = rngs
            try:
                atomic_save(state, self.run_dir / CHECKPOINT_NAME)
            except CheckpointWriteError as e:
                kept = f"the checkpoint of step {self.saved_step}" if self.saved_step is not None else "no checkpoint"
                raise RunStopped(f"{e.code}\nTraining stopped at step {self.step}; {self.run_dir} holds {kept}. "
                                 f"Resume with: python tga_zsr.py --resume {self.run_dir}") from e
        self.saved_step = self.step
        if self.world > 1:  # no rank runs ahead of a checkpoint that is not on disk yet (a resume reads it)
            distributed.barrier()

    # --- loop ----------------------------------------------------------------------------
    def loader(self) -> DataLoader:
        """The epoch's loader. One DataLoader for the run: with workers, they stay alive between
        epochs (persistent_workers) and keep 4 batches each in flight; the sampler is read in this
        process at the start of each epoch, so its epoch and resume offset still apply."""
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = self.batch_in_epoch * self.batch_size  # per-rank batch: resume skips exactly
        self._worker_seeds.manual_seed(self.t.seed + self.epoch)  # worker seeds only
        if self._loader is None:
            workers = self.t.workers
            self._loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                                      num_workers=workers, pin_memory=self.device.type == "cuda",
                                      generator=self._worker_seeds, persistent_workers=workers > 0,
                                      prefetch_factor=4 if workers else None,
                                      collate_fn=collate_indexed, worker_init_fn=ignore_stop_signals)
        return self._loader

    def train_step(self, x, y, idx) -> dict:
        """One optimiser step on this rank's share of a global batch, in micro-batches."""
        lr = lr_at(self.step, self.t.learning_rate, self.t.warmup, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        n = x.shape[0]
        chunks = list(zip(x.split(self.micro_batch), y.split(self.micro_batch), idx.split(self.micro_batch)))
        split = BatchSplit(global_batch=n * self.world, rank_batch=n, world=self.world, rank=self.rank,
                           micro_batches=len(chunks), gather=distributed.gather_cat)
        with autocast(self.device, self.precision):
            self.method.begin_batch(chunks, split)
        terms = {}
        for k, (xk, yk, ik) in enumerate(chunks):
            # Weight = the micro-batch's share of the rank's batch (1/K, or less for the smaller
            # last batch of an epoch): the summed gradient is that of the whole batch's mean loss.
            weight = xk.shape[0] / n
            with distributed.grad_sync(self.ddp, sync=k == len(chunks) - 1):
                with autocast(self.device, self.precision):
                    step_terms = self.method.step(xk, yk, ik)
                loss = step_terms["loss"] if len(chunks) == 1 else step_terms["loss"] * weight
                self.scaler.scale(loss).backward()
            for name, v in step_terms.items():
                v = v.detach() if len(chunks) == 1 else v.detach() * weight
                terms[name] = v if name not in terms else terms[name] + v
        distributed.average_gradients(self.unsynced)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return terms | {"lr": lr}

    def _check_finite(self, bad: torch.Tensor, terms: dict) -> None:
        if bool(distributed.any_rank(bad)):  # all ranks stop together: none waits in a collective
            shown = {k: (float(v) if torch.is_tensor(v) else v) for k, v in terms.items()}
            raise NonFiniteLoss(
                f"non-finite loss at epoch {self.epoch} step {self.step}: {shown}. The run stops here; the last "
                f"checkpoint in {self.run_dir} predates it. Lower --learning_rate or use --precision fp32.")

    def fit(self) -> None:
        t = self.t
        history = self.run_dir / "history.jsonl"
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        while self.step < self.stop_at:
            self.model.image_tower.train()
            bar = tqdm(total=self.sampler.num_samples * self.world,
                       initial=self.batch_in_epoch * self.batch_size * self.world,
                       unit="img", dynamic_ncols=True, disable=self.rank != 0,
                       desc=f"epoch {self.epoch + 1}/{t.epochs}")
            sums, count, t0 = {}, 0, time.time()
            for x, y, idx, unreadable in self.loader():
                self._stop_if_asked(unreadable, len(x), bar)
                x, y = images_to(x, self.device, self.on_device), y.to(self.device, non_blocking=True)
                terms = self.train_step(x, y, idx)
                bad |= ~torch.isfinite(terms["loss"])
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                self.step += 1
                self.batch_in_epoch += 1
                bar.update(x.shape[0] * self.world)
                epoch_done = self.batch_in_epoch >= self.steps_per_epoch
                stop = self.step >= self.stop_at
                if count % t.print_freq == 0 or epoch_done or stop:
                    self._check_finite(bad, terms)
                    row = distributed.mean_over_ranks({k: float(v) / count for k, v in sums.items()})
                    row.update(step=self.step, epoch=self.epoch, lr=terms["lr"],
                               img_per_s=count * x.shape[0] * self.world / max(1e-9, time.time() - t0))
                    bar.set_postfix({k: f"{row[k]:.4g}" for k in row if k not in ("step", "epoch", "img_per_s")})
                    if self.rank == 0:
                        with open(history, "a") as f:
                            f.write(json.dumps(row) + "\n")
                        if self.writer is not None:
                            for k, v in row.items():
                                self.writer.add_scalar(f"train/{k}", v, self.step)
                    sums, count, t0 = {}, 0, time.time()
                if epoch_done:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                if (t.save_freq and self.step % t.save_freq == 0) or epoch_done or stop:
                    self._check_finite(bad, terms)
                    self.save()
                if (epoch_done or stop) and self.rank == 0 and self.on_epoch_end is not None:
                    self.on_epoch_end()
                if stop:
                    break
            bar.close()
        if self.skipped:
            log.warning(f"{self.skipped} unreadable training images were left out (--skip_corrupt)")
        distributed.unwrap(self.model)

    def _stop_if_asked(self, unreadable: list, n_good: int, bar) -> None:
        """At a step boundary (the next batch fetched, not used): stop for a signal or an unreadable
        image (all ranks together), after saving a checkpoint of the steps done; or skip the images."""
        for u in unreadable if self.skip_corrupt and n_good else []:
            log.warning(f"{self.data_name}: skipped unreadable image {u.path or f'#{u.index}'} ({u.reason})")
        self.skipped += len(unreadable) if self.skip_corrupt and n_good else 0
        corrupt = bool(unreadable) and not (self.skip_corrupt and n_good)
        signalled = self.should_stop is not None and self.should_stop() is not None
        if self.world > 1:  # one all-reduce of host values, no wait for the GPU (distributed.any_rank_flags)
            corrupt, signalled = distributed.any_rank_flags([corrupt, signalled])
        if not (corrupt or signalled):
            return
        bar.close()  # its line ends before the message
        if self.saved_step != self.step:
            self.save()
        resume = f"python tga_zsr.py --resume {self.run_dir}"
        if signalled:
            name = self.should_stop() or "a stop signal"
            raise RunStopped(f"{name}: training stopped at step {self.step} of {self.total_steps}, checkpoint saved "
                             f"in {self.run_dir / CHECKPOINT_NAME}. Resume with: {resume}",
                             code=128 + int(getattr(signal, str(name), signal.SIGTERM)))
        where = CorruptImage(self.data_name, unreadable, self.t.root) if unreadable else \
            "an image of another process's batch cannot be decoded (see its message)"
        if unreadable and not n_good:
            where = f"{where}\nEvery image of this batch is unreadable: check the dataset with --verify --deep"
        raise RunStopped(f"{where}\nTraining stopped at step {self.step}, checkpoint saved in {self.run_dir}. "
                         f"Resume with: {resume}  (add --skip_corrupt to leave unreadable images out)")
