"""`bash main.sh gpu-check`: one prepared call that says whether a GPU box trains and evaluates this project
correctly, and how fast: at most 8 minutes on one GPU (`--budget`), `<out>/gpu_check.json` and a
printed table (docs/gpus.md: how to run it and how to read it).

Sections, in this order, each with its share of the budget (what does not fit is skipped, with the
reason, never cut short):
1. correctness (doctor.py's checks): fp32 on the device against the CPU (a training step and an attack
   gradient at fixed perturbations, within fp32's rounding), fp16 / bf16 against fp32, and the device
   paths (CLS-only forward, PGD starts drawn on the device, uint8 images, decoded-cache resize,
   compiled PGD update);
2. training: the TGA-ZSR step of the paper's protocol (K = 2 attack steps) on ViT-B/32 with random
   weights (the real architecture) at the paper's batch of 128, in fp32, amp (fp16 + GradScaler) and
   bf16, eager and torch.compile'd: images/s, peak memory, TFLOP/s (torch's FLOP count of the step) and
   the fraction of the GPU's dense fp16/bf16 peak;
3. evaluation: PGD-100 at the paper's evaluation batch of 256 under amp and fp32: images/s; and the fp16
   attack against the fp32 attack on the same images (robust accuracy, the images whose verdict
   differs, the input-gradient entries that are exactly 0 with and without the attack's loss scale);
4. projection: the wall clock of the paper's TGA-ZSR row (training + PGD-100 on the 16 test sets) and of
   each table of paper.py, on 1 and on N GPUs, from the measured rates. An estimate: the cost of a run
   in units of the measured step (bench.py's FLOP floor), ideal scaling over N GPUs, data loading hidden.

`--cpu-smoke` runs the same script on the CPU with the tiny model, small batches and 10 PGD steps in
under 2 minutes (tests/test_gpu_check.py runs it; `torch.compile` there uses the aot_eager backend:
inductor's C++ build would take the whole budget). Its numbers are not a GPU's.

    bash main.sh gpu-check                            # = python gpu_check.py --out gpu_check
    bash main.sh gpu-check --cpu-smoke --out /tmp/gc  # the plumbing, on the CPU
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

import doctor
import paper
from attacks import GradStats, ce_loss_sum, no_param_grad, per_sample_start, pgd
from datasets import TEST_DATASETS
from datasets.catalog import expected_count
from engine.device import autocast, compile_module, make_scaler, resolve_device
from engine.evaluate import attack_batch
from engine.model import load_clip
from engine.settings import DefaultsShown, Settings, parse_args, parser_defaults
from engine.train import build_method, build_optimizer, trainable_parameters
from reports.paper_runs import eval_units, set_size, train_image_steps, train_units
from reports.paper_tables import table_ids

PAPER = parser_defaults()   # the paper's protocol: batch 128, 10 epochs, PGD-100 at 1/255, test batch 256
GOAL_ROW_MINUTES = 30       # the goal for the TGA-ZSR row on one H100-class GPU (issue 24)
CLASSES = 200               # TinyImageNet's: the text features of the training step


@dataclass(frozen=True)
class Setup:
    """What one gpu-check measures, and with how much time."""
    arch: str
    train_batch: int
    test_batch: int
    pgd_steps: int
    warmup: int              # untimed steps first (kernel selection, torch.compile)
    timed: int               # timed training steps
    compile_backend: str
    budget_s: float
    shares: tuple = (("correctness", 0.15), ("training", 0.55), ("evaluation", 0.25), ("projection", 0.05))


GPU = Setup("ViT-B-32", PAPER["batch_size"], PAPER["test_batch_size"], PAPER["test_numsteps"], 2, 5, "inductor", 480)
SMOKE = Setup("tiny-vit", 16, 16, 10, 1, 2, "aot_eager", 75)


class Clock:
    """The budget: each section may use its share plus what earlier sections left."""

    def __init__(self, setup: Setup):
        self.t0, self.budget, self.shares = time.perf_counter(), setup.budget_s, dict(setup.shares)
        self.section_end = self.t0

    def start(self, section: str) -> None:
        self.section_end = max(self.section_end, time.perf_counter()) + self.shares[section] * self.budget
        self.section_end = min(self.section_end, self.t0 + self.budget)

    def left(self) -> float:
        return self.section_end - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def environment(device) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
           "open_clip": getattr(open_clip, "__version__", "?")}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), gpus=torch.cuda.device_count(),
                   memory_gb=round(torch.cuda.get_device_properties(device).total_memory / 1e9, 1))
    return env


# --- 1. correctness ------------------------------------------------------------------------------------------
def correctness(r: doctor.Report, device) -> None:
    r.run("fp32 vs CPU", doctor.check_against_cpu, device)
    r.run("precisions", doctor.check_precisions, device)
    r.run("paths", doctor.check_paths, device)


# --- 2. training ---------------------------------------------------------------------------------------------
def tga_zsr_setup(arch: str, device):
    """ViT with random weights and the paper's TGA-ZSR settings (configs/tga_zsr.yaml): model, settings, text."""
    torch.manual_seed(0)
    model = load_clip(arch, None, device=device)
    s = Settings.from_args(parse_args(["--Method", "tga_zsr", "--device", "cpu"]))
    prompts = [f"This is a photo of a class{i}" for i in range(CLASSES)]
    with torch.no_grad():
        text = model.encode_text(prompts)
    return model, s, prompts, text


def train_row(setup: Setup, base, s, prompts, text, device, precision: str, compiled: bool, flops: float | None,
              peak: float | None) -> dict:
    """One training configuration: warm-up steps (and the compile), then `setup.timed` timed steps."""
    model = copy.deepcopy(base)
    method = build_method(s, model, text, prompts, [p.split()[-1] for p in prompts], n_train=setup.train_batch)
    if compiled:
        torch._dynamo.reset()
        for tower in (model.image_tower, method.frozen):
            compile_module(tower, backend=setup.compile_backend)
    opt = build_optimizer(s.train, trainable_parameters(model, method.trains))
    scaler = make_scaler(device, precision)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(setup.train_batch, 3, 224, 224, generator=g).to(device)
    y = torch.randint(0, CLASSES, (setup.train_batch,), generator=g).to(device)
    idx = torch.arange(setup.train_batch)

    def step():
        with autocast(device, precision):
            loss = method.step(x, y, idx)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    t0 = time.perf_counter()
    if flops is None and not compiled:  # the step's FLOPs, counted once (the same in every precision)
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
    for _ in range(setup.warmup):
        step()
    sync(device)
    warm_s = time.perf_counter() - t0
    reset_peak(device)
    t0 = time.perf_counter()
    for _ in range(setup.timed):
        loss = step()
    sync(device)
    step_s = (time.perf_counter() - t0) / setup.timed
    row = {"precision": precision, "compiled": compiled, "batch": setup.train_batch, "img_per_s": setup.train_batch / step_s,
           "step_s": step_s, "warmup_s": warm_s, "peak_mem_gb": peak_memory_gb(device), "finite": bool(torch.isfinite(loss)),
           "tflop": flops / 1e12 if flops else None, "tflop_per_s": flops / step_s / 1e12 if flops else None}
    row["peak_fraction"] = row["tflop_per_s"] / peak if peak and row["tflop_per_s"] else None
    del model, method, opt
    torch._dynamo.reset()
    reset_peak(device)
    return row


def training(setup: Setup, device, clock: Clock, r: doctor.Report, peak: float | None) -> list[dict]:
    base, s, prompts, text = tga_zsr_setup(setup.arch, device)
    rows, flops = [], None
    # eager first (seconds each), then compiled, the paper's amp first (minutes each: the compile)
    order = [(p, False) for p in ("fp32", "amp", "bf16")] + [(p, True) for p in ("amp", "bf16", "fp32")]
    last_compile = None
    for precision, compiled in order:
        name = f"train {precision}{' compiled' if compiled else ''}"
        if precision == "amp" and device.type != "cuda":
            r.add(name, "skip", "fp16 + GradScaler is CUDA only")
            continue
        need = (last_compile or 0.25 * clock.left()) if compiled else 0
        if clock.left() <= need:
            r.add(name, "skip", f"over budget ({clock.left():.0f} s of the training share left, "
                                f"{need:.0f} s needed; --budget)")
            continue
        try:
            row = train_row(setup, base, s, prompts, text, device, precision, compiled, flops, peak)
        except Exception as e:  # noqa: BLE001  (out of memory at batch 128 is a finding, not a crash)
            r.add(name, "FAIL", f"{type(e).__name__}: {str(e)[:300]}")
            continue
        flops = flops or (row["tflop"] * 1e12 if row["tflop"] else None)
        if compiled:
            last_compile = row["warmup_s"]
        rows.append(row)
        mem = f", peak {row['peak_mem_gb']:.1f} GB" if row["peak_mem_gb"] is not None else ""
        frac = f", {100 * row['peak_fraction']:.1f} % of peak" if row["peak_fraction"] else ""
        r.add(name, "ok" if row["finite"] else "FAIL", f"{row['img_per_s']:.1f} img/s ({row['step_s'] * 1e3:.0f} ms per "
              f"step of {setup.train_batch}), {row['tflop_per_s']:.3g} TFLOP/s{frac}{mem}; warm-up {row['warmup_s']:.0f} s"
              + ("" if row["finite"] else ": the loss is not finite"))
    return rows


# --- 3. evaluation -------------------------------------------------------------------------------------------
def evaluation(setup: Setup, device, clock: Clock, r: doctor.Report) -> dict:
    model, s, prompts, text = tga_zsr_setup(setup.arch, device)
    model.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(setup.test_batch, 3, 224, 224, generator=g).to(device)
    idx = torch.arange(setup.test_batch)
    with torch.no_grad():
        y = model.logits(x, text).argmax(1)   # every image starts correct: robust accuracy is what the attack leaves
    settings = {"attack": "pgd", "norm": "l_inf", "eps": float(PAPER["test_eps"][0]), "steps": setup.pgd_steps,
                "step_size": float(PAPER["test_stepsize"]), "seed": 0}
    out = {"batch": setup.test_batch, "steps": setup.pgd_steps, "rows": []}
    survived = {}
    with no_param_grad(model):
        for precision in ("amp", "fp32"):
            if clock.left() <= 0:
                r.add(f"PGD-{setup.pgd_steps} {precision}", "skip", "over budget (--budget)")
                continue
            with autocast(device, precision):   # warm-up: kernels, the compiled start generator (CUDA)
                attack_batch(model, x, y, idx, text, {**settings, "steps": 1})
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad(), autocast(device, precision):
                model.logits(x, text)
            with autocast(device, precision):
                x_adv = attack_batch(model, x, y, idx, text, settings)
            with torch.no_grad(), autocast(device, precision):
                ok = model.logits(x_adv, text).argmax(1) == y
            sync(device)
            seconds = time.perf_counter() - t0
            survived[precision] = ok
            row = {"precision": precision, "img_per_s": setup.test_batch / seconds, "batch_s": seconds,
                   "robust_acc": 100 * float(ok.float().mean())}
            out["rows"].append(row)
            r.add(f"PGD-{setup.pgd_steps} {precision}", "ok", f"{row['img_per_s']:.1f} img/s ({seconds:.2f} s per batch of "
                  f"{setup.test_batch}); robust {row['robust_acc']:.1f} % of images that start correct")
        out["fp16_vs_fp32"] = fp16_against_fp32(model, x, y, idx, text, settings, survived, device, r)
    return out


def fp16_against_fp32(model, x, y, idx, text, settings, survived, device, r: doctor.Report) -> dict | None:
    """The fp16 attack against the fp32 one on the same images, and the zero entries of one fp16 step's input
    gradient with the attack's loss scale (what attacks.pgd does) and without (what it did before)."""
    if len(survived) < 2:
        return None
    eps = settings["eps"] / 255

    def objective(xa):
        return ce_loss_sum(model.logits(xa, text), y)

    start = per_sample_start(x, idx, eps, "l_inf", settings["seed"])
    scaled = GradStats()
    with autocast(device, "amp"):
        pgd(objective, x, eps, eps, 1, init=start, stats=scaled)
        d = start.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x + d).float(), d)
    unscaled = float((grad == 0).float().mean())
    same = float((survived["amp"] == survived["fp32"]).float().mean())
    out = {"robust_amp": 100 * float(survived["amp"].float().mean()), "robust_fp32": 100 * float(survived["fp32"].float().mean()),
           "same_verdict": same, "zero_grad_scaled": scaled.zero_fraction, "zero_grad_unscaled": unscaled,
           "loss_scale": scaled.scale}
    out["gap_points"] = out["robust_amp"] - out["robust_fp32"]
    # One image of the batch is 100 / batch points; the two attacks may part ways on a few images whose gradient
    # is within fp16's rounding of 0. More than 1 % of the images, or any zero entries left after scaling
    # beyond 1e-4 of them (what fp16's 11 bits round to 0 of a healthy gradient), is a weakened attack.
    ok = same >= 0.99 and scaled.zero_fraction <= 1e-4
    r.add("fp16 vs fp32 attack", "ok" if ok else "FAIL", f"robust {out['robust_amp']:.1f} % vs {out['robust_fp32']:.1f} %, "
          f"same verdict on {100 * same:.1f} % of images; exact-zero gradient entries {100 * scaled.zero_fraction:.3f} % "
          f"at loss scale {scaled.scale:g} ({100 * unscaled:.3f} % unscaled)")
    return out


# --- 4. projection -------------------------------------------------------------------------------------------
def rates(train_rows: list[dict], eval_out: dict) -> dict:
    """The rates a paper run would see: the fastest training configuration, and amp's PGD (the paper's
    precision; else the fastest measured)."""
    best = max(train_rows, key=lambda row: row["img_per_s"]) if train_rows else None
    rows = {row["precision"]: row for row in eval_out.get("rows", [])}
    ev = rows.get("amp") or (max(rows.values(), key=lambda row: row["img_per_s"]) if rows else None)
    if best is None or ev is None:
        return {}
    return {"train_img_per_s": best["img_per_s"], "train_config": best["precision"] + (" compiled" if best["compiled"] else ""),
            "pgd_img_per_s": ev["img_per_s"], "pgd_steps": eval_out["steps"], "eval_precision": ev["precision"]}


def projection(measured: dict, gpus: int) -> dict:
    """Hours of the TGA-ZSR row and of each table from the measured rates (see the module docstring)."""
    # a PGD-k batch was measured: per image it costs 2k + 2 forward units, the paper's PGD-100 202
    pgd100 = measured["pgd_img_per_s"] * eval_units("pgd", measured["pgd_steps"], 1) / eval_units(
        "pgd", PAPER["test_numsteps"], 1)
    row = doctor.estimate_hours(measured["train_img_per_s"], pgd100 * (PAPER["test_numsteps"] + 1))
    tga = Settings.from_args(parse_args(["--Method", "tga_zsr"]))
    train_unit_rate = measured["train_img_per_s"] * train_units(tga)
    eval_unit_rate = pgd100 * eval_units("pgd", PAPER["test_numsteps"], 1)
    plan = paper.build_plan(table_ids(), mini=False)
    tables, unknown = {}, set()
    for run in plan.runs.values():
        image_steps = train_image_steps(run.settings.train) or 0
        t_units = image_steps * train_units(run.settings)
        e_units = 0.0
        for ev in run.evals.values():
            e = ev.settings.eval
            for d in ev.datasets:
                n = set_size(d, "test", run.settings.train.root)
                if n is None:
                    unknown.add(d)
                    continue
                n = min(n, e.n_samples) if e.n_samples else n
                e_units += n * eval_units(e.attack, e.test_numsteps, e.test_eps)
        hours = (t_units / train_unit_rate + e_units / eval_unit_rate) / 3600
        for t in run.tables:
            tables[t] = tables.get(t, 0.0) + hours
        tables["all (each run once)"] = tables.get("all (each run once)", 0.0) + hours
    order = {t: i for i, t in enumerate(table_ids())}
    tables = dict(sorted(tables.items(), key=lambda kv: order.get(kv[0], len(order))))
    return {"gpus": gpus, "rates": {**measured, "pgd100_img_per_s": pgd100},
            "tga_zsr_row_hours": row["total_hours"], "tga_zsr_row": row, "tables_hours": tables,
            "goal_row_minutes": GOAL_ROW_MINUTES, "goal_met": row["total_hours"] * 60 <= GOAL_ROW_MINUTES,
            "unknown_test_sets": sorted(unknown), "test_images": sum(expected_count(n, "test") or 0 for n in TEST_DATASETS),
            "note": "from the measured rates, ideal scaling over GPUs, data loading hidden"}


def hm(hours: float) -> str:
    minutes = hours * 60
    return f"{minutes:.1f} min" if minutes < 90 else f"{hours:.1f} h"


def print_tables(setup: Setup, result: dict) -> None:
    print(f"\n| training: TGA-ZSR step, {setup.arch}, batch {setup.train_batch} | img/s | ms/step | peak GB | TFLOP/s | of peak |")
    print("|---|---|---|---|---|---|")
    for row in result["training"]:
        name = row["precision"] + (" compiled" if row["compiled"] else " eager")
        mem = f"{row['peak_mem_gb']:.1f}" if row["peak_mem_gb"] is not None else "–"
        frac = f"{100 * row['peak_fraction']:.1f} %" if row["peak_fraction"] else "–"
        print(f"| {name} | {row['img_per_s']:.1f} | {row['step_s'] * 1e3:.0f} | {mem} | {row['tflop_per_s']:.3g} | {frac} |")
    ev = result["evaluation"]
    print(f"\n| evaluation: PGD-{ev.get('steps')}, batch {ev.get('batch')} | img/s | s/batch | robust % |\n|---|---|---|---|")
    for row in ev.get("rows", []):
        print(f"| {row['precision']} | {row['img_per_s']:.1f} | {row['batch_s']:.2f} | {row['robust_acc']:.1f} |")
    p = result.get("projection")
    if p:
        n = p["gpus"]
        what = "the tiny model on the CPU: not a GPU's numbers" if setup.arch != GPU.arch else p["note"]
        print(f"\n| projection (an estimate: {what}) | 1 GPU | {n} GPUs |\n|---|---|---|")
        row_h = p["tga_zsr_row_hours"]
        print(f"| TGA-ZSR row: {p['tga_zsr_row']['train_steps']} steps + PGD-100 on {p['test_images']} images "
              f"| {hm(row_h)} | {hm(row_h / n)} |")
        for t, h in p["tables_hours"].items():
            print(f"| {t} | {hm(h)} | {hm(h / n)} |")
        goal = "met" if p["goal_met"] else "not met"
        print(f"\nTGA-ZSR row on one GPU: {hm(row_h)} projected (goal ≤ {GOAL_ROW_MINUTES} min on an H100-class GPU: "
              f"{goal}; training at {p['rates']['train_img_per_s']:.3g} img/s ({p['rates']['train_config']}), "
              f"PGD-100 at {p['rates']['pgd100_img_per_s']:.3g} img/s)")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("gpu-check: does this GPU box train and evaluate correctly, and how fast (≤ 8 min)",
                                formatter_class=DefaultsShown, allow_abbrev=False)
    p.add_argument("--out", default="gpu_check", help="folder of gpu_check.json")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N (cpu with --cpu-smoke)")
    p.add_argument("--cpu-smoke", "--cpu_smoke", dest="cpu_smoke", action="store_true",
                   help="the same on the CPU with the tiny model, in under 2 minutes (the test suite runs it)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds in all (default {GPU.budget_s:g}; {SMOKE.budget_s:g} with --cpu-smoke)")
    p.add_argument("--gpus", type=int, default=None, help="N of the projection on N GPUs (default: visible GPUs, at least 8)")
    p.add_argument("--peak_tflops", type=float, default=None, help="the GPU's dense fp16/bf16 peak (default: known GPUs)")
    return p


def main(argv=None) -> int:
    a = get_args_parser().parse_args(argv)
    setup = SMOKE if a.cpu_smoke else GPU
    if a.budget:
        setup = Setup(**{**asdict(setup), "budget_s": a.budget})
    device = torch.device("cpu") if a.cpu_smoke else resolve_device(a.device)
    if device.type != "cuda" and not a.cpu_smoke:
        raise SystemExit("gpu-check: no GPU is visible (torch.cuda.is_available() is False). On a CPU: --cpu-smoke")
    logging.disable(logging.WARNING)   # open_clip's "initialized randomly": random weights are the point here
    clock = Clock(setup)
    env = environment(device)
    print(f"gpu-check: torch {env['torch']} (CUDA {env['cuda']}), {env.get('gpu', 'CPU')}"
          + (f" ({env['gpus']} visible, {env['memory_gb']} GB)" if "gpu" in env else "")
          + f", open_clip {env['open_clip']}; budget {setup.budget_s:.0f} s" + (" (--cpu-smoke)" if a.cpu_smoke else ""),
          flush=True)
    r = doctor.Report()
    peak = doctor.peak_tflops(device, a.peak_tflops)
    gpus = a.gpus or max(8, env.get("gpus", 1))
    result = {"environment": env, "setup": asdict(setup), "training": [], "evaluation": {}}
    clock.start("correctness")
    correctness(r, device)
    clock.start("training")
    try:
        result["training"] = training(setup, device, clock, r, peak)
    except Exception as e:  # noqa: BLE001
        r.add("training", "FAIL", f"{type(e).__name__}: {str(e)[:300]}")
    clock.start("evaluation")
    try:
        result["evaluation"] = evaluation(setup, device, clock, r)
    except Exception as e:  # noqa: BLE001
        r.add("evaluation", "FAIL", f"{type(e).__name__}: {str(e)[:300]}")
    clock.start("projection")
    measured = rates(result["training"], result["evaluation"])
    if measured:
        result["projection"] = projection(measured, gpus)
    else:
        r.add("projection", "skip", "no training or evaluation rate was measured")
    result.update(checks=r.checks, failed=r.failed, seconds=round(clock.elapsed(), 1),
                  verdict="FAIL" if r.failed else "PASS", peak_tflops=peak)
    print_tables(setup, result)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(f"\ngpu-check: {result['verdict']} in {result['seconds']:.0f} s "
          f"({sum(c['status'] == 'ok' for c in r.checks)} ok, {sum(c['status'] == 'skip' for c in r.checks)} skipped, "
          f"{sum(c['status'] == 'FAIL' for c in r.checks)} failed); {out / 'gpu_check.json'} written", flush=True)
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
