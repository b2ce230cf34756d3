"""Small in-memory synthetic datasets for the smoke run and the tests (no files, no downloads).

Each image is a noisy background with a coloured square; the class is the square's colour
(`synthetic_colors`, also the training set `synthetic_train`) or the background stripe
orientation (`synthetic_stripes`). Images are generated deterministically from (seed, index).
"""
from __future__ import annotations

import torch

from datasets.registry import TEMPLATE, ZeroShotData, register

COLOURS = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.1, 0.2, 0.9), "yellow": (0.95, 0.9, 0.1),
    "purple": (0.6, 0.1, 0.7), "orange": (1.0, 0.55, 0.0), "white": (0.95, 0.95, 0.95), "black": (0.05, 0.05, 0.05),
}
STRIPES = ["horizontal stripes", "vertical stripes", "diagonal stripes", "no stripes"]


class SyntheticImages(torch.utils.data.Dataset):
    def __init__(self, kind: str, n: int, seed: int, size: int = 224):
        self.kind, self.n, self.seed, self.size = kind, n, seed, size
        self.num_classes = len(COLOURS) if kind == "colors" else len(STRIPES)
        self.targets = [i % self.num_classes for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        y = self.targets[i]
        s = self.size
        img = 0.35 + 0.15 * torch.rand(3, s, s, generator=g)
        if self.kind == "stripes":
            yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
            phase = [yy, xx, yy + xx, None][y]
            if phase is not None:
                img = img + 0.3 * ((phase // (s // 8)) % 2).float()[None]
            colour = list(COLOURS.values())[int(torch.randint(len(COLOURS), (1,), generator=g))]
        else:
            colour = list(COLOURS.values())[y]
        side = s // 3 + int(torch.randint(s // 6, (1,), generator=g))
        top, left = (int(v) for v in torch.randint(s - side, (2,), generator=g))
        img[:, top:top + side, left:left + side] = torch.tensor(colour)[:, None, None]
        return img.clamp(0, 1), y


def _build(kind: str, n_train: int, n_test: int, seed: int):
    def builder(root, split, transform=None, size: int = 224):
        n = n_train if split == "train" else n_test
        ds = SyntheticImages(kind, n, seed + (0 if split == "train" else 1), size)
        names = list(COLOURS) if kind == "colors" else STRIPES
        return ZeroShotData(f"synthetic_{kind}", ds, names, [TEMPLATE.format(c) for c in names], root="")
    return builder


register("synthetic_train")(_build("colors", 64, 64, 0))
register("synthetic_colors")(_build("colors", 64, 24, 10))
register("synthetic_stripes")(_build("stripes", 64, 24, 20))
