"""The self-check a GPU user runs first: `bash main.sh doctor` (= `python doctor.py`), a few minutes.

Exercises every device path this machine has, on the tiny random-weight model and on ViT-B/32 with
random weights, and says what a run of `bash main.sh tga_zsr` would meet:
* agreement with the CPU in fp32 (TF32 off) on identical weights: one TGA-ZSR training step with a
  fixed perturbation (loss, gradients) and the attack's input gradient at a fixed δ (loss, gradient,
  signs), within a tolerance derived from fp32's rounding (`tolerance`): a wrong dtype or a wrong
  kernel fails, a healthy device passes whatever its random generator draws;
* fp16 autocast + GradScaler (CUDA), bf16 autocast, the CLS-only attack path, the per-sample PGD
  starts drawn on the device, uint8 images turned into [0, 1] on the device, the decoded cache's
  Resize + CenterCrop on the device against PIL's, the compiled PGD update against eager;
* `--compile`: two TGA-ZSR and two Vision-based (Grad-CAM) steps compiled equal eager, and no
  recompilation for a new batch size (inductor on a GPU; on the CPU the same capture with the
  eager backend, as the test suite: inductor's C++ build would take the whole budget);
* DDP over every visible GPU (NCCL): two steps of 2+ processes equal one process (`--ddp_procs N`
  runs it with gloo on the CPU too);
* ViT-B/32: peak memory of a training step at batch 128 and of a PGD step at the test batch (CUDA),
  training and PGD images/s, FLOPs counted by torch, MFU against the device's peak, and the
  estimated wall clock of `bash main.sh tga_zsr` (training + PGD-100 on the 16 test sets).
Prints a short report, writes `doctor.json`, exits 1 if any check fails; checks this machine
cannot run are listed as skipped, with the reason.

    bash main.sh doctor                       # = python doctor.py
    python doctor.py --device cpu --ddp_procs 2 --out /tmp/doctor.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as T

from attacks import compiled_linf_update, linf_update, no_param_grad, per_sample_start, pgd
from engine.checkpoint import load_file
from engine.model import load_clip
from datasets import TEST_DATASETS, to_unit
from datasets.catalog import expected_count
from datasets.pil_resize import PilResizeCenterCrop
from engine.device import autocast, compile_module, make_scaler, resolve_device
from engine.train import build_method
from engine.settings import DefaultsShown, Settings, parse_args
from engine.train import build_optimizer, trainable_parameters

ROOT = Path(__file__).resolve().parent
PROMPTS = [f"This is a photo of a thing{i}" for i in range(6)]
# Dense fp16/bf16 tensor-core peak per GPU in TFLOP/s, from the vendors' data sheets (an MFU is only
# as good as this number: pass --peak_tflops for another device or clock).
PEAK_TFLOPS = {"H100 SXM": 989, "H100 80GB HBM3": 989, "H100 PCIe": 756, "H100": 756, "H200": 989, "A100": 312,
               "L40S": 362, "L40": 181, "L4": 121, "A10G": 70, "A10": 125, "RTX 4090": 165, "RTX 3090": 71,
               "V100": 125, "T4": 65}
PIL_RESIZE = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(224), T.PILToTensor()])
TRAIN_IMAGES, EPOCHS, BATCH, TEST_BATCH, PGD_STEPS = 100_000, 10, 128, 256, 100   # the paper's protocol


class Report:
    def __init__(self):
        self.checks: list[dict] = []

    def add(self, name: str, status: str, detail: str, **numbers) -> None:
        self.checks.append({"check": name, "status": status, "detail": detail, **numbers})
        print(f"[{status:>4}] {name:<22} {detail}", flush=True)

    def run(self, name: str, fn, *args) -> None:
        """One check; an exception is a failure with its message, not a crash of the doctor."""
        try:
            fn(self, *args)
        except Exception as e:  # noqa: BLE001  (every failure is reported, the others still run)
            self.add(name, "FAIL", f"{type(e).__name__}: {e}")

    @property
    def failed(self) -> bool:
        return any(c["status"] == "FAIL" for c in self.checks)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ over all elements (float64 on the CPU)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def tiny_method(device, name: str = "tga_zsr", *extra: str):
    torch.manual_seed(0)
    model = load_clip("tiny-vit", None, device=device)
    s = Settings.from_args(parse_args(["-c", "configs/synthetic.yaml", "--Method", name, "--device", "cpu",
                                       "--optimizer", "sgd", *extra]))
    with torch.no_grad():
        text = model.encode_text(PROMPTS)
    method = build_method(s, model, text, PROMPTS, [f"thing{i}" for i in range(6)], n_train=8)
    return model, method, s


def batch(device, n: int = 4, size: int = 32):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g).to(device), torch.tensor([0, 3, 3, 5, 1, 2, 4, 0][:n], device=device)


def step_terms(method, model, x, y, device, precision: str, seed: int = 2):
    """One training step's loss terms and the visual gradients (the attack's starts from `seed`)."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    with autocast(device, precision):
        terms = method.step(x, y, torch.arange(x.shape[0]))
    make_scaler(device, precision).scale(terms["loss"]).backward()
    grads = torch.cat([p.grad.flatten().float() for p in model.visual.parameters() if p.grad is not None])
    return {k: float(v.detach()) for k, v in terms.items()}, grads


# --- fp32 on the device against the CPU ----------------------------------------------------------------------
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
# The step's longest reduction: the tiny tower's patch embedding sums 3·32·32 products per output.
LONGEST_REDUCTION = 3 * 32 * 32
MARGIN = 10  # for the step's conditioning (normalisations, softmax, a loss of a few terms)


def tolerance(dtype: torch.dtype = torch.float32, reductions: int = LONGEST_REDUCTION) -> float:
    """Relative tolerance between two correct evaluations of the step in `dtype` on two devices.

    The devices sum in different orders: a sum of N terms of random sign carries a rounding error of
    ~√N·u of its size (u: the dtype's unit roundoff), and the two errors do not cancel; MARGIN covers
    the conditioning of the few normalisations and softmaxes after it. fp32 with the tiny tower:
    10·√3072·2⁻²⁴ = 3.3e-5. A kernel in another dtype rounds at its own u, at least 2⁻¹¹ = 4.9e-4 for
    TF32 and fp16 (15× the tolerance), and a wrong kernel is wrong by far more."""
    return MARGIN * math.sqrt(reductions) * UNIT_ROUNDOFF[dtype]


class FixedPerturbation:
    """The training attack replaced by a fixed δ, drawn once on the CPU and copied to each device, so that
    a comparison checks the step's arithmetic: PGD's sign steps would flip wherever a gradient is ~0,
    and the random start is drawn from each device's own generator (CUDA's is not the CPU's): with
    another start the TGA-ZSR step's loss moves by 1e-2 and its gradient by 0.4 (measured on the tiny
    model), which no tolerance of rounding can tell from a bug."""

    def __init__(self, delta: torch.Tensor):
        self.delta = delta

    def __call__(self, model, x, y, text_features=None, objective=None):
        return (x + self.delta.to(x.device)).clamp(0, 1)


@contextlib.contextmanager
def exact_fp32(device):
    """fp32 matmuls and convolutions in fp32 while comparing: no TF32 (cuDNN allows it for convolutions by
    default, and `--tf32` for matmuls), which rounds at 2⁻¹¹."""
    if device.type != "cuda":
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
              torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[:2]
        torch.set_float32_matmul_precision(before[2])


def fixed_delta(x: torch.Tensor, eps: float = 4 / 255) -> torch.Tensor:
    return torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(7))


def reference_step(device, precision: str = "fp32", seed: int = 2) -> dict:
    """What the comparison compares, on `device`: one TGA-ZSR training step of the tiny model with a fixed
    perturbation (its loss terms and visual gradients) and one attack gradient at a fixed δ (the
    evaluation's summed CE and its input gradient), in `precision`. `seed`: the global generator's
    seed at the step (nothing may depend on it)."""
    model, method, _ = tiny_method(device)
    # The trained tower a fixed step away from the frozen one: at θ = θ₀ the clean maps of both are equal,
    # the L_AMC distance is 0 and its gradient is a ratio of roundings (2e-5 apart between two CPU kernels)
    with torch.no_grad():
        for i, p in enumerate(model.visual.parameters()):
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(100 + i)).to(device))
    x, y = batch(torch.device("cpu"))
    delta = fixed_delta(x)
    method.attack = FixedPerturbation(delta)
    xd, yd = x.to(device), y.to(device)
    with exact_fp32(device):
        terms, grads = step_terms(method, model, xd, yd, device, precision, seed)
        model.eval()
        text = model.encode_text(PROMPTS).detach()
        with no_param_grad(model.clip), torch.enable_grad(), autocast(device, precision):
            d = delta.to(device).requires_grad_(True)
            loss = F.cross_entropy(model.logits(xd + d, text).float(), yd, reduction="sum")
            (attack_grad,) = torch.autograd.grad(loss, d)
    return {"terms": terms, "grads": grads.cpu(), "attack_loss": float(loss.detach()), "attack_grad": attack_grad.cpu()}


def compare_steps(r: Report, got: dict, ref: dict, tol: float, what: str = "vs CPU") -> bool:
    """The training step and the attack gradient of `got` against `ref`, each within `tol` (relative)."""
    loss_err = abs(got["terms"]["loss"] - ref["terms"]["loss"]) / abs(ref["terms"]["loss"])
    grad_err = rel(got["grads"], ref["grads"])
    ok_train = loss_err < tol and grad_err < tol
    r.add(f"train step {what}", "ok" if ok_train else "FAIL", f"fixed δ: loss rel {loss_err:.1e}, gradient rel "
          f"{grad_err:.1e} (tolerance {tol:.1e})", loss_rel=loss_err, grad_rel=grad_err, tolerance=tol)
    a_err = abs(got["attack_loss"] - ref["attack_loss"]) / abs(ref["attack_loss"])
    g_err = rel(got["attack_grad"], ref["attack_grad"])
    # the sign step's direction: wherever the reference gradient is clearly away from 0 (more than the
    # tolerance of its largest entry), both must take the same sign
    g_ref, g_got = ref["attack_grad"], got["attack_grad"]
    clear = g_ref.abs() > tol * g_ref.abs().max()
    flipped = float((g_got.sign() != g_ref.sign())[clear].float().mean()) if bool(clear.any()) else 0.0
    ok_attack = a_err < tol and g_err < tol and flipped == 0.0
    r.add(f"attack gradient {what}", "ok" if ok_attack else "FAIL", f"fixed δ: loss rel {a_err:.1e}, input gradient "
          f"rel {g_err:.1e} (tolerance {tol:.1e}), signs flipped where clearly non-zero: {100 * flipped:.2f} %",
          loss_rel=a_err, grad_rel=g_err, flipped=flipped, tolerance=tol)
    return ok_train and ok_attack


def check_against_cpu(r: Report, device) -> None:
    if device.type == "cpu":
        r.add("fp32 vs CPU", "skip", "the device is the CPU")
        return
    compare_steps(r, reference_step(device), reference_step(torch.device("cpu")), tolerance(torch.float32))


def check_precisions(r: Report, device) -> None:
    model, method, _ = tiny_method(device)
    x, y = batch(device)
    method.attack = FixedPerturbation(fixed_delta(x.cpu()))  # the arithmetic, not PGD's sign flips
    ref, _ = step_terms(method, model, x, y, device, "fp32")
    for precision, tol in (("amp", 1e-2), ("bf16", 5e-2)):
        if precision == "amp" and device.type != "cuda":
            r.add("fp16 + GradScaler", "skip", "CUDA only")
            continue
        terms, grads = step_terms(method, model, x, y, device, precision)
        err = abs(terms["loss"] - ref["loss"]) / abs(ref["loss"])
        finite = bool(torch.isfinite(grads).all())
        # fp16 keeps 11 significant bits, bf16 8: the loss moves by a few of those roundings.
        ok = finite and err < tol
        r.add("fp16 + GradScaler" if precision == "amp" else "bf16 autocast", "ok" if ok else "FAIL",
              f"loss rel to fp32 {err:.1e} (tol {tol:g}), gradients finite: {finite}", loss_rel=err)


def check_paths(r: Report, device) -> None:
    model, _, _ = tiny_method(device)
    model.eval()
    x, y = batch(device)
    text = model.encode_text(PROMPTS).detach()
    with torch.no_grad():
        full = model.logits_from_tokens(model.image_tower(x), text)
        cls = model.logits(x, text)
    err = rel(cls, full)
    r.add("CLS-only path", "ok" if err < 1e-5 else "FAIL", f"logits rel to the full forward {err:.1e} (tol 1e-5)")
    idx = torch.tensor([0, 7, 123456, 2 ** 31 - 1])
    same = torch.equal(per_sample_start(x, idx, 1 / 255, "l_inf", 0, on_device=True).cpu(),
                       per_sample_start(x, idx, 1 / 255, "l_inf", 0, on_device=False).cpu())
    r.add("per-sample starts", "ok" if same else "FAIL", f"device route bit-identical to torch.Generator: {same}")
    u8 = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    same = torch.equal(to_unit(u8.to(device)).cpu(), u8.float().div(255))
    r.add("uint8 -> [0, 1]", "ok" if same else "FAIL", f"bit-identical to ToTensor: {same}")
    # --decoded_cache: Resize(256) + CenterCrop(224) of 64x64 images on the device against PIL's
    g = torch.Generator().manual_seed(3)
    imgs = torch.randint(0, 256, (32, 3, 64, 64), dtype=torch.uint8, generator=g)
    ours = PilResizeCenterCrop()(imgs.to(device)).cpu()
    pil = torch.stack([PIL_RESIZE(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in imgs])
    same = torch.equal(ours, pil)
    r.add("decoded-cache resize", "ok" if same else "FAIL", f"32 TinyImageNet-sized images, bit-identical to PIL: {same}")
    # --compile of the evaluation attack's update: inductor on every device (one small kernel, seconds)
    x = torch.rand(6, 3, 32, 32, generator=g).to(device)
    delta, grad = ((torch.rand(6, 3, 32, 32, generator=g) - 0.5) * 0.03).to(device), torch.randn(6, 3, 32, 32).to(device)
    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        r.add("compiled PGD update", "skip", "inductor needs a C++ compiler on the CPU; none found")
        return
    same = torch.equal(compiled_linf_update()(delta, grad, x, 1 / 255, 4 / 255), linf_update(delta, grad, x, 1 / 255, 4 / 255))
    r.add("compiled PGD update", "ok" if same else "FAIL", f"inductor, bit-identical to eager: {same}")


def check_compile(r: Report, device) -> None:
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    # inductor on a GPU: fused kernels round differently (FMA), ~1e-6 per op; aot_eager runs eager kernels.
    tol = 1e-3 if backend == "inductor" else 1e-4
    for name in ("tga_zsr", "tga_zsr_visual"):
        losses = []
        for compiled in (False, True):
            torch._dynamo.reset()
            model, method, s = tiny_method(device, name)
            if compiled:
                for tower in (model.image_tower, method.frozen):
                    compile_module(tower, backend=backend)
            opt = build_optimizer(s.train, trainable_parameters(model, method.trains))
            x, y = batch(device)
            run = []
            for _ in range(2):
                terms, _ = step_terms(method, model, x, y, device, "fp32")
                opt.step()
                run.append(terms["loss"])
            losses.append(run)
        err = max(abs(a - b) / abs(b) for a, b in zip(losses[1], losses[0]))
        r.add(f"compile {name}", "ok" if err < tol else "FAIL",
              f"{backend}: 2 steps, loss rel to eager {err:.1e} (tol {tol:g})", loss_rel=err)
    frames = torch._dynamo.utils.counters["frames"]
    before = frames["ok"]
    with torch.no_grad():
        for n in (4, 3, 5):
            model.image_tower(batch(device, n)[0])
    extra = frames["ok"] - before
    r.add("compile batch sizes", "ok" if extra <= 1 else "FAIL",
          f"no-grad forwards at batch 4, 3, 5: {extra} new graph(s) (at most 1: the batch is dynamic)")


def check_ddp(r: Report, device, procs: int) -> None:
    if procs < 2:
        r.add("DDP", "skip", "fewer than 2 GPUs (--ddp_procs 2 checks gloo on the CPU)")
        return
    tmp = Path(tempfile.mkdtemp(prefix="doctor_ddp_"))
    common = ["-c", "configs/synthetic.yaml", "--device", device.type, "--max_steps", "2", "--train_eps", "0",
              "--learning_rate", "1e-3", "--no_eval", "--batch_size", str(4 * procs), "--output_dir", str(tmp)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, launcher in (("one", [sys.executable]),
                           ("ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    "--nproc_per_node", str(procs)])):
        out = subprocess.run(launcher + ["tga_zsr.py", *common, "--name", name], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            r.add("DDP", "FAIL", f"{name} run exited {out.returncode}: {out.stderr.strip()[-300:]}")
            return
    a, b = (load_file(tmp / n / "last.pt")["vision_encoder_state_dict"] for n in ("one", "ddp"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    backend = "NCCL" if device.type == "cuda" else "gloo"
    # the same global batch of 4·N images: gradients averaged in another order, ~1e-7 per weight
    r.add("DDP", "ok" if diff < 1e-5 else "FAIL",
          f"{backend}, {procs} processes vs 1, 2 steps: max weight difference {diff:.1e} (tol 1e-5)", max_diff=diff)


# --- ViT-B/32: memory, speed, MFU, the estimate ------------------------------------------------------------------
def peak_tflops(device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return float(value)
    return None


def measure_vit(r: Report, device, precision: str, train_batch: int, test_batch: int, peak: float | None) -> dict:
    torch.manual_seed(0)
    model = load_clip("ViT-B-32", None, device=device)
    s = Settings.from_args(parse_args(["--Method", "tga_zsr", "--device", "cpu"]))
    prompts = [f"This is a photo of a class{i}" for i in range(200)]
    with torch.no_grad():
        text = model.encode_text(prompts)
    method = build_method(s, model, text, prompts, [f"class{i}" for i in range(200)])
    opt = build_optimizer(s.train, trainable_parameters(model, method.trains))
    scaler = make_scaler(device, precision)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(train_batch, 3, 224, 224, generator=g).to(device)
    y = torch.randint(0, 200, (train_batch,), generator=g).to(device)
    xt = torch.rand(test_batch, 3, 224, 224, generator=g).to(device)
    yt = torch.randint(0, 200, (test_batch,), generator=g).to(device)

    def train_step():
        with autocast(device, precision):
            loss = method.step(x, y, torch.arange(train_batch))["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def pgd_step():
        model.eval()
        with no_param_grad(model.clip), autocast(device, precision):
            pgd(lambda xa: F.cross_entropy(model.logits(xa, text), yt, reduction="sum"), xt, 1 / 255, 1 / 255, 1)
        model.image_tower.train()

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    out = {}
    for name, fn, n in (("train", train_step, train_batch), ("pgd", pgd_step, test_batch)):
        with FlopCounterMode(display=False) as counter:
            fn()  # the warm-up (kernel selection, caches) counts the FLOPs
        flops = counter.get_total_flops()
        seconds = timed(fn)
        out[name] = {"batch": n, "seconds": seconds, "img_per_s": n / seconds, "tflop": flops / 1e12,
                     "tflop_per_s": flops / seconds / 1e12}
        if device.type == "cuda":
            out[name]["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        if peak:
            out[name]["mfu"] = out[name]["tflop_per_s"] / peak
        mem = f", peak memory {out[name]['peak_mem_gb']:.1f} GB" if "peak_mem_gb" in out[name] else ""
        mfu = f", MFU {100 * out[name]['mfu']:.1f} % of {peak:g} TFLOP/s" if peak else ", MFU n/a (--peak_tflops)"
        what = "TGA-ZSR step (K=2)" if name == "train" else "PGD step"
        r.add(f"ViT-B/32 {name}", "info", f"{what} at batch {n}, {precision}: {n / seconds:.1f} img/s, "
              f"{flops / seconds / 1e12:.3g} TFLOP/s{mfu}{mem}")
    return out


def estimate_hours(train_img_per_s: float, pgd_step_img_per_s: float) -> dict:
    """Wall clock of `bash main.sh tga_zsr` from measured throughputs (a TGA-ZSR step, one PGD step):
    linear in the number of images, so an extrapolation where the measured batch is small (CPU)."""
    steps = math.ceil(TRAIN_IMAGES / BATCH) * EPOCHS
    train_s = steps * BATCH / train_img_per_s
    test_images = sum(expected_count(n, "test") or 0 for n in TEST_DATASETS)
    # PGD-100 = 100 (forward + input backward) + a clean and a final forward (≈ 1 step)
    eval_s = test_images * (PGD_STEPS + 1) / pgd_step_img_per_s
    return {"train_steps": steps, "train_hours": train_s / 3600, "test_images": test_images,
            "eval_hours": eval_s / 3600, "total_hours": (train_s + eval_s) / 3600}


def estimate(r: Report, speed: dict) -> dict:
    est = estimate_hours(speed["train"]["img_per_s"], speed["pgd"]["img_per_s"])
    steps, test_images = est["train_steps"], est["test_images"]
    train_s, eval_s = est["train_hours"] * 3600, est["eval_hours"] * 3600
    r.add("estimate tga_zsr", "info", f"training {steps} steps ≈ {train_s / 3600:.2f} h, PGD-100 on "
          f"{test_images} test images ≈ {eval_s / 3600:.2f} h, total ≈ {(train_s + eval_s) / 3600:.2f} h (estimate: "
          "measured step times × counts; data loading assumed hidden)")
    return est


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("doctor.py", description="what a GPU run of this project would meet, checked in "
                                "minutes", formatter_class=DefaultsShown, allow_abbrev=False)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--ddp_procs", type=int, default=None, help="processes of the DDP check (default: visible GPUs)")
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak for the MFU (default: known GPUs)")
    p.add_argument("--train_batch", type=int, default=None, help="ViT-B/32 step batch (default 128 GPU, 4 CPU)")
    p.add_argument("--test_batch", type=int, default=None, help="ViT-B/32 PGD batch (default 256 GPU, 4 CPU)")
    p.add_argument("--out", default="doctor.json", help="where the report's JSON goes")
    return p


def main(argv=None) -> int:
    a = get_args_parser().parse_args(argv)
    logging.disable(logging.WARNING)   # open_clip's "initialized randomly" and the like
    t0 = time.time()
    device = resolve_device(a.device)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    procs = a.ddp_procs if a.ddp_procs is not None else (gpus if gpus >= 2 else 0)
    print(f"doctor: torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)}, {gpus} visible)" if gpus else "")
          + f", {torch.get_num_threads()} CPU threads", flush=True)
    r = Report()
    r.run("fp32 vs CPU", check_against_cpu, device)
    r.run("precisions", check_precisions, device)
    r.run("paths", check_paths, device)
    r.run("compile", check_compile, device)
    r.run("DDP", check_ddp, device, procs)
    precision = "amp" if device.type == "cuda" else "fp32"
    train_b = a.train_batch or (BATCH if device.type == "cuda" else 4)
    test_b = a.test_batch or (TEST_BATCH if device.type == "cuda" else 4)
    speed, est = {}, {}
    try:
        speed = measure_vit(r, device, precision, train_b, test_b, peak_tflops(device, a.peak_tflops))
        est = estimate(r, speed)
    except Exception as e:  # noqa: BLE001  (out of memory at batch 128 is a finding, not a crash)
        r.add("ViT-B/32", "FAIL", f"{type(e).__name__}: {e}")
    if device.type != "cuda":
        r.add("GPU paths", "skip", "no GPU: fp16 + GradScaler, inductor, NCCL DDP, peak memory at batch 128 and "
              "the GPU estimate run on a CUDA machine")
    result = {"torch": torch.__version__, "device": str(device), "seconds": round(time.time() - t0, 1),
              "failed": r.failed, "checks": r.checks, "speed": speed, "estimate": est}
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"doctor: {'FAILED' if r.failed else 'passed'} in {time.time() - t0:.0f} s; {a.out} written", flush=True)
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
