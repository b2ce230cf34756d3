"""TinyImageNet (200 classes, 64x64): the training set of every method and test set #1.

Layout: `<root>/tiny-imagenet-200/` exactly as the official zip extracts:
    train/<wnid>/images/<wnid>_<n>.JPEG          (500 per class)
    val/images/val_<n>.JPEG                     (10 000, flat!)
    val/val_annotations.txt                      file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1
    wnids.txt, words.txt

Pitfall: the val images are NOT in class folders. The original code pointed ImageFolder at
`val/`, which only works after a re-foldering script; on the raw zip ImageFolder sees one
class ("images") and every label is 0. We read the labels from val_annotations.txt without
moving files, and also accept an already re-foldered `val/<wnid>/images/*.JPEG` or
`val/<wnid>/*.JPEG`. Labels are indices into the sorted list of the 200 train wnids (the
order of ImageFolder on train/ and of `classnames/tinyimagenet_classes_name.txt`), names
come from that file (third column), matched by wnid.

    python -m datasets.prepare --root ./data --download tinyImageNet
    python -c "from datasets import get_dataset; print(len(get_dataset('tinyImageNet', './data', 'val')))"
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
import zipfile

from torchvision.datasets.folder import default_loader

from datasets.catalog import DatasetError, missing
from datasets.common import read_wnid_names, resize_center_crop, rgb_first
from datasets.labelled import LabelledFiles
from datasets.registry import TEMPLATE, ZeroShotData, clean_name, register

NAME = "tinyImageNet"
FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
IMAGE_EXT = (".jpeg", ".jpg", ".png")


def _images_in(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXT))


def train_wnids(base: str, root: str) -> list[str]:
    """Sorted class wnids: the train/ folders (ImageFolder's order, what the original trains on);
    without train/, wnids.txt; without that, the 200 wnids of the class-name file."""
    train = os.path.join(base, "train")
    if os.path.isdir(train):
        wnids = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
        if not wnids:
            raise missing(NAME, root, train, "train/ holds no class folders")
        return wnids
    listed = os.path.join(base, "wnids.txt")
    if os.path.isfile(listed):
        with open(listed, encoding="utf-8") as f:
            return sorted({line.strip() for line in f if line.strip()})
    return sorted(read_wnid_names("tinyimagenet_classes_name.txt"))


def _class_folder_samples(folder: str, wnids: list[str], root: str) -> list[tuple[str, int]]:
    """`folder/<wnid>/images/*.JPEG` (train, re-foldered val) or `folder/<wnid>/*.JPEG`."""
    index = {w: i for i, w in enumerate(wnids)}
    samples = []
    for wnid in sorted(os.listdir(folder)):
        sub = os.path.join(folder, wnid)
        if not os.path.isdir(sub) or wnid == "images":
            continue
        if wnid not in index:
            raise missing(NAME, root, sub, f"class folder '{wnid}' is not one of the train/ classes")
        inner = os.path.join(sub, "images") if os.path.isdir(os.path.join(sub, "images")) else sub
        samples += [(os.path.join(inner, f), index[wnid]) for f in _images_in(inner)]
    return samples


def _raw_val_samples(val: str, wnids: list[str], root: str) -> list[tuple[str, int]]:
    """Official flat layout: labels from val_annotations.txt; every image must be annotated."""
    ann_path = os.path.join(val, "val_annotations.txt")
    images_dir = os.path.join(val, "images")
    if not os.path.isfile(ann_path):
        raise missing(NAME, root, ann_path, "val/images exists but val/val_annotations.txt is missing")
    index = {w: i for i, w in enumerate(wnids)}
    labels = {}
    with open(ann_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < 2 or not fields[0] or fields[1] not in index:
                raise missing(NAME, root, ann_path, f"malformed line {lineno}: {line.rstrip()!r} "
                              "(want file<TAB>wnid<TAB>bbox, with a wnid of this dataset)")
            labels[fields[0]] = index[fields[1]]
    files = _images_in(images_dir)
    unlabelled = [f for f in files if f not in labels]
    if unlabelled:
        raise missing(NAME, root, ann_path, f"truncated annotation file: {len(labels)} annotated files for "
                      f"{len(files)} images in val/images; {len(unlabelled)} images have no label "
                      f"(first: {unlabelled[0]}). Re-extract the zip")
    absent = [f for f in labels if f not in set(files)]
    if absent:
        raise missing(NAME, root, images_dir, f"{len(absent)} annotated images are missing from "
                      f"val/images (first: {absent[0]}). Re-extract the zip")
    return [(os.path.join(images_dir, f), labels[f]) for f in files]


def tinyimagenet_samples(root: str, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples, wnids) for split 'train' or 'val' (alias 'test'); raises DatasetError."""
    base = os.path.join(root, FOLDER)
    if not os.path.isdir(base):
        raise missing(NAME, root, base, "folder not found")
    wnids = train_wnids(base, root)
    if split == "train":
        if not os.path.isdir(os.path.join(base, "train")):
            raise missing(NAME, root, os.path.join(base, "train"), "the train/ folder is missing")
        samples = _class_folder_samples(os.path.join(base, "train"), wnids, root)
    elif split in ("val", "test"):
        val = os.path.join(base, "val")
        if os.path.isdir(os.path.join(val, "images")):
            samples = _raw_val_samples(val, wnids, root)
        elif os.path.isdir(val):
            samples = _class_folder_samples(val, wnids, root)
        else:
            raise missing(NAME, root, val, "the val/ folder is missing")
    else:
        raise ValueError(f"{NAME}: split must be 'train' or 'val' (or 'test'), not {split!r}")
    if not samples:
        raise missing(NAME, root, base, f"no images found for split '{split}'")
    return samples, wnids


def classnames_for(wnids: list[str]) -> list[str]:
    names = read_wnid_names("tinyimagenet_classes_name.txt")
    unknown = [w for w in wnids if w not in names]
    if unknown:
        raise DatasetError(f"{NAME}: {len(unknown)} train/ wnids are not in "
                           f"datasets/classnames/tinyimagenet_classes_name.txt (first: {unknown[0]})")
    return [names[w] for w in wnids]


@register(NAME, "tiny-imagenet", "tiny_imagenet", "tinyimagenet200", "tiny-imagenet-200")
def build(root, split="val", transform=None) -> ZeroShotData:
    samples, wnids = tinyimagenet_samples(root, split)
    names = classnames_for(wnids)
    transform = rgb_first(resize_center_crop() if transform is None else transform)
    ds = LabelledFiles(samples, transform, loader=default_loader)
    prompts = [TEMPLATE.format(clean_name(n)) for n in names]
    return ZeroShotData(NAME, ds, names, prompts, root=os.path.join(root, FOLDER), extra={"wnids": wnids})


def download(root: str) -> None:
    """Download the official zip with a progress bar, check its md5, extract it in place."""
    from tqdm import tqdm  # optional: only downloads need it

    base = os.path.join(root, FOLDER)
    if os.path.isdir(os.path.join(base, "train")) and os.path.isdir(os.path.join(base, "val")):
        return  # already extracted; `prepare --verify` says whether it is complete
    os.makedirs(root, exist_ok=True)
    zip_path = os.path.join(root, "tiny-imagenet-200.zip")
    if not (os.path.isfile(zip_path) and _md5(zip_path) == MD5):
        tmp = zip_path + ".part"
        with urllib.request.urlopen(URL, timeout=60) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="tiny-imagenet-200.zip") as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        got = _md5(tmp)
        if got != MD5:
            os.remove(tmp)
            raise RuntimeError(f"md5 mismatch for {URL}: got {got}, expected {MD5} (download corrupted)")
        os.replace(tmp, zip_path)
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(root)  # the zip holds tiny-imagenet-200/...; val stays in its raw layout


def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
