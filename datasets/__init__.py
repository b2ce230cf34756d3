"""One registry of datasets: name -> (dataset of (image in [0,1], label), class names, prompts).

Every builder takes `(root, split, transform)` and returns a `ZeroShotData`. Names are
case-insensitive and accept the original code's spellings (`tinyImageNet`, `cifar10`, ...).
A missing or malformed dataset raises `DatasetError` naming the path looked at, what was
expected there and the command that prepares it.

    from datasets import get_dataset
    data = get_dataset("cifar10", root="./data", split="test")
    python -m datasets.prepare --root ./data --verify
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from datasets.common import DatasetError  # noqa: F401  (re-exported)

TEMPLATE = "This is a photo of a {}"  # SPEC §5 "template": no final period


def clean_name(name: str) -> str:
    """SPEC §0/§5: lower-case, `_ - /` turned into spaces."""
    for ch in "_-/":
        name = name.replace(ch, " ")
    return name.lower()


@dataclass
class ZeroShotData:
    name: str
    dataset: torch.utils.data.Dataset  # yields (image tensor [3, H, W] in [0, 1], int label)
    classnames: list[str]
    prompts: list[str]  # one prompt per class, in label order
    root: str = ""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dataset)


_REGISTRY: dict[str, Callable] = {}
_CANONICAL: dict[str, str] = {}


def register(name: str, *aliases: str):
    """Decorator: `@register("cifar10")` on `builder(root, split, transform) -> ZeroShotData`."""
    def wrap(fn):
        _REGISTRY[name] = fn
        for a in (name, *aliases):
            _CANONICAL[a.lower()] = name
        return fn
    return wrap


def canonical_name(name: str) -> str:
    key = name.lower()
    if key not in _CANONICAL:
        raise DatasetError(f"unknown dataset '{name}'. Known datasets: {', '.join(available())}")
    return _CANONICAL[key]


def available() -> list[str]:
    return list(_REGISTRY)


def get_dataset(name: str, root: str = "./data", split: str = "test", transform=None) -> ZeroShotData:
    """Build a dataset by (case-insensitive) name. `transform=None` picks the original one."""
    canon = canonical_name(name)
    data = _REGISTRY[canon](root, split, transform)
    data.name = canon
    return data


# Builders register themselves on import.
from datasets import synthetic  # noqa: E402,F401
from datasets import world  # noqa: E402,F401
