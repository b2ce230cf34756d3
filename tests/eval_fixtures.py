"""Tiny in-memory zero-shot datasets for the evaluation tests: 32×32 images (the model resizes
them to its input size), a few per class, registered under `test_tiny<C>` names."""
from __future__ import annotations

import torch

import datasets as ds_registry
from datasets import TEMPLATE, ZeroShotData

NAMES = ["cat", "dog", "ship", "truck", "frog", "horse", "bird", "plane"]


class TinyImages(torch.utils.data.Dataset):
    """`n` images of `classes` classes: a class-coloured square on noise, fixed by (seed, index)."""

    def __init__(self, n: int, classes: int, seed: int, size: int = 32):
        self.n, self.classes, self.seed, self.size = n, classes, seed, size
        self.targets = [i % classes for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 7919 + i)
        img = torch.rand(3, self.size, self.size, generator=g)
        y = self.targets[i]
        img[y % 3, 8:24, 8:24] = 0.2 + 0.15 * y
        return img, y


def tiny_data(n: int, classes: int, seed: int = 0, name: str | None = None) -> ZeroShotData:
    names = NAMES[:classes]
    return ZeroShotData(name or f"test_tiny{classes}", TinyImages(n, classes, seed), names,
                        [TEMPLATE.format(c) for c in names])


def register_tiny_sets() -> None:
    """`test_tiny3` (3 classes, 6 images) and `test_tiny5` (5 classes, 10 images) in the registry."""
    for classes, n in ((3, 6), (5, 10)):
        name = f"test_tiny{classes}"
        if name not in ds_registry.available():
            ds_registry.register(name)(lambda root, split, transform=None, c=classes, k=n, nm=name:
                                       tiny_data(k, c, seed=c, name=nm))
