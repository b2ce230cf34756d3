"""Labels without decoding images: a file-list dataset, `dataset_labels`, and the seeded
class-balanced subset behind `--n_samples`; `Indexed`, the one place every training and test
sample is read through, and what happens to an image that cannot be decoded.

Unreadable images (a truncated JPEG, a file that is not an image): `Indexed` returns an
`Unreadable` record naming the file instead of raising inside a loader worker, and
`collate_indexed` hands the batch's records to the loop beside the good samples. The policy, the
same for every dataset, training and evaluation: stop with `CorruptImage`, which names the file
and says what to do, unless `--skip_corrupt` was given; then the sample is left out with a
warning naming it, and the count is recorded (results.jsonl `skipped`, the table's † note).

torchvision keeps labels under a different attribute in every class (`targets`, `labels`,
`_labels`, `_samples`, `y`, `samples`, an .h5 file for PCAM); `dataset_labels` normalises
that so subsetting never has to open an image.

    from datasets import get_dataset, class_balanced_subset
    small = class_balanced_subset(get_dataset("cifar10", "./data"), n=1000, seed=0)
"""
from __future__ import annotations

import random
import struct
import zlib
from dataclasses import replace
from typing import NamedTuple

import torch
from PIL import Image
from torch.utils.data import default_collate

from datasets.catalog import DatasetError

# What PIL raises on a damaged or non-image file: truncated data (OSError), unidentified or
# broken files (UnidentifiedImageError is an OSError; PNG raises SyntaxError), bad headers.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


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


class Transformed(torch.utils.data.Dataset):
    """The images of `dataset` through `transform` (an image tensor in, one out), labels unchanged: the
    in-memory sets (world, synthetic), whose builders take no transform."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform
        self.targets = dataset_labels(dataset)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return self.transform(x), y


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


class Unreadable(NamedTuple):
    """A sample whose image could not be decoded: its index, its file (if the dataset has files), why."""
    index: int
    path: str
    reason: str


class CorruptImage(DatasetError):
    """An image could not be decoded and --skip_corrupt was not given: names the file, says what to do."""

    def __init__(self, dataset: str, bad: list, root: str = "<root>"):
        first = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        super().__init__(
            f"{dataset}: image {first.path or f'#{first.index}'} cannot be decoded ({first.reason}){more}.\n"
            f"Replace the file (python -m datasets.prepare --root {root} --verify {dataset} --deep lists every "
            f"unreadable image), or pass --skip_corrupt to leave such images out (their number is recorded in "
            f"results.jsonl and shown in the table)")
        self.bad = bad


def sample_path(ds, i: int) -> str:
    """The file of sample `i` of `ds`, read from metadata ('' for datasets held in arrays)."""
    if isinstance(ds, torch.utils.data.Subset):
        return sample_path(ds.dataset, ds.indices[i])
    for attr in ("samples", "_samples"):  # ours, ImageFolder (EuroSAT), StanfordCars: (path, label)
        value = getattr(ds, attr, None)
        if value is not None:
            return str(value[i][0])
    for attr in ("_image_files", "_images", "_files"):  # torchvision's file lists, our Caltech
        value = getattr(ds, attr, None)
        if value is not None:
            return str(value[i])
    return ""


class Indexed(torch.utils.data.Dataset):
    """Yields (x, y, index), or an `Unreadable` record; the index keys per-sample caches and the
    evaluation's per-sample attack noise. Batch it with `collate_indexed`."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        try:
            x, y = self.ds[i]
        except DECODE_ERRORS as e:
            return Unreadable(i, sample_path(self.ds, i), f"{type(e).__name__}: {e}")
        return x, y, i


def collate_indexed(batch):
    """(x, y, idx, unreadable): the readable samples stacked, and the `Unreadable` records."""
    good = [b for b in batch if not isinstance(b, Unreadable)]
    bad = [b for b in batch if isinstance(b, Unreadable)]
    if not good:
        empty = torch.zeros(0, dtype=torch.long)
        return torch.zeros(0), empty, empty, bad
    x, y, idx = default_collate(good)
    return x, y, idx, bad
