"""Speed benchmark: training step and PGD evaluation step against their FLOP floor.

The unit is one no-grad forward of the visual tower on the batch (eval mode). A TGA-ZSR step with K
attack steps needs at least (2K + 7) units: K × (forward + input-only backward) for the
attack, forward + backward for the adversarial and for the clean images (3 units each), and
one frozen forward; with `--cache_frozen_maps` after the first epoch, (2K + 6). One PGD
evaluation step needs 2 units (forward + input-only backward). The benchmark reports each
time, its ratio to that floor, images/s, the FLOPs of one forward (torch's FlopCounterMode)
and the achieved GFLOP/s. Each repetition first times the unit (median of three
forwards), then each item, so every ratio compares measurements seconds apart; medians of
`--reps` repetitions after `--warmup` warm-ups.

`--per_method` instead times one whole optimiser step of every method of the registry (its own
config: attack steps, frozen reference, prompts), the first step a warm-up.

`--cost <tga_zsr.py flags>` measures what the paper's Table 8 reports for one run of those flags,
on this device, with the real loop and data: seconds per training batch (median of
`--cost_batches` after `--cost_warmup`; `Trainer.train_step`, data loading excluded) and per epoch
(that × batches per epoch), peak training memory (CUDA: the allocator's peak; CPU: the peak
resident size of this process, model and data included), and seconds per test batch (clean +
attacked forward of one `--test_batch_size` batch of the first test set, under the run's attack).
paper.py runs it for Table 8.

`--loader` times the input pipeline per TinyImageNet image (64x64 JPEGs written to a temporary
folder): the loader's JPEG decode + PIL Resize(256) + CenterCrop(224) on one core, against the decoded
cache (`--decoded_cache`: a memory-mapped uint8 slice in the loader, the resize on `--device`).
`--starts` times the evaluation's per-sample PGD random starts for one batch of `--batch_size`
224×224 images: the CPU route (one torch.Generator per image) and the device route (the same
numbers, MT19937 in tensor ops on `--device`), eager and compiled (what CUDA runs).
This is the one benchmark script.

    python bench.py                                    # ViT-B/32, batch 16, 25 and 200 classes, CPU fp32
    python bench.py --device cuda --precision amp --batch_size 128 --classes 200
    python bench.py --per_method --methods fare tima --steps 3 --threads 2
    python bench.py --cost --json cost.jsonl -c configs/mini.yaml --Method TGA-ZSR   # one row of Table 8
    python bench.py --loader --device cuda                                              # input pipeline
    python bench.py --starts --device cuda --batch_size 256                             # PGD random starts
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import datasets
from attacks import mt19937_uniform, no_param_grad, per_sample_start, pgd, start_seed
from doctor import estimate_hours, peak_tflops
from engine.device import autocast, forward_flops, make_scaler, resolve_device, resolve_precision, seed_everything
from engine.evaluate import attack_batch
from engine.model import build_model, load_clip
from engine.settings import DefaultsShown, Settings, parse_args
from engine.train import Trainer, build_method, build_optimizer, trainable_parameters
from methods import TrainingSetup, available_methods


def timed(fn, reps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def method_settings(method: str, *extra: str) -> Settings:
    """The settings of `method` at its own config's values (the GPU protocol), plus `extra` flags."""
    return Settings.from_args(parse_args(["--Method", method, "--device", "cpu", *extra]))


def bench_one(model, n_classes: int, args, device, precision: str) -> dict:
    b, k = args.batch_size, args.train_numsteps
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 3, 224, 224, generator=g).to(device)
    y = (torch.arange(b) % n_classes).to(device)
    with torch.no_grad():
        text = model.encode_text([f"This is a photo of a class{i}" for i in range(n_classes)])
    visual_params = list(model.visual.parameters())
    optimizer = torch.optim.SGD(visual_params, lr=1e-12, momentum=0.9)  # tiny lr: weights stay put
    scaler = make_scaler(device, precision)
    step_flags = ["--train_numsteps", str(k)]  # the method's own flags at their defaults
    method = build_method(method_settings(args.method, *step_flags), model, text)
    if args.compile:  # in place, after the frozen copy (each tower compiles its own weights)
        for tower in (model.image_tower, method.frozen):
            if tower is not None:
                tower.compile()
    idx = torch.arange(b)

    def unit():  # eval mode: the inference forward (MultiheadAttention's fused path)
        with torch.no_grad(), autocast(device, precision):
            model.image_tokens(x)

    def train_step(m):
        def run():
            with autocast(device, precision):
                loss = m.step(x, y, idx)["loss"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return run

    def fwd_full_bwd():
        with autocast(device, precision):
            loss = model.logits(x, text).float().logsumexp(1).sum()
        loss.backward()
        optimizer.zero_grad(set_to_none=True)

    def fwd_input_bwd():
        xr = x.clone().requires_grad_(True)
        with no_param_grad(model.clip), autocast(device, precision):
            loss = model.logits(xr, text).float().logsumexp(1).sum()
            torch.autograd.grad(loss, xr)

    def pgd_steps():
        with no_param_grad(model.clip), autocast(device, precision):
            pgd(lambda xa: F.cross_entropy(model.logits(xa, text).float(), y, reduction="sum"),
                x, 1 / 255, 1 / 255, args.pgd_steps)

    floor = 2 * k + 7 if method.needs_frozen else 2 * k + 3
    cached = None
    if method.needs_frozen:
        options = method_settings(args.method, *step_flags, "--cache_frozen_maps").method.options
        cached = type(method)(method_setup(method, b), **options)
        train_step(cached)()  # the first epoch fills the cache

    def as_eval(fn):
        def run():
            model.eval()
            try:
                fn()
            finally:
                model.image_tower.train()
        return run

    # Interleaved: every repetition times the unit and then each item, so each ratio compares
    # measurements taken seconds apart (a shared or throttling CPU drifts between minutes).
    items = {"fwd_full_bwd": fwd_full_bwd, "fwd_input_bwd": fwd_input_bwd, "step": train_step(method),
             "pgd": as_eval(pgd_steps)}
    if cached is not None:
        items["cached_step"] = train_step(cached)
    model.image_tower.train()
    for fn in [as_eval(unit), *items.values()]:
        for _ in range(args.warmup):
            fn()
    units, secs, ratios = [], {k: [] for k in items}, {k: [] for k in items}
    for _ in range(args.reps):
        # the unit of this repetition: the median of three forwards (a single 0.5 s forward
        # varies by ±20 % on a shared CPU, and every ratio of the repetition divides by it)
        t_unit = statistics.median(timed(as_eval(unit), 1, 0, device) for _ in range(3))
        units.append(t_unit)
        for name, fn in items.items():
            t = timed(fn, 1, 0, device)
            secs[name].append(t)
            ratios[name].append(t / t_unit)
    med = statistics.median
    t_unit = med(units)
    r = {"classes": n_classes, "unit_s": t_unit}
    r["fwd_full_bwd_units"] = med(ratios["fwd_full_bwd"])
    r["fwd_input_bwd_units"] = med(ratios["fwd_input_bwd"])
    r["step_s"] = med(secs["step"])
    r["step_units"] = med(ratios["step"])
    r["step_floor_units"] = floor
    r["step_ratio"] = r["step_units"] / floor
    if cached is not None:
        r["cached_step_s"] = med(secs["cached_step"])
        r["cached_step_units"] = med(ratios["cached_step"])
        r["cached_ratio"] = r["cached_step_units"] / (floor - 1)
    t_pgd = med(secs["pgd"]) / args.pgd_steps
    r["pgd_step_s"] = t_pgd
    r["pgd_step_units"] = med(ratios["pgd"]) / args.pgd_steps
    r["pgd_step_ratio"] = r["pgd_step_units"] / 2
    r["pgd100_batch_s"] = 100 * t_pgd + 2 * t_unit  # + the clean and the final forward
    r["pgd100_ratio"] = (100 * r["pgd_step_units"] + 2) / 200
    r["train_img_per_s"] = b / r["step_s"]
    r["pgd100_img_per_s"] = b / r["pgd100_batch_s"]
    return r


def b_img_s(batch: int, r: dict) -> float:
    """Images per second of one PGD step."""
    return batch / r["pgd_step_s"]


def method_setup(method, n_train: int):
    """The TrainingSetup `method` was built with, for a second instance sharing its towers."""
    return TrainingSetup(method.model, method.text, method.attack, method.frozen, n_train=n_train)


def per_method(a) -> None:
    """Seconds per optimiser step (attack + loss + backward + step) of each method, fp32."""
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    base = load_clip(a.arch, None)
    print(f"# {a.arch} random weights, batch {a.batch_size}, {a.classes[0]} classes, fp32, "
          f"{torch.get_num_threads()} thread(s), load average at start {os.getloadavg()[0]:.1f}")
    print("| method | attack steps | s / step |\n|---|---|---|")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(a.batch_size, 3, 224, 224, generator=g)
    y = torch.randint(a.classes[0], (a.batch_size,), generator=g)
    names = [f"class{i}" for i in range(a.classes[0])]
    prompts = [f"This is a photo of a {n}" for n in names]
    for name in a.methods:
        model = copy.deepcopy(base)
        s = method_settings(name)
        with torch.no_grad():
            text = model.encode_text(prompts)
        method = build_method(s, model, text, prompts, names)
        opt = build_optimizer(s.train, trainable_parameters(model, method.trains, s.train.last_num_ft,
                                                            method.trainable_extra()))
        times = []
        for i in range(a.steps + 1):
            t0 = time.perf_counter()
            loss = method.step(x, y)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i > 0:
                times.append(time.perf_counter() - t0)
        steps = 0 if method.attack.off else method.attack.settings.steps
        print(f"| {name} | {steps} | {sum(times) / len(times):.2f} |", flush=True)
    print(f"# load average at end {os.getloadavg()[0]:.1f}")


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def measure_cost(argv: list[str], batches: int = 5, warmup: int = 1) -> dict:
    """Table 8 for one run of these tga_zsr.py flags, on this device (see the module docstring)."""
    s = Settings.from_args(parse_args(argv))
    device = resolve_device(s.run.device)
    precision = resolve_precision(s.run.precision, device)
    seed_everything(s.train.seed)
    cls = s.method.cls
    model = build_model(s.model, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    rec = {"method": cls.name, "arch": str(s.model.arch), "device_name": name, "precision": precision,
           "batch_size": s.train.batch_size, "test_batch_size": s.eval.test_batch_size, "measured_batches": batches,
           "train_s_per_batch": None, "train_s_per_epoch": None, "train_peak_mem_gb": None}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if cls.trains != "nothing" and s.train.epochs > 0:
        data = datasets.get_dataset(s.train.dataset, s.train.root, "train")
        with torch.no_grad():
            text = model.encode_text(data.prompts)
        method = build_method(s, model, text, list(data.prompts), list(data.classnames), len(data))
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(s.train, model, method, data, Path(tmp), device, method.precision or precision)
        times = []
        for i, (x, y, idx, _) in enumerate(trainer.loader()):
            x, y = datasets.images_to(x, device, data.on_device), y.to(device)
            _sync(device)
            t0 = time.perf_counter()
            trainer.train_step(x, y, idx)
            _sync(device)
            trainer.step += 1
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            if len(times) >= batches:
                break
        if times:
            rec.update(train_s_per_batch=statistics.median(times), steps_per_epoch=trainer.steps_per_epoch,
                       train_s_per_epoch=statistics.median(times) * trainer.steps_per_epoch,
                       train_peak_mem_gb=peak_memory_gb(device), measured_batches=len(times))
    e = s.eval
    test = datasets.get_dataset(e.testdata[0], e.root, "test")
    test = datasets.class_balanced_subset(test, e.test_batch_size, e.seed)
    x, y = next(iter(torch.utils.data.DataLoader(test.dataset, batch_size=e.test_batch_size)))
    x, y, idx = datasets.images_to(x, device), y.to(device), torch.arange(len(y))
    with torch.no_grad():
        text = model.encode_text(test.prompts)
    settings = e.setting(e.test_eps[0], "cost", precision)
    model.eval()
    with no_param_grad(model):
        for k in range(2):  # a warm-up batch, then the measured one
            _sync(device)
            t0 = time.perf_counter()
            with autocast(device, precision):
                with torch.no_grad():
                    model.logits(x, text)
                x_adv = attack_batch(model, x, y, idx, text, settings)
                with torch.no_grad():
                    model.logits(x_adv, text)
            _sync(device)
    rec.update(test_s_per_batch=time.perf_counter() - t0, test_batch=len(y), test_set=test.name,
               attack=settings["attack"], test_steps=settings["steps"], test_eps=settings["eps"])
    return rec


def cost_main(argv: list[str]) -> int:
    pre = argparse.ArgumentParser("bench.py --cost: Table 8 for one run of tga_zsr.py flags", allow_abbrev=False)
    pre.add_argument("--cost", action="store_true")
    pre.add_argument("--json", default=None, help="append the measurement as a JSON line to this file")
    pre.add_argument("--cost_batches", type=int, default=5, help="training batches measured (after the warm-up)")
    pre.add_argument("--cost_warmup", type=int, default=1)
    known, rest = pre.parse_known_args(argv)
    logging.disable(logging.WARNING)  # open_clip's and the loop's chatter; the JSON line is the output
    try:
        rec = measure_cost(rest, known.cost_batches, known.cost_warmup)
    finally:
        logging.disable(logging.NOTSET)
    line = json.dumps(rec)
    print(line)
    if known.json:
        Path(known.json).parent.mkdir(parents=True, exist_ok=True)
        with open(known.json, "a") as f:
            f.write(line + "\n")
    return 0


def loader_bench(args, device) -> dict:
    """ms per image of the JPEG loader (one core) and of the decoded cache (read; resize on `device`)."""
    import numpy as np
    from PIL import Image
    n, batch = 512, 256
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tiny-imagenet-200"
        rng = np.random.default_rng(0)
        for k in range(n):  # TinyImageNet's layout and size; 2 classes are enough for the pipeline
            folder = root / "train" / ("n01443537", "n01629819")[k % 2] / "images"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{k}.JPEG")
        data = datasets.get_dataset("tinyImageNet", tmp, "train")
        t0 = time.perf_counter()
        for i in range(n):
            data.dataset[i]
        jpeg = (time.perf_counter() - t0) / n
        cached = datasets.use_decoded_cache(data, "train", Path(tmp) / "cache")
        t0 = time.perf_counter()
        xs = [cached.dataset[i][0] for i in range(n)]
        read = (time.perf_counter() - t0) / n
        x = torch.stack(xs[:batch]).to(device)
        on_device = timed(lambda: cached.on_device(x), args.reps, args.warmup, device) / batch
    return {"jpeg_pil_ms_per_img_one_core": jpeg * 1e3, "cache_read_ms_per_img_one_core": read * 1e3,
            "device_resize_ms_per_img": on_device * 1e3, "device": str(device), "threads": torch.get_num_threads()}


def starts_bench(args, device) -> dict:
    """ms per batch of the evaluation's per-sample PGD starts (l_inf, ε 1/255, 224×224): the CPU route
    (one torch.Generator per image) and the device route (the same numbers from MT19937 in tensor ops
    on `device`), eager and compiled (what CUDA uses); medians of `--reps` after `--warmup`."""
    x = torch.rand(args.batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    seeds = [start_seed(0, i) for i in range(10_000, 10_000 + args.batch_size)]
    out = {"batch": args.batch_size, "device": str(device), "threads": torch.get_num_threads()}
    out["cpu_route_ms_per_batch"] = 1e3 * timed(
        lambda: per_sample_start(x, torch.arange(10_000, 10_000 + args.batch_size), 1 / 255, "l_inf", 0,
                                 on_device=False), args.reps, args.warmup, device)
    for name, compiled in (("device_route_eager", False), ("device_route_compiled", True)):
        out[f"{name}_ms_per_batch"] = 1e3 * timed(
            lambda: mt19937_uniform(seeds, x[0].numel(), -1 / 255, 1 / 255, device, compiled=compiled),
            args.reps, args.warmup, device)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    """The benchmark's flags (`--cost` takes tga_zsr.py's flags instead: see cost_main)."""
    p = argparse.ArgumentParser("bench.py", description="TGA-ZSR speed benchmark", formatter_class=DefaultsShown,
                                allow_abbrev=False)
    p.add_argument("--per_method", action="store_true", help="seconds per training step of every method")
    p.add_argument("--loader", action="store_true", help="ms per TinyImageNet image: JPEG loader vs decoded cache")
    p.add_argument("--starts", action="store_true", help="ms per batch of the evaluation's per-sample PGD starts")
    p.add_argument("--methods", nargs="+", default=[m for m in available_methods() if m != "clip"],
                   help="--per_method: which methods")
    p.add_argument("--steps", type=int, default=2, help="--per_method: timed steps per method (after a warm-up)")
    p.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights: speed only)")
    p.add_argument("--batch_size", type=int, default=16, help="training and test batch timed")
    p.add_argument("--classes", type=int, nargs="+", default=[25, 200], help="class counts of the text features")
    p.add_argument("--method", default="tga_zsr", help="method whose training step is timed")
    p.add_argument("--train_numsteps", type=int, default=2, help="K, the attack steps of training")
    p.add_argument("--pgd_steps", type=int, default=3, help="attack steps timed for the PGD-step figure")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "amp", "bf16"], help="autocast of the timed steps")
    p.add_argument("--compile", action="store_true", help="torch.compile the image tower")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions of each measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions before them")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="device peak for the MFU (default: known GPUs, doctor.PEAK_TFLOPS; none on a CPU)")
    p.add_argument("--json", default=None, help="append the JSON line to this file")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--cost" in argv:
        return cost_main(argv)
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.per_method:
        per_method(args)
        return 0
    device = resolve_device(args.device)
    if args.loader:
        print(json.dumps(loader_bench(args, device)))
        return 0
    if args.starts:
        print(json.dumps(starts_bench(args, device)))
        return 0
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    base = load_clip(args.arch, None, device=device)
    x = torch.rand(args.batch_size, 3, 224, 224, device=device)
    flops = forward_flops(base, x)
    rows = []
    for c in args.classes:
        model = copy.deepcopy(base)
        r = bench_one(model, c, args, device, precision)
        r["gflops_per_forward"] = flops / 1e9
        r["achieved_gflop_s"] = flops / r["unit_s"] / 1e9
        if device.type == "cuda":
            r["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
        peak = peak_tflops(device, args.peak_tflops)
        if peak:  # model FLOPs of the step: its floor in forward units (2K + 7) × one forward's FLOPs
            r["mfu_step"] = r["step_floor_units"] * flops / r["step_s"] / (peak * 1e12)
            r["mfu_pgd"] = 2 * flops / r["pgd_step_s"] / (peak * 1e12)
        # the wall clock of `bash main.sh tga_zsr` at these speeds (an estimate; see doctor.estimate_hours)
        r["estimate_tga_zsr_hours"] = estimate_hours(r["train_img_per_s"], b_img_s(args.batch_size, r))["total_hours"]
        rows.append(r)
    meta = {"arch": args.arch, "batch_size": args.batch_size, "method": args.method, "K": args.train_numsteps,
            "device": str(device), "precision": precision, "threads": torch.get_num_threads(),
            "compile": args.compile, "torch": torch.__version__}
    print(f"benchmark {json.dumps(meta)}")
    cols = [("classes", "{:d}"), ("unit_s", "{:.3f}"), ("fwd_full_bwd_units", "{:.2f}"),
            ("fwd_input_bwd_units", "{:.2f}"), ("step_units", "{:.2f}"), ("step_ratio", "{:.3f}"),
            ("cached_step_units", "{:.2f}"), ("cached_ratio", "{:.3f}"), ("pgd_step_units", "{:.2f}"),
            ("pgd_step_ratio", "{:.3f}"), ("pgd100_batch_s", "{:.1f}"), ("train_img_per_s", "{:.2f}"),
            ("achieved_gflop_s", "{:.1f}"), ("mfu_step", "{:.3f}"), ("mfu_pgd", "{:.3f}"),
            ("estimate_tga_zsr_hours", "{:.1f}")]
    print("| " + " | ".join(c for c, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f.format(r[c]) if c in r else "–" for c, f in cols) + " |")
    line = json.dumps({**meta, "results": rows})
    print(line)
    if args.json:
        with open(args.json, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
