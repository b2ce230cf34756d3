"""Labels without decoding images: a file-list dataset, `dataset_labels`, and the seeded
class-balanced subset behind `--n_samples`.

torchvision keeps labels under a different attribute in every class (`targets`, `labels`,
`_labels`, `_samples`, `y`, `samples`, an .h5 file for PCAM); `dataset_labels` normalises
that so subsetting never has to open an image.

    from datasets import get_dataset, class_balanced_subset
    small = class_balanced_subset(get_dataset("cifar10", "./data"), n=1000, seed=0)
"""
from __future__ import annotations

import random
from dataclasses import replace

import torch


class LabelledFiles(torch.utils.data.Dataset):
    """(path, label) pairs -> (transform(loader(path)), label); `targets` is the label list."""

    def __init__(self, samples, transform, loader):
        self.samples = list(samples)
        self.targets = [int(y) for _, y in self.samples]
        self.transform, self.loader = transform, loader

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, y = self.samples[i]
        img = self.loader(path)
        return (self.transform(img) if self.transform is not None else img), y


class LabelledSubset(torch.utils.data.Subset):
    """`torch.utils.data.Subset` that also carries the labels of the chosen samples."""

    def __init__(self, dataset, indices):
        super().__init__(dataset, list(indices))
        labels = dataset_labels(dataset)
        self.targets = [labels[i] for i in self.indices]


def dataset_labels(ds) -> list[int]:
    """Integer label of every sample of `ds`, in order, read from metadata only."""
    if isinstance(ds, torch.utils.data.Subset) and not hasattr(ds, "targets"):
        parent = dataset_labels(ds.dataset)
        return [parent[i] for i in ds.indices]
    for attr in ("targets", "labels", "_labels", "y"):  # ours/CIFAR/ImageFolder, STL10, most, Caltech
        value = getattr(ds, attr, None)
        if value is not None:
            return [int(v) for v in value]
    for attr in ("_samples", "samples"):  # StanfordCars, generic (path, label) lists
        value = getattr(ds, attr, None)
        if value is not None:
            return [int(y) for _, y in value]
    raise TypeError(f"cannot read labels of {type(ds).__name__} without decoding images; "
                    "give it a `targets` list")


def balanced_indices(labels: list[int], n: int, seed: int) -> list[int]:
    """Round-robin over classes (in label order), each class's samples in a seeded shuffle.

    Class sizes differ (Caltech, SUN397): once a class runs out the others keep going, so
    exactly min(n, len(labels)) indices come back. Sorted, so that reading stays sequential."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    rng = random.Random(seed)
    queues = []
    for y in sorted(by_class):
        idx = by_class[y]
        rng.shuffle(idx)
        queues.append(idx)
    n = min(n, len(labels))
    chosen, depth = [], 0
    while len(chosen) < n:
        for q in queues:
            if depth < len(q):
                chosen.append(q[depth])
                if len(chosen) == n:
                    break
        depth += 1
    return sorted(chosen)


def class_balanced_subset(data, n: int, seed: int):
    """Seeded, deterministic, class-balanced subset of `n` samples of a `ZeroShotData`."""
    if n is None or n <= 0 or n >= len(data.dataset):
        return data
    idx = balanced_indices(dataset_labels(data.dataset), n, seed)
    return replace(data, dataset=LabelledSubset(data.dataset, idx),
                   extra={**data.extra, "subset": {"n": n, "seed": seed}})


class Indexed(torch.utils.data.Dataset):
    """Yields (x, y, index): the index keys per-sample caches and the evaluation's per-sample attack noise."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return x, y, i
