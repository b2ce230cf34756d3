"""One registry of datasets: name -> (dataset of (image in [0,1], label), class names, prompts).

Every builder takes `(root, split, transform)` and returns a `ZeroShotData`. Names are
case-insensitive and accept the original code's spellings (`tinyImageNet`, `cifar10`, ...).
A missing or malformed dataset raises `DatasetError` naming the path looked at, what was
expected there and the command that prepares it. `root` is a folder or a dict
`{dataset_name: folder, "default": folder}`; where each dataset must sit under its root is in
`datasets/catalog.py` (torchvision's own folder names, so `download=True` output is found).

Public API:
    get_dataset(name, root="./data", split="test", transform=None) -> ZeroShotData
    check_dataset(name, root="./data", split=None, decode=1) -> dict   # call before training
    partial_label(count, expected, ...) -> 'partial (30 / 27 000)' or None   # a split short of its release
    class_balanced_subset(data, n, seed) -> ZeroShotData              # --n_samples
    dataset_labels(torch_dataset) -> list[int]
    canonical_name(name), available(), clean_name(name), TEMPLATE, DatasetError
    TEST_DATASETS (the paper's 16), TABLE_ORDER (those, then the world sets: tables' order)
    Indexed(ds), collate_indexed, CorruptImage                        # the loops' view; unreadable images
    Transformed(ds, fn)                          # an in-memory set's images through a transform (--transform crop)
    ensemble_prompts(data) -> [C][K] prompts     # --templates ensemble (datasets/templates.py)
    use_decoded_cache(data, split, dir)   # decoded uint8 arrays + the device-side PIL resize (--decoded_cache)
    PAPER_SETS (ImageNet-A/O/R, ImageNet100, tinyImageNet_split: for the paper's other tables)

The registry itself is `datasets/registry.py`; this file only imports the builders (each
registers its datasets on import) and re-exports the API. No module of the package imports
the package back: they import `datasets.registry`, `datasets.catalog`, ... directly.

    from datasets import get_dataset
    data = get_dataset("cifar10", root="./data", split="test")
    python -m datasets.prepare --root ./data --verify
"""
# Builders register themselves on import; this order is the order of `available()`.
from datasets import synthetic, world  # noqa: F401
from datasets import tinyimagenet, imagenet, torchvision_sets  # noqa: F401
from datasets import imagenet_shifts, subsets  # noqa: F401  (ImageNet-A/O/R, ImageNet100, tinyImageNet_split)
from datasets.catalog import PAPER_SETS, TABLE_ORDER, TEST_DATASETS, DatasetError, partial_label, thousands
from datasets.common import default_workers, images_to, to_unit
from datasets.decoded_cache import use_decoded_cache
from datasets.labelled import (CorruptImage, Indexed, Transformed, class_balanced_subset, collate_indexed,
                               dataset_labels)
from datasets.registry import (TEMPLATE, ZeroShotData, available, canonical_name, check_dataset, clean_name,
                               get_dataset, register, check_datasets)
from datasets.templates import ensemble_prompts

__all__ = ["get_dataset", "check_dataset", "check_datasets", "class_balanced_subset", "dataset_labels", "canonical_name",
           "available", "clean_name", "TEMPLATE", "DatasetError", "ZeroShotData", "TEST_DATASETS", "TABLE_ORDER",
           "PAPER_SETS", "register", "Indexed", "to_unit", "images_to", "default_workers", "collate_indexed",
           "CorruptImage", "use_decoded_cache", "partial_label", "thousands", "ensemble_prompts", "Transformed"]
