"""What a GPU run meets, checked on the CPU: the floor release's DDP and GradScaler argument lists,
bf16 autocast, uint8 images made [0, 1] on the device, and the per-sample PGD starts drawn on the
device (docs/gpus.md).

    python -m pytest -q tests/test_gpu_ready.py
"""
import copy
import inspect
import shutil
import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

import datasets
from engine import device
from engine import distributed
import methods
from attacks import mt19937_uniform, per_sample_start, pgd, start_seed
from engine.model import load_clip
from datasets.common import resize_center_crop, resize_square, rgb_first
from engine.evaluate import evaluate_dataset
from engine.settings import parse_args
from engine.settings import Settings
from engine.train import Trainer, build_method

# The floor of requirements.txt, torch 2.3.0: the parameters of the two constructors we call, as
# `inspect.signature` lists them there (read from an installed torch 2.3.0).
FLOOR_DDP = ["self", "module", "device_ids", "output_device", "dim", "broadcast_buffers", "process_group",
             "bucket_cap_mb", "find_unused_parameters", "check_reduction", "gradient_as_bucket_view",
             "static_graph", "delay_all_reduce_named_params", "param_to_hook_all_reduce", "mixed_precision",
             "device_mesh"]
FLOOR_GRAD_SCALER = ["self", "device", "init_scale", "growth_factor", "backoff_factor", "growth_interval", "enabled"]


def _with_signature(names):
    """A callable that accepts exactly `names` (all but self, keyword or positional), like the floor's."""
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for n in names[1:]]
    sig = inspect.Signature(params)
    calls = []

    class Floor:
        def __init__(self, *args, **kwargs):
            calls.append(sig.bind(*args, **kwargs).arguments)  # TypeError on an unknown argument
            self.module = args[0] if args else kwargs.get("module")

    Floor.__init__.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + params)
    return Floor, calls


def test_ddp_and_scaler_fit_the_floor_argument_lists(monkeypatch, tiny_model):
    floor_ddp, ddp_calls = _with_signature(FLOOR_DDP)
    monkeypatch.setattr(distributed, "DistributedDataParallel", floor_ddp)
    monkeypatch.setattr(distributed, "rank_world", lambda: (0, 2))
    wrapped = distributed.wrap_trainable(tiny_model, torch.device("cpu"))
    assert isinstance(wrapped, floor_ddp) and ddp_calls[0]["broadcast_buffers"] is False
    floor_scaler, scaler_calls = _with_signature(FLOOR_GRAD_SCALER)
    monkeypatch.setattr(torch.amp, "GradScaler", floor_scaler)
    device.make_scaler(torch.device("cuda"), "amp")
    assert scaler_calls[0]["device"] == "cuda" and scaler_calls[0]["enabled"] is True


def test_ddp_keyword_follows_the_installed_release():
    installed = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    want = "forward_sync_buffers" if "forward_sync_buffers" in installed else "broadcast_buffers"
    assert distributed.no_forward_buffer_sync() == {want: False}
    assert distributed.no_forward_buffer_sync(FLOOR_DDP) == {"broadcast_buffers": False}


@pytest.fixture
def gloo_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_gloo_ddp_with_the_floor_and_the_installed_keyword(gloo_group, tiny_model):
    """A real DDP wrapper takes both spellings; the one picked for this torch raises no warning."""
    tower = tiny_model.image_tower
    x = torch.rand(2, 3, 32, 32)
    for kwargs in (distributed.no_forward_buffer_sync(FLOOR_DDP), distributed.no_forward_buffer_sync()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ddp = torch.nn.parallel.DistributedDataParallel(tower, **kwargs)
        ddp(x).sum().backward()
        assert all(p.grad is not None for p in tower.parameters())
        tower.zero_grad(set_to_none=True)
    assert not [w for w in caught if "buffers" in str(w.message)]  # the installed keyword: silent


def test_compiled_tower_under_ddp_compiles_the_wrapper_around_its_eager_forward(gloo_group, tiny_model, monkeypatch):
    """--compile with DDP: DDP wraps the tower's eager forward and the wrapper is what is compiled (dynamo
    then splits the backward at DDP's gradient buckets); the tower keeps its own compiled graphs for the
    attack and the evaluation. Same gradients as the eager DDP step (aot_eager runs the same kernels)."""
    monkeypatch.setattr(distributed, "rank_world", lambda: (0, 2))   # wrap as a 2-process run would
    eager_model = copy.deepcopy(tiny_model)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    grads = []
    for model, compiled in ((eager_model, False), (tiny_model, True)):
        if compiled:
            device.compile_module(model.image_tower, backend="aot_eager")
        ddp = distributed.wrap_trainable(model, torch.device("cpu"))
        assert isinstance(ddp.module, distributed.EagerForward) == compiled
        assert device.is_compiled(ddp) == compiled
        model.image_tower.train()
        model.image_tokens(x).sum().backward()     # through the wrapper: grad on, train mode, weights trained
        grads.append(torch.cat([p.grad.flatten() for p in model.visual.parameters()]))
        distributed.unwrap(model)
    assert float((grads[1] - grads[0]).norm() / grads[0].norm()) < 1e-5  # float32 reassociation only


def test_a_training_step_needs_one_host_collective(gloo_group, monkeypatch):
    """The per-step stop check (a signal, an unreadable image on any rank) is one all-reduce of host values,
    not one per flag on the device (each a wait for the GPU under NCCL); the gradients of trained tensors
    outside DDP (TIMA's text tower) go in one all-reduce too, averaged over the ranks."""
    calls = []
    real = dist.all_reduce

    def counting(t, *args, **kwargs):
        calls.append(t.device.type)
        return real(t, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", counting)
    monkeypatch.setattr(distributed, "rank_world", lambda: (0, 2))
    me = SimpleNamespace(skip_corrupt=False, should_stop=lambda: None, world=2, skipped=0)
    Trainer._stop_if_asked(me, [], 4, None)
    assert calls == ["cpu"]
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(1))]
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, 2.0 * (i + 1))
    distributed.average_gradients(params)
    assert calls == ["cpu", "cpu"]
    # the group holds one process here, so the sum is this rank's own gradient, divided by the 2 "ranks"
    assert [p.grad.tolist() for p in params] == [[1.0] * 3, [[2.0, 2.0], [2.0, 2.0]], [3.0]]


# --- bf16 autocast -------------------------------------------------------------------------------------------
def test_bf16_training_step_and_pgd_step(tiny_model):
    """One TGA-ZSR step and one PGD step under bf16 autocast on the CPU: finite, near fp32, δ stays fp32."""
    args = parse_args(["-c", "configs/synthetic.yaml", "--device", "cpu", "--precision", "bf16"])
    prompts = [f"This is a photo of a c{i}" for i in range(5)]
    with torch.no_grad():
        text = tiny_model.encode_text(prompts)
    method = build_method(Settings.from_args(args), tiny_model, text, prompts, [f"c{i}" for i in range(5)])
    x, y = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])
    cpu = torch.device("cpu")
    terms = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        with device.autocast(cpu, precision):
            terms[precision] = method.step(x, y, torch.arange(4))
    assert device.make_scaler(cpu, "bf16").is_enabled() is False   # bf16 needs no loss scaling
    terms["bf16"]["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in tiny_model.visual.parameters() if p.grad is not None)
    # bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2 % per operand); through two blocks
    # and the CE the loss moves by a few of these: 5 % is far above that and far below the loss itself.
    assert float(terms["bf16"]["ce"].detach()) == pytest.approx(float(terms["fp32"]["ce"].detach()), rel=5e-2)

    tiny_model.eval()
    with device.autocast(cpu, "bf16"):
        delta = pgd(lambda xa: F.cross_entropy(tiny_model.logits(xa, text), y, reduction="sum"), x,
                    4 / 255, 1 / 255, 2)
    assert delta.dtype == torch.float32 and float(delta.abs().max()) <= 4 / 255 + 1e-7


def test_bf16_evaluation_counts(tiny_model):
    from eval_fixtures import tiny_data
    data = tiny_data(6, 3)
    with torch.no_grad():
        text = tiny_model.encode_text(data.prompts)
    settings = {"attack": "pgd", "norm": "l_inf", "eps": 4.0, "steps": 2, "step_size": 1.0, "seed": 0}
    res = evaluate_dataset(tiny_model, data, text, settings, torch.device("cpu"), "bf16", batch_size=4,
                           show_progress=False)
    assert res["n"] == 6 and 0 <= res["robust_acc"] <= 100 and 0 <= res["clean_acc"] <= 100


# --- uint8 images ------------------------------------------------------------------------------------------
def _images():
    """Photos of every shape and mode the loaders meet: random, smooth, saturated, grey, CMYK, odd sizes."""
    rng = np.random.default_rng(0)
    out = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
           ((64, 64), (300, 451), (224, 224), (97, 33), (32, 32))]
    ramp = np.linspace(0, 255, 128 * 96).reshape(96, 128).astype(np.uint8)
    out.append(Image.fromarray(np.stack([ramp, 255 - ramp, ramp // 2], -1)))
    out.append(Image.fromarray(np.full((50, 70, 3), 255, np.uint8)))
    out.append(Image.fromarray(rng.integers(0, 256, (80, 60), dtype=np.uint8), mode="L"))
    out.append(Image.fromarray(rng.integers(0, 256, (40, 90, 4), dtype=np.uint8), mode="CMYK"))
    return out


@pytest.mark.parametrize("build, reference", [
    (resize_center_crop, lambda: T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])),
    (resize_square, lambda: T.Compose([T.Resize((224, 224)), T.ToTensor()]))])
def test_uint8_loading_is_bit_identical_to_totensor(build, reference):
    new, old = rgb_first(build()), rgb_first(reference())
    for img in _images():
        u8 = new(img)
        assert u8.dtype == torch.uint8
        assert torch.equal(datasets.to_unit(u8), old(img))
    every_value = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    assert torch.equal(datasets.to_unit(every_value), T.ToTensor()(Image.fromarray(every_value[0].numpy())))
    floats = torch.rand(3, 4, 4)
    assert datasets.to_unit(floats) is floats   # synthetic sets already give [0, 1] floats


def test_default_workers_share_the_node():
    n = datasets.default_workers()
    assert 1 <= n <= 8 and n <= len(os.sched_getaffinity(0))


# --- per-sample starts -----------------------------------------------------------------------------------------
def test_device_starts_equal_the_cpu_generator():
    """The device route (MT19937 in int64 tensor ops) gives torch.Generator's numbers bit for bit."""
    g = torch.Generator().manual_seed(5)
    for shape, eps, seed in (((6, 3, 32, 32), 4 / 255, 3), ((2, 3, 224, 224), 1 / 255, 0),
                             ((3, 3, 17, 5), 8 / 255, 2 ** 20)):
        x = torch.rand(shape, generator=g)
        x[0, :, :3] = 0.0   # starts clipped at both ends of [0, 1]
        x[0, :, 3:6] = 1.0
        idx = torch.randint(0, 2 ** 31, (shape[0],), generator=g)
        cpu = per_sample_start(x, idx, eps, "l_inf", seed, on_device=False)
        dev = per_sample_start(x, idx, eps, "l_inf", seed, on_device=True)
        assert torch.equal(cpu, dev)
    seeds = [start_seed(0, 7), start_seed(1, 0), 2 ** 40 + 17]   # seeds past 32 bits: low word, as torch
    ref = torch.stack([torch.empty(1000).uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(s))
                       for s in seeds])
    assert torch.equal(mt19937_uniform(seeds, 1000, -0.5, 0.5, "cpu"), ref)
    with pytest.raises(ValueError, match="symmetric"):
        mt19937_uniform(seeds, 10, 0.0, 1.0, "cpu")


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor needs a C++ compiler on the CPU")
def test_compiled_device_starts_equal_the_cpu_generator():
    """What CUDA runs: the generator's twists fused by torch.compile (inductor; here its C++ backend)
    give the same numbers bit for bit, for a new batch size and a new ε without another build."""
    seeds = [start_seed(0, 7), start_seed(1, 0), 2 ** 40 + 17]
    for rows, n, bound in ((3, 3 * 224 * 224, 1 / 255), (2, 1000, 0.5)):
        ref = torch.stack([torch.empty(n).uniform_(-bound, bound, generator=torch.Generator().manual_seed(s))
                           for s in seeds[:rows]])
        assert torch.equal(mt19937_uniform(seeds[:rows], n, -bound, bound, "cpu", compiled=True), ref)
