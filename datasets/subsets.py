"""The two training sets the paper derives from others (Tables 9-10 and 13), each seeded and recorded.

* `ImageNet100` (Tables 9-10): 100 ImageNet-1k classes drawn once with `random.Random(0).sample`
  from the 1 000 sorted wnids and committed in `datasets/classnames/imagenet100_wnids.txt` (the
  paper does not name its classes). `train`: `<root>/ImageNet/train/<wnid>/*.JPEG` of those classes
  (the other folders may be there, they are not read); `test`: the same classes of ImageNet val.
  Labels index the sorted 100 wnids; prompts as ImageNet's.
* `tinyImageNet_split` (Table 13): TinyImageNet train split per class 80/20 with seed 0, `train`
  the 80 % (400 images per class), `test` the held-out 20 % (100 per class). Each class's files
  (sorted) are shuffled by `random.Random("0:<wnid>")`, so the split of a class does not depend on
  the others. The held-out files are recorded in `tiny-imagenet-200/holdout20_seed0.txt` the first
  time the split is built, and read from there afterwards: the split stays fixed, and a record
  that lists files no longer in train/ is an error (delete it to draw again).

    python -m datasets.prepare --write_imagenet100      # regenerate the committed class list
    python -c "from datasets import get_dataset; print(len(get_dataset('tinyImageNet_split', './data', 'train')))"
"""
from __future__ import annotations

import os
import random
import warnings

from torchvision.datasets.folder import default_loader

from datasets.catalog import DatasetError, missing
from datasets.common import read_wnid_names, resize_center_crop, rgb_first
from datasets.imagenet import imagenet_samples
from datasets.imagenet_shifts import class_folder_samples, imagenet_subset_data, read_wnid_list
from datasets.labelled import LabelledFiles
from datasets.registry import TEMPLATE, ZeroShotData, clean_name, register
from datasets.tinyimagenet import FOLDER as TINY_FOLDER, classnames_for, tinyimagenet_samples

IMAGENET100_FILE = "imagenet100_wnids.txt"
IMAGENET100_SEED, IMAGENET100_CLASSES = 0, 100
SPLIT_SEED, HELDOUT_FRACTION = 0, 0.2
SPLIT_RECORD = f"holdout{round(100 * HELDOUT_FRACTION)}_seed{SPLIT_SEED}.txt"


# --------------------------------------------------------------------------- ImageNet, 100 classes
def draw_imagenet100(seed: int = IMAGENET100_SEED, n: int = IMAGENET100_CLASSES) -> list[str]:
    """The seeded draw behind the committed list: `n` of the 1 000 sorted ImageNet wnids, sorted."""
    wnids = sorted(read_wnid_names("imagenet_classes_names.txt"))
    return sorted(random.Random(seed).sample(wnids, n))


def imagenet100_header(seed: int = IMAGENET100_SEED, n: int = IMAGENET100_CLASSES) -> list[str]:
    return [f"# {n} ImageNet-1k classes for the paper's Tables 9-10: random.Random({seed}).sample(the 1000 sorted",
            "# wnids of imagenet_classes_names.txt, 100), sorted. Regenerate: python -m datasets.prepare --write_imagenet100"]


@register("ImageNet100", "imagenet_100", "imagenet-100", "imagenet_subset100", "in100")
def build_imagenet100(root, split="train", transform=None) -> ZeroShotData:
    wnids = read_wnid_list(IMAGENET100_FILE)
    if split == "train":
        folder = os.path.join(root, "ImageNet", "train")
        samples = class_folder_samples("ImageNet100", root, folder, wnids, require_all=True)
    elif split in ("val", "test"):
        folder = os.path.join(root, "ImageNet", "val")
        try:
            all_samples, all_wnids = imagenet_samples(root, "val")
        except DatasetError as e:
            raise missing("ImageNet100", root, folder, f"its test split is ImageNet val: {str(e).splitlines()[0]}")
        index = {w: i for i, w in enumerate(wnids)}
        samples = [(p, index[all_wnids[y]]) for p, y in all_samples if all_wnids[y] in index]
        if not samples:
            raise missing("ImageNet100", root, folder, "ImageNet val holds none of the 100 classes")
    else:
        raise ValueError(f"ImageNet100: split must be 'train' or 'test', not {split!r}")
    return imagenet_subset_data("ImageNet100", root, samples, wnids, transform, folder)


# --------------------------------------------------------------------------- TinyImageNet 80/20
def draw_holdout(samples, wnids: list[str], seed: int = SPLIT_SEED, fraction: float = HELDOUT_FRACTION,
                 train_dir: str = "") -> list[str]:
    """The held-out files (paths relative to train/, sorted): per class, the first round(fraction · n)
    of the class's sorted files shuffled by `random.Random(f"{seed}:{wnid}")`."""
    by_class: dict[int, list[str]] = {}
    for path, y in samples:
        by_class.setdefault(y, []).append(os.path.relpath(path, train_dir).replace(os.sep, "/"))
    held = []
    for y, files in sorted(by_class.items()):
        files = sorted(files)
        random.Random(f"{seed}:{wnids[y]}").shuffle(files)
        held += files[:round(fraction * len(files))]
    return sorted(held)


def holdout_files(root: str, samples, wnids: list[str]) -> tuple[set[str], str]:
    """The recorded held-out set (written on first use), and the record's path."""
    base = os.path.join(root, TINY_FOLDER)
    train_dir, record = os.path.join(base, "train"), os.path.join(base, SPLIT_RECORD)
    present = {os.path.relpath(p, train_dir).replace(os.sep, "/") for p, _ in samples}
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as f:
            held = {line.strip() for line in f if line.strip() and not line.startswith("#")}
        stale = sorted(held - present)
        if stale:
            raise missing("tinyImageNet_split", root, record,
                          f"the recorded split lists {len(stale)} files that train/ does not hold (first: {stale[0]}); "
                          f"delete {record} to draw the split again")
        return held, record
    held_list = draw_holdout(samples, wnids, train_dir=train_dir)
    header = f"# TinyImageNet train, held-out {HELDOUT_FRACTION:.0%} per class, seed {SPLIT_SEED} (datasets/subsets.py)\n"
    tmp = f"{record}.tmp-{os.getpid()}"
    try:  # every process draws the same list: a concurrent first use writes identical files
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(header + "".join(line + "\n" for line in held_list))
        os.replace(tmp, record)
    except OSError as e:
        warnings.warn(f"tinyImageNet_split: could not record the split in {record} ({e}); it is drawn "
                      f"again (identically) on each use")
    return set(held_list), record


@register("tinyImageNet_split", "tinyimagenet_80_20", "tinyimagenet-split", "tiny_imagenet_split")
def build_tiny_split(root, split="test", transform=None) -> ZeroShotData:
    if split not in ("train", "val", "test"):
        raise ValueError(f"tinyImageNet_split: split must be 'train' (80 %) or 'test' (held-out 20 %), not {split!r}")
    samples, wnids = tinyimagenet_samples(root, "train")
    held, record = holdout_files(root, samples, wnids)
    train_dir = os.path.join(root, TINY_FOLDER, "train")
    keep_held = split != "train"
    chosen = [(p, y) for p, y in samples
              if (os.path.relpath(p, train_dir).replace(os.sep, "/") in held) == keep_held]
    names = classnames_for(wnids)
    ds = LabelledFiles(chosen, rgb_first(resize_center_crop() if transform is None else transform), default_loader)
    return ZeroShotData("tinyImageNet_split", ds, names, [TEMPLATE.format(clean_name(n)) for n in names],
                        root=os.path.join(root, TINY_FOLDER),
                        extra={"wnids": wnids, "split_record": record, "split_seed": SPLIT_SEED})

