"""ImageNet-1k validation (50 000 images, 1000 classes), test set #15.

Layouts accepted under `<root>/ImageNet/`:
  * `val/<wnid>/*.JPEG` -- ImageFolder, what the original code reads;
  * the flat official layout `val/*.JPEG` with `LOC_val_solution.csv` (Kaggle's
    ImageId,PredictionString; the first token of PredictionString is the wnid) in
    `<root>/ImageNet/`, inside `val/`, or in `<root>/`.
Labels are indices into the sorted wnids present (ImageFolder semantics: the wnid folders;
in the flat layout: the wnids of the csv), which for the real val set are the 1000 classes.
Names: third column of `classnames/imagenet_classes_names.txt`, matched by wnid. Note the file
itself is NOT in sorted-wnid order and has no trailing newline.
`split='train'` reads `<root>/ImageNet/train/<wnid>/*.JPEG`.

ImageNet cannot be downloaded automatically (licence); see `python -m datasets.prepare`.

    python -m datasets.prepare --root ./data --verify ImageNet
"""
from __future__ import annotations

import csv
import os

from torchvision.datasets.folder import default_loader

from datasets.catalog import DatasetError, missing
from datasets.common import read_wnid_names, resize_center_crop, rgb_first
from datasets.labelled import LabelledFiles
from datasets.registry import TEMPLATE, ZeroShotData, clean_name, register

NAME = "ImageNet"
FOLDER = "ImageNet"
SOLUTION = "LOC_val_solution.csv"
IMAGE_EXT = (".jpeg", ".jpg", ".png")


def _folder_samples(folder, known, root):
    wnids = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    unknown = [w for w in wnids if w not in known]
    if unknown:
        raise missing(NAME, root, os.path.join(folder, unknown[0]),
                      f"{len(unknown)} folders are not ImageNet-1k wnids (first: '{unknown[0]}')")
    samples = []
    for label, wnid in enumerate(wnids):
        sub = os.path.join(folder, wnid)
        samples += [(os.path.join(sub, f), label) for f in sorted(os.listdir(sub))
                    if f.lower().endswith(IMAGE_EXT)]
    return samples, wnids


def _flat_samples(val, known, root):
    """`val/*.JPEG` + LOC_val_solution.csv; every image must have a row."""
    candidates = [os.path.join(val, SOLUTION), os.path.join(os.path.dirname(val), SOLUTION),
                  os.path.join(os.path.dirname(os.path.dirname(val)), SOLUTION)]
    csv_path = next((p for p in candidates if os.path.isfile(p)), None)
    if csv_path is None:
        raise missing(NAME, root, val, f"flat val/*.JPEG layout but no {SOLUTION} in any of {candidates}")
    rows = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise missing(NAME, root, csv_path, f"header must be 'ImageId,PredictionString', got {header}")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            tokens = row[1].split() if len(row) > 1 else []
            if not row[0] or not tokens or tokens[0] not in known:
                raise missing(NAME, root, csv_path, f"malformed row {lineno}: {row}")
            rows[row[0]] = tokens[0]
    files = sorted(f for f in os.listdir(val) if f.lower().endswith(IMAGE_EXT))
    unlabelled = [f for f in files if os.path.splitext(f)[0] not in rows]
    if unlabelled:
        raise missing(NAME, root, csv_path, f"{len(unlabelled)} of {len(files)} images have no row "
                      f"(first: {unlabelled[0]}); the csv is truncated or belongs to another split")
    wnids = sorted(set(rows.values()))
    index = {w: i for i, w in enumerate(wnids)}
    return [(os.path.join(val, f), index[rows[os.path.splitext(f)[0]]]) for f in files], wnids


def imagenet_samples(root: str, split: str):
    known = read_wnid_names("imagenet_classes_names.txt")
    if len(known) != 1000:
        raise DatasetError(f"classnames/imagenet_classes_names.txt lists {len(known)} classes, not 1000")
    sub = "train" if split == "train" else "val"
    if split not in ("train", "val", "test"):
        raise ValueError(f"{NAME}: split must be 'val' (or 'test') or 'train', not {split!r}")
    folder = os.path.join(root, FOLDER, sub)
    if not os.path.isdir(folder):
        raise missing(NAME, root, folder, "folder not found")
    entries = os.listdir(folder)
    has_dirs = any(os.path.isdir(os.path.join(folder, e)) for e in entries)
    has_images = any(e.lower().endswith(IMAGE_EXT) for e in entries)
    samples = []
    if has_dirs and not has_images:
        samples, wnids = _folder_samples(folder, known, root)
    elif has_images and sub == "val":
        samples, wnids = _flat_samples(folder, known, root)
    if not samples:
        raise missing(NAME, root, folder, "no images found (neither <wnid>/*.JPEG nor *.JPEG + csv)")
    return samples, wnids


@register(NAME, "imagenet1k", "imagenet-1k", "imagenet_1k", "ilsvrc2012", "in1k")
def build(root, split="val", transform=None) -> ZeroShotData:
    samples, wnids = imagenet_samples(root, split)
    names_by_wnid = read_wnid_names("imagenet_classes_names.txt")
    names = [names_by_wnid[w] for w in wnids]
    transform = rgb_first(resize_center_crop() if transform is None else transform)
    ds = LabelledFiles(samples, transform, loader=default_loader)
    prompts = [TEMPLATE.format(clean_name(n)) for n in names]
    return ZeroShotData(NAME, ds, names, prompts, root=os.path.join(root, FOLDER), extra={"wnids": wnids})
