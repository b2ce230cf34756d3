"""The dataset registry: name -> builder, name resolution, `get_dataset` and `check_dataset`.

Builders (`tinyimagenet.py`, `torchvision_sets.py`, `world.py`, ...) import `register`,
`ZeroShotData`, `TEMPLATE` and `clean_name` from here and register themselves when the package
imports them. This module imports only the leaves `catalog` and `labelled`, never the package,
so imports flow one way: `datasets/__init__` -> builders -> registry -> leaves.
Names are case-insensitive; an unknown name gets a did-you-mean suggestion.

    from datasets import get_dataset, check_dataset
    data = get_dataset("cifar10", root="./data", split="test")
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from torchvision import transforms as T

from datasets.catalog import INFO, DatasetError, expected_count, partial_label
from datasets.labelled import DECODE_ERRORS, CorruptImage, Unreadable, dataset_labels, sample_path

TEMPLATE = "This is a photo of a {}"  # the paper's template: no final period


def clean_name(name: str) -> str:
    """Class names as the original code prompts them: lower-case, `_ - /` turned into spaces."""
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
    # Applied to each uint8 batch where it is computed on (after the copy to the device, before
    # `to_unit`): the decoded cache's Resize + CenterCrop (datasets/decoded_cache.py). None: nothing.
    on_device: Callable | None = None

    def __len__(self) -> int:
        return len(self.dataset)


_REGISTRY: dict[str, Callable] = {}
_CANONICAL: dict[str, str] = {}  # lower-cased name or alias -> canonical name


def register(name: str, *aliases: str):
    """Decorator: `@register("cifar10")` on `builder(root, split, transform) -> ZeroShotData`."""
    def wrap(fn):
        _REGISTRY[name] = fn
        for a in (name, *aliases):
            _CANONICAL[a.lower()] = name
        return fn
    return wrap


def canonical_name(name: str) -> str:
    """The registered spelling of `name` (any case, any alias); DatasetError with a suggestion."""
    key = name.lower()
    if key not in _CANONICAL:
        close = difflib.get_close_matches(key, list(_CANONICAL), n=1)  # over names and aliases
        hint = f" — did you mean {_CANONICAL[close[0]]}?" if close else "."
        raise DatasetError(f"unknown dataset '{name}'{hint} Known datasets: {', '.join(available())}")
    return _CANONICAL[key]


def available() -> list[str]:
    return list(_REGISTRY)


def resolve_root(root, canonical: str) -> str:
    """`root` may be a path or a dict `{canonical_name_or_alias: path, "default": path}`."""
    if isinstance(root, (str, os.PathLike)):
        return os.fspath(root)
    if isinstance(root, dict):
        for key, value in root.items():
            if key != "default" and canonical_name(key) == canonical:
                return os.fspath(value)
        if "default" in root:
            return os.fspath(root["default"])
        raise DatasetError(f"no root given for dataset '{canonical}': the root dict has neither "
                           f"'{canonical}' nor 'default' (keys: {sorted(root)})")
    raise TypeError(f"root must be a path or a dict, not {type(root).__name__}")


def get_dataset(name: str, root="./data", split: str = "test", transform=None) -> ZeroShotData:
    """Build a dataset by (case-insensitive) name. `transform=None` picks the original one.

    `split="test"` means the split the paper evaluates on (TinyImageNet/ImageNet val, the whole
    set for EuroSAT, Caltech101/256 and SUN397)."""
    canon = canonical_name(name)
    data = _REGISTRY[canon](resolve_root(root, canon), split, transform)
    data.name = canon
    return data


def check_dataset(name: str, root="./data", split: str | None = None, decode: int = 1) -> dict:
    """Fast pre-flight check: layout and annotation files, sample count, labels in range, and
    `decode` images actually decoded. Raises DatasetError; returns a summary dict with
    `complete` = whether count and class count match the full dataset, and `partial` = the label of a
    split smaller than its official release ('partial (30 / 27 000)'), else None."""
    canon = canonical_name(name)
    path = resolve_root(root, canon)
    if split is None:
        split = INFO[canon].eval_split if canon in INFO else "test"
    data = get_dataset(canon, path, split, transform=_TINY_TRANSFORM)
    labels = dataset_labels(data.dataset)
    n, c = len(data.dataset), len(data.classnames)
    if len(labels) != n or len(data.prompts) != c:
        raise DatasetError(f"{canon}: {n} samples but {len(labels)} labels, {c} classes but "
                           f"{len(data.prompts)} prompts (in {data.root})")
    bad = [y for y in labels if not 0 <= y < c]
    if bad:
        raise DatasetError(f"{canon}: label {bad[0]} is outside 0..{c - 1} (in {data.root})")
    for i in sorted({round(k * (n - 1) / max(decode - 1, 1)) for k in range(decode)} if n else []):
        try:
            img, _ = data.dataset[i]
        except DECODE_ERRORS as e:  # a truncated/corrupt file: name it (datasets/labelled.py)
            path = sample_path(data.dataset, i) or f"sample {i} in {data.root}"
            bad = [Unreadable(i, path, f"{type(e).__name__}: {e}")]
            raise CorruptImage(canon, bad, root if isinstance(root, str) else "<root>") from e
        if tuple(img.shape[:1]) != (3,):
            raise DatasetError(f"{canon}: sample {i} decoded to shape {tuple(img.shape)}, not 3 channels")
    expected = expected_count(canon, split)
    expected_c = INFO[canon].num_classes if canon in INFO else None
    return {"name": canon, "split": split, "path": data.root, "count": n, "num_classes": c,
            "expected_count": expected, "expected_classes": expected_c,
            "complete": (expected is None or n == expected) and (expected_c is None or c == expected_c),
            "partial": partial_label(n, expected, c, expected_c)}


_TINY_TRANSFORM = T.Compose([T.Resize((8, 8)), T.ToTensor()])  # a check only needs the decode to work


def check_datasets(splits: list[tuple[str, str]], root, n_samples: int = 0, allow_partial: bool = False,
                   skip_corrupt: bool = False) -> dict[tuple[str, str], str]:
    """Check each (dataset, split) before any work: in place, readable, `n_samples` at most its size, and
    whole. A split with fewer images than its official release is refused unless `allow_partial`, which
    makes it {(dataset, split): 'partial (found / expected)'}, the mark its results carry. Raises one
    DatasetError that lists every problem, each with its fix."""
    problems, partial = [], {}
    for name, split in splits:
        try:
            info = check_dataset(canonical_name(name), root, split)
        except CorruptImage as e:
            if not skip_corrupt:
                problems.append(f"- {name} ({split}): {e}")
            continue
        except DatasetError as e:
            problems.append(f"- {name} ({split}): {e}")
            continue
        if split == "test" and n_samples > info["count"]:
            problems.append(f"- {name} ({split}): --n_samples {n_samples} is more than its {info['count']} "
                            f"images; use at most {info['count']}, or 0 for all of them")
        if info["partial"]:
            partial[(info["name"], split)] = info["partial"]
            if not allow_partial:
                problems.append(
                    f"- {name} ({split}): {info['partial']} in {info['path']}: fewer images than its official "
                    f"release (found / expected). Complete it (python -m datasets.prepare --root {root} "
                    f"--verify {info['name']} says what it holds), or pass --allow_partial to use the images "
                    f"present, marked '{info['partial']}' in every result")
    if problems:
        raise DatasetError("\n".join(problems))
    return partial
