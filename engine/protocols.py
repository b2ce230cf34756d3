"""Evaluation protocols (SPEC §10): one YAML of flag values each under `configs/protocols/`.

`--protocol NAME` layers `configs/protocols/NAME.yaml` over the method's and the resumed run's
defaults (params.py); `-c` files and the command line still win. Every result records the
protocol that produced it (`protocol_label`): its name, plus "modified: ..." naming every flag
the command changed, so a number is never attributed to a protocol it did not follow.

    python tga_zsr.py --eval_only --resume checkpoints/<run> --protocol robustvlm
"""
from __future__ import annotations

from pathlib import Path

import yaml

PROTOCOL_DIR = Path(__file__).resolve().parents[1] / "configs" / "protocols"


def protocol_names() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def load_protocol(name: str) -> dict:
    """The flag values of a protocol; SystemExit naming the known ones for an unknown name."""
    path = PROTOCOL_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"--protocol {name}: unknown protocol; known: {', '.join(protocol_names())} "
                         f"(one YAML each in {PROTOCOL_DIR})")
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    values["protocol"] = name
    return values


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        a, b = (list(v) if isinstance(v, (list, tuple)) else [v] for v in (a, b))
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def protocol_label(args) -> str | None:
    """`NAME`, or `NAME (modified: flag=value, ...)` when `args` departs from the protocol's values."""
    name = getattr(args, "protocol", None)
    if not name:
        return None
    changed = [f"{k}={getattr(args, k)}" for k, v in load_protocol(name).items()
               if k != "protocol" and hasattr(args, k) and not _same(getattr(args, k), v)]
    return f"{name} (modified: {', '.join(changed)})" if changed else name
