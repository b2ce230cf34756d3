"""The GPU path's defects that a CPU can show (docs/gpus.md): a resume on fewer GPUs, `--tf32` with
mixed precision, fp16 attack gradients, and the doctor's comparison of a device with the CPU.

    python -m pytest -q tests/test_gpu_path.py
"""
import json
import logging

import pytest
import torch

import tga_zsr
from engine import device, evaluate
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
