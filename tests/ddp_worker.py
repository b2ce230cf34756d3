"""Helper of tests/test_distributed.py, started by torchrun (not a test itself).

Joins one gloo process group, then runs `tga_zsr.main(argv)` for each named argv of a JSON
file, recording every forward through DistributedDataParallel (and whether the weights
required grad in it). Writes `<out>/rank<r>.json`; the run folders are tga_zsr's own.

    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py cases.json out/
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)  # two processes on a shared 2-core CPU


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    dist.init_process_group("gloo")  # tga_zsr.main uses this group and leaves it alive
    import tga_zsr

    calls = []

    def count_ddp_forward(module, args):
        if isinstance(module, DistributedDataParallel):
            calls.append(any(p.requires_grad for p in module.module.parameters()) and torch.is_grad_enabled())

    torch.nn.modules.module.register_module_forward_pre_hook(count_ddp_forward)
    record = {}
    for name, argv in cases.items():
        calls.clear()
        code = tga_zsr.main(argv)
        record[name] = {"code": code, "ddp_forwards": len(calls), "ddp_forwards_without_grad": calls.count(False)}
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
