"""The GPU path's defects that a CPU can show (docs/gpus.md): a resume on fewer GPUs, `--tf32` with
mixed precision, fp16 attack gradients, and the doctor's comparison of a device with the CPU.

    python -m pytest -q tests/test_gpu_path.py
"""
import json
import logging

import pytest
import torch

import attacks
import doctor
import tga_zsr
from engine import device, evaluate
from methods.pmg_aft import pmg_aft_attack_objective
from tests.eval_fixtures import register_tiny_sets

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


class FakeCuda:
    """`n` visible CUDA devices whose generators are plain values; setting a device that does not
    exist raises IndexError, as torch.cuda.default_generators[i] does."""

    def __init__(self, monkeypatch, n: int, states=None):
        self.states = list(states or [torch.tensor([i], dtype=torch.uint8) for i in range(n)])
        self.n = n
        for mod in (torch.cuda, torch.cuda.random):
            monkeypatch.setattr(mod, "set_rng_state", self.set_rng_state)
            monkeypatch.setattr(mod, "get_rng_state_all", self.get_rng_state_all, raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.n)

    def set_rng_state(self, state, device="cuda"):
        i = device if isinstance(device, int) else (torch.device(device).index or 0)
        if i >= self.n:
            raise IndexError("tuple index out of range")
        self.states[i] = state.clone()

    def get_rng_state_all(self):
        return [s.clone() for s in self.states[:self.n]]


def test_resume_on_fewer_gpus_restores_what_exists(monkeypatch, caplog):
    cuda = FakeCuda(monkeypatch, 8)
    saved = device.rng_state()                       # a run on 8 GPUs
    assert len(saved["cuda"]) == 8
    cuda.n, cuda.states = 4, [torch.tensor([99], dtype=torch.uint8)] * 4     # resumed on 4
    with caplog.at_level(logging.WARNING, logger="tga_zsr"):
        dropped = device.set_rng_state(saved)
    assert dropped == [4, 5, 6, 7]
    assert [int(s) for s in cuda.states] == [0, 1, 2, 3]     # the 4 that exist: restored
    assert "devices 4..7 are dropped" in caplog.text
    cuda.n = 1                                                # and on 1
    assert device.set_rng_state(saved) == list(range(1, 8))


def test_resume_on_the_same_gpus_is_exact(monkeypatch, caplog):
    cuda = FakeCuda(monkeypatch, 2)
    torch.manual_seed(3)
    saved = device.rng_state()
    first = torch.rand(5)
    cuda.states = [torch.tensor([7], dtype=torch.uint8)] * 2
    with caplog.at_level(logging.WARNING, logger="tga_zsr"):
        assert device.set_rng_state(saved) == []
    assert [int(s) for s in cuda.states] == [0, 1] and not caplog.text
    assert torch.equal(torch.rand(5), first)


def test_tf32_keeps_mixed_precision_in_the_evaluation(monkeypatch, tmp_path):
    """`--tf32` is a matmul setting: with it, a bf16 (or amp) evaluation still attacks and predicts under
    autocast, and only the recorded label grows '+tf32'. (On the CPU TF32 is never active: the test
    says it is.)"""
    register_tiny_sets()
    seen = []
    real_attack = evaluate.attack_batch

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return real_attack(*args, **kwargs)

    monkeypatch.setattr(evaluate, "tf32_active", lambda device: True)
    monkeypatch.setattr(evaluate, "attack_batch", spy)
    assert tga_zsr.main(["--eval_only", "--arch", "tiny-vit", "--pretrained", "none", "--device", "cpu",
                         "--output_dir", str(tmp_path), "--name", "tf32", "--test_numsteps", "1", "--test_eps", "4",
                         "--test_batch_size", "6", "--workers", "0", "--testdata", "test_tiny3",
                         "--precision", "bf16", "--tf32"]) == 0
    assert seen == [torch.bfloat16]
    row = json.loads((tmp_path / "tf32" / "results.jsonl").read_text())
    assert (row["precision"], row["attack_precision"]) == ("bf16+tf32", "bf16+tf32")


def test_fp16_attack_step_has_no_silent_zero_gradients(tiny_model):
    """One PGD step in float16 on the CPU (autocast, as amp on a GPU) of PMG-AFT's training attack at the
    paper's batch of 128: its temperature-1, batch-mean CE has input gradients of ~1e-7, below fp16's
    smallest value, and unscaled 38 % of them were exactly 0 (measured), so those pixels did not move.
    From δ = 0 with α = ε a pixel stays put exactly where its gradient is 0 (x is never exactly 0 or 1)."""
    model = tiny_model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(128, 3, 224, 224, generator=g)
    y = torch.randint(0, 10, (128,), generator=g)
    with torch.no_grad():
        text = model.encode_text([f"This is a photo of a thing{i}" for i in range(10)])
    objective = pmg_aft_attack_objective(model, y, text)
    deltas, stats = {}, attacks.GradStats()
    for name, dtype in (("fp32", None), ("fp16", torch.float16)):
        with attacks.no_param_grad(model.clip), torch.autocast("cpu", dtype=dtype or torch.float32,
                                                               enabled=dtype is not None):
            deltas[name] = attacks.pgd(objective, x, 1 / 255, 1 / 255, 1, init=torch.zeros_like(x),
                                       stats=stats if dtype else None)
    still = {k: float((d == 0).float().mean()) for k, d in deltas.items()}
    assert still["fp32"] == 0.0
    # fp16 keeps 11 significant bits: a scaled gradient rounds to 0 only where the fp32 one is ~1e-4 of its
    # typical size; at most 1e-4 of the entries (measured 6e-6 at scale 2^16).
    assert still["fp16"] <= 1e-4, still
    assert stats.zero_fraction == pytest.approx(still["fp16"]) and stats.scale > 1
    # where both moved, they moved the same way but at the pixels whose gradient is within fp16's
    # rounding of 0 (measured 0.1 %)
    assert float((deltas["fp16"] == deltas["fp32"]).float().mean()) >= 0.99


def test_fp32_attack_is_unchanged_by_the_loss_scale(tiny_model):
    """fp32 (and bf16) attacks take no loss scale: the same δ as the plain autograd step, bit for bit."""
    model = tiny_model.eval()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        text = model.encode_text(["a", "b", "c"])

    def objective(xa):
        return attacks.ce_loss_sum(model.logits(xa, text), y)

    stats = attacks.GradStats()
    with attacks.no_param_grad(model.clip):
        delta = attacks.pgd(objective, x, 4 / 255, 1 / 255, 1, init=torch.zeros_like(x), stats=stats)
        d = torch.zeros_like(x, requires_grad=True)
        (grad,) = torch.autograd.grad(objective(x + d).float(), d)
    assert torch.equal(delta, attacks.linf_update(torch.zeros_like(x), grad, x, 1 / 255, 4 / 255))
    assert stats.scale == 1.0 and stats.retries == 0


def test_fp16_loss_scale_backs_off_on_overflow_and_gives_up_on_a_non_finite_loss():
    scale = attacks.LossScale(growth_interval=2)
    assert scale.value == 2.0 ** 16
    x = torch.ones(3)

    def overflows_above_1024(xa):
        """A loss whose backward overflows (inf) when scaled by more than 2^10, as fp16's would."""
        return xa.sum() * (float("inf") if scale.value > 1024 else 1.0)

    stats = attacks.GradStats()
    grad = attacks.input_gradient(overflows_above_1024, x, torch.zeros(3, requires_grad=True), scale, stats)
    assert scale.value == 1024 and stats.retries == 6 and torch.equal(grad, torch.ones(3))   # unscaled again
    attacks.input_gradient(overflows_above_1024, x, torch.zeros(3, requires_grad=True), scale, stats)
    assert scale.value == 2048     # grew after growth_interval (2) finite steps

    def nan_loss(xa):
        return xa.sum() * float("nan")

    scale = attacks.LossScale()
    grad = attacks.input_gradient(nan_loss, x, torch.zeros(3, requires_grad=True), scale)
    assert scale.value < attacks.LossScale.MIN and torch.isnan(grad).all()   # gave up, did not loop


def test_doctor_passes_a_healthy_device_and_fails_a_broken_one(monkeypatch):
    """The doctor's fp32 comparison of a device with the CPU, run here with the CPU as both: a healthy
    device with other kernels and whose random generator differs (CUDA's does) passes; a wrong dtype (bf16 kernels in place of
    fp32) and a wrong kernel (layer norm off by 1e-3) fail. The old comparison attacked from each device's
    own random start: two healthy runs with different starts are 1e-2 apart on the loss, 10× its
    tolerance of 1e-3, so it could not pass on any GPU."""
    cpu = torch.device("cpu")
    model, method, _ = doctor.tiny_method(cpu)
    x, y = doctor.batch(cpu)
    starts = [doctor.step_terms(method, model, x, y, cpu, "fp32", seed=s)[0]["loss"] for s in (2, 3)]
    assert abs(starts[0] - starts[1]) / abs(starts[1]) > 1e-3

    ref = doctor.reference_step(cpu)
    # healthy: other kernels (PyTorch's convolution instead of oneDNN's, 2 threads: another summation order;
    # measured 1.2e-6 on the gradient) and the generator in another state
    torch.set_num_threads(2)
    with torch.backends.mkldnn.flags(enabled=False):
        healthy = doctor.reference_step(cpu, seed=3)
    torch.set_num_threads(1)
    assert doctor.rel(healthy["grads"], ref["grads"]) > 0      # the kernels did differ
    r = doctor.Report()
    assert doctor.compare_steps(r, healthy, ref, doctor.tolerance()) and not r.failed
    assert doctor.tolerance() == pytest.approx(3.3e-5, rel=0.01)

    r = doctor.Report()
    assert not doctor.compare_steps(r, doctor.reference_step(cpu, "bf16"), ref, doctor.tolerance())
    real_layer_norm = torch.nn.functional.layer_norm
    monkeypatch.setattr(torch.nn.functional, "layer_norm", lambda *a, **k: real_layer_norm(*a, **k) * (1 + 1e-3))
    r = doctor.Report()
    assert not doctor.compare_steps(r, doctor.reference_step(cpu), ref, doctor.tolerance())
    assert [c["status"] for c in r.checks] == ["FAIL", "FAIL"]
