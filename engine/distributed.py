"""Multi-GPU and multi-node runs with PyTorch's own engine: torchrun + DistributedDataParallel.

torchrun starts one process per GPU and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; `init_distributed` turns them into a process group (NCCL on `cuda:LOCAL_RANK`,
gloo on the CPU). Without them (plain `python tga_zsr.py`) nothing here does anything.

What is distributed, and how the maths stays that of one process:
* Training: DDP wraps the trainable module, `model.image_tower`. The wrapper is kept on the
  ClipModel as a plain attribute (`ddp_tower`, not a submodule: state_dict keys do not change),
  and `ClipModel.image_tokens` goes through it only for forwards that will be back-propagated
  into the weights (grad mode on, tower in train mode, weights requiring grad). The PGD attack
  (parameter grads off via `attacks.no_param_grad`) and the frozen reference copy never touch it.
  `--batch_size` is the global batch, split over ranks and `--accum_steps` micro-batches; the
  data order of a global batch is that of one process (DistributedSampler interleaves ranks).
* Evaluation: each rank takes the samples `range(rank, n, world)` (no padding, so nothing is
  dropped or counted twice) and the correct counts are summed with all_reduce. The PGD start
  is drawn from (seed, sample index), so the accuracies equal one process's exactly.
* Only rank 0 writes files; every collective has a timeout (`--dist_timeout`).
* Per step, training needs one collective of its own besides DDP's gradient buckets: the stop
  flags (a signal, an unreadable image) of every rank, one all-reduce of host values over a gloo
  group (`any_rank_flags`), so the host never waits for the GPU to finish a step before queueing
  the next (an NCCL all-reduce of a flag read back on the host would). Gradients of trained
  tensors outside the tower (TIMA's text tower) go in one flat all-reduce. Under `--compile` the
  DDP wrapper is what is compiled, around the tower's eager forward (`wrap_trainable`).

    torchrun --nproc_per_node 4 tga_zsr.py --Method TGA-ZSR --batch_size 128     # 4 GPUs, 32 per GPU
    torchrun --nproc_per_node 2 tga_zsr.py -c configs/synthetic.yaml --device cpu    # CPU test (gloo)
"""
from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from engine.device import compile_module, compiled_backend, is_compiled, resolve_device, seed_everything


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # created by init_distributed: destroyed by cleanup()

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device_arg: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Process group from torchrun's variables, or a single-process DistInfo without them.
    A process group that already exists (a script calling tga_zsr.main repeatedly) is used as is."""
    already = dist.is_available() and dist.is_initialized()
    if not already and not launched_by_torchrun():
        return DistInfo(0, 1, 0, resolve_device(device_arg))
    rank, world = (dist.get_rank(), dist.get_world_size()) if already else (int(os.environ["RANK"]),
                                                                            int(os.environ["WORLD_SIZE"]))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device_arg.startswith("cuda") or (device_arg == "auto" and torch.cuda.is_available())
    if want_cuda:
        if not torch.cuda.is_available():
            raise SystemExit(f"[rank {rank}] --device {device_arg} asked for CUDA but no GPU is visible")
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"[rank {rank}] LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are "
                             f"visible: --nproc_per_node must not exceed the GPUs per node")
        # One GPU per process, picked by torchrun: --device cuda:N / --gpu N do not apply here.
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if already:
        return DistInfo(rank, world, local_rank, device)
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                            device_id=device if backend == "nccl" else None)
    return DistInfo(rank, world, local_rank, device, owns_group=True)


def cleanup(info: DistInfo) -> None:
    """Destroy the process group at exit, if this run created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def shard_indices(n: int, rank: int, world: int) -> range:
    """Every `world`-th sample from `rank`: the shards partition range(n), sizes differ by ≤ 1."""
    return range(rank, n, world)


def _device_for_collectives() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(values: list[int]) -> list[int]:
    """Exact integer sum of per-rank counts (int64 all_reduce)."""
    if rank_world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=_device_for_collectives())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [int(v) for v in t.tolist()]


def mean_over_ranks(values: dict) -> dict:
    """Average of per-rank scalars (tensors or numbers), for the training log."""
    if rank_world()[1] == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_device_for_collectives())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)  # gloo has no AVG
    return dict(zip(keys, (t / dist.get_world_size()).tolist()))


_CONTROL: dict = {}  # "group": the gloo group of host-side flags when the training group is NCCL


def _control_group():
    """The process group for host values: the default one when it is gloo, else a gloo group made
    once (every rank makes it at the same call: the first per-step stop check)."""
    if dist.get_backend() == "gloo":
        return None
    if "group" not in _CONTROL:
        _CONTROL["group"] = dist.new_group(backend="gloo")
    return _CONTROL["group"]


def any_rank_flags(flags: list[bool]) -> list[bool]:
    """For each host-side flag, whether it is true on any rank: one all-reduce of a CPU tensor over a
    gloo group, with no GPU work and no wait for the GPU (the per-step stop checks)."""
    if rank_world()[1] == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group())
    return [bool(v) for v in t.tolist()]


def any_rank(flag: torch.Tensor) -> torch.Tensor:
    """True on every rank if it is true on one (a non-finite loss stops all ranks together)."""
    if rank_world()[1] == 1:
        return flag
    t = flag.detach().to(_device_for_collectives(), torch.int32).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t[0].bool().to(flag.device)


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """`t` of every rank, concatenated along dim 0 in rank order, on `t`'s device (no gradient flows
    through it); every rank's `t` must have the same shape. `t` itself in one process."""
    world = rank_world()[1]
    if world == 1:
        return t
    src = t.detach().to(_device_for_collectives()).contiguous()
    parts = [torch.empty_like(src) for _ in range(world)]
    dist.all_gather(parts, src)
    return torch.cat(parts).to(t.device)


def broadcast_from_main(obj):
    """Rank 0's value of a small picklable object, on every rank."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's value of a small picklable object, in rank order, on every rank."""
    world = rank_world()[1]
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


# --- the trainable forward ----------------------------------------------------------------
def wrap_trainable(model, device: torch.device) -> DistributedDataParallel | None:
    """DDP around `model.image_tower`, attached to `model` as `ddp_tower` (not a submodule).

    Call after the trainable parameters have requires_grad set: DDP registers its gradient
    hooks on those. find_unused_parameters=False: every trainable tensor of the tower takes
    part in each forward (patch embedding to ln_post and proj), and the two forwards TGA-ZSR
    back-propagates together (adversarial and clean images) are fine: autograd sums both
    contributions into one gradient per parameter before DDP's hook fires. Buffers are not
    synchronised in forward: the tower's only buffers are the constant CLIP mean and std
    (no batch norm), and a collective in every forward would also run inside the attack.
    Returns None when the tower has nothing to train.
    """
    if rank_world()[1] == 1:
        return None
    tower = model.image_tower
    if not any(p.requires_grad for p in tower.parameters()):
        return None
    compiled = is_compiled(tower)
    # A compiled tower inside DDP would make one backward graph whose gradients all appear at its end,
    # with every bucket's all-reduce after it; compiling the DDP wrapper instead lets dynamo split the
    # graph at the buckets (its DDPOptimizer), so the all-reduces overlap the rest of the backward.
    ddp = DistributedDataParallel(EagerForward(tower) if compiled else tower,
                                  device_ids=[device.index] if device.type == "cuda" else None,
                                  find_unused_parameters=False, **no_forward_buffer_sync())
    if compiled:
        compile_module(ddp, backend=compiled_backend(tower))
    object.__setattr__(model, "ddp_tower", ddp)  # plain attribute: no new state_dict keys
    return ddp


class EagerForward(torch.nn.Module):
    """`tower` through its eager forward (not its compiled one): what DDP wraps, and compiles, when the
    tower is compiled. Same parameters, same outputs; the tower's own compiled graphs stay for the
    forwards outside DDP (the attack, the frozen reference, the evaluation)."""

    def __init__(self, tower: torch.nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, *args, **kwargs):
        return self.tower.forward(*args, **kwargs)


def no_forward_buffer_sync(ddp_parameters=None) -> dict:
    """The DDP keyword that turns off the buffer broadcast in every forward, by feature detection.

    torch 2.13 renamed `broadcast_buffers` to `forward_sync_buffers` (the old name now warns); the
    floor release (requirements.txt: torch 2.3) knows only `broadcast_buffers`, and passing the new
    name there is a TypeError. `ddp_parameters`: the names DDP's constructor takes (default: those
    of the installed torch; tests pass the floor's list). The two differ only at init: the old
    `broadcast_buffers=False` also skips the initial buffer broadcast, harmless here since the
    tower's buffers (CLIP mean and std) are the same constants on every rank."""
    if ddp_parameters is None:
        ddp_parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in ddp_parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def unwrap(model) -> None:
    """Drop the DDP wrapper: forwards go to the plain tower again (evaluation)."""
    if model.__dict__.get("ddp_tower") is not None:
        object.__setattr__(model, "ddp_tower", None)


def grad_sync(ddp: DistributedDataParallel | None, sync: bool):
    """DDP's `no_sync()` for the micro-batches before the last one of a global batch."""
    if ddp is None or sync:
        return contextlib.nullcontext()
    return ddp.no_sync()


def average_gradients(params: list) -> None:
    """All-reduce mean of the gradients of trainable tensors outside the DDP module (e.g. a
    text tower some method trains); DDP already averages the tower's own."""
    world = rank_world()[1]
    grads = [p.grad for p in params if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])   # one all-reduce, not one per tensor
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def seed_rank_streams(seed: int) -> None:
    """A different global RNG stream on every rank (the training PGD starts), after the model
    and its frozen copy were built identically from `seed` on all ranks."""
    rank, world = rank_world()
    if world > 1:
        seed_everything(seed + rank)
