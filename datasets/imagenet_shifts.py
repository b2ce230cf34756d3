"""ImageNet-A, ImageNet-O and ImageNet-R (the paper's Tables 11-12), in their released layouts.

Each is a 200-class subset of ImageNet-1k with its own class list, extracted from its tarball as is:
    <root>/imagenet-a/<wnid>/*.jpg      7 500 natural adversarial examples
    <root>/imagenet-o/<wnid>/*.jpg      2 000 out-of-distribution examples, filed under ImageNet-A's classes
    <root>/imagenet-r/<wnid>/*.jpg     30 000 renditions (art, cartoons, sculptures, ...)
(plus a README.txt, ignored). The class lists are committed in `datasets/classnames/`
(`imagenet_a_wnids.txt`, also ImageNet-O's; `imagenet_r_wnids.txt`), taken from the authors'
evaluation code (the 200 indices of ImageNet-1k each one keeps). Labels index the sorted list of
that dataset's 200 wnids, so the zero-shot classifier always has the dataset's 200 classes, also
when a class folder is missing (`prepare --verify` then reports the set INCOMPLETE); a folder that
is not in the list is an error. Prompts: "This is a photo of a {}" over the ImageNet class names
(third column of `imagenet_classes_names.txt`), as for ImageNet; Resize(256) + CenterCrop(224).

    python -m datasets.prepare --root ./data --download ImageNet-A ImageNet-O ImageNet-R
    python -c "from datasets import get_dataset; print(len(get_dataset('ImageNet-R', './data')))"
"""
from __future__ import annotations

import os
import tarfile
import urllib.request

from torchvision.datasets.folder import default_loader

from datasets.catalog import INFO, DatasetError, missing
from datasets.common import CLASSNAMES_DIR, read_wnid_names, resize_center_crop, rgb_first
from datasets.labelled import LabelledFiles
from datasets.registry import TEMPLATE, ZeroShotData, clean_name, register

IMAGE_EXT = (".jpeg", ".jpg", ".png")
CLASS_LISTS = {"ImageNet-A": "imagenet_a_wnids.txt", "ImageNet-O": "imagenet_a_wnids.txt",
               "ImageNet-R": "imagenet_r_wnids.txt"}
URLS = {name: f"https://people.eecs.berkeley.edu/~hendrycks/{INFO[name].folder}.tar" for name in CLASS_LISTS}


def read_wnid_list(filename: str) -> list[str]:
    """The wnids of a committed class list (one per line, `#` comments), sorted and checked against ImageNet-1k."""
    path = CLASSNAMES_DIR / filename
    wnids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    known = read_wnid_names("imagenet_classes_names.txt")
    unknown = [w for w in wnids if w not in known]
    if unknown or len(set(wnids)) != len(wnids):
        raise DatasetError(f"{path}: {len(unknown)} entries are not ImageNet-1k wnids (first: {unknown[:1]}) "
                           f"or an entry repeats")
    return sorted(wnids)


def class_folder_samples(canonical: str, root: str, folder: str, wnids: list[str],
                         require_all: bool = False) -> list[tuple[str, int]]:
    """`folder/<wnid>/*.jpg` with labels = positions in `wnids`. A folder outside `wnids` is an error;
    a wnid without a folder is one too when `require_all` (a training set must have every class)."""
    if not os.path.isdir(folder):
        raise missing(canonical, root, folder, "folder not found")
    index = {w: i for i, w in enumerate(wnids)}
    present = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    strangers = [d for d in present if d not in index]
    if strangers and not require_all:
        raise missing(canonical, root, os.path.join(folder, strangers[0]),
                      f"{len(strangers)} class folders are not among its {len(wnids)} classes "
                      f"(first: '{strangers[0]}'): another dataset's folder, or a re-foldered copy")
    if require_all:
        absent = [w for w in wnids if w not in set(present)]
        if absent:
            raise missing(canonical, root, os.path.join(folder, absent[0]),
                          f"{len(absent)} of its {len(wnids)} class folders are missing (first: {absent[0]})")
    samples = []
    for wnid in present:
        if wnid not in index:
            continue
        sub = os.path.join(folder, wnid)
        samples += [(os.path.join(sub, f), index[wnid]) for f in sorted(os.listdir(sub))
                    if f.lower().endswith(IMAGE_EXT)]
    if not samples:
        raise missing(canonical, root, folder, "no images found in the class folders")
    return samples


def imagenet_subset_data(canonical: str, root: str, samples, wnids: list[str], transform, folder: str) -> ZeroShotData:
    """A ZeroShotData over ImageNet classes: template prompts over the ImageNet class names."""
    names_by_wnid = read_wnid_names("imagenet_classes_names.txt")
    names = [names_by_wnid[w] for w in wnids]
    ds = LabelledFiles(samples, rgb_first(resize_center_crop() if transform is None else transform), default_loader)
    return ZeroShotData(canonical, ds, names, [TEMPLATE.format(clean_name(n)) for n in names],
                        root=folder, extra={"wnids": wnids})


def _register(canonical: str, *aliases: str):
    def build(root, split="test", transform=None) -> ZeroShotData:
        if split not in ("test", "val", "all"):
            raise ValueError(f"{canonical} is a test set: split must be 'test', not {split!r}")
        wnids = read_wnid_list(CLASS_LISTS[canonical])
        folder = os.path.join(root, INFO[canonical].folder)
        samples = class_folder_samples(canonical, root, folder, wnids)
        return imagenet_subset_data(canonical, root, samples, wnids, transform, folder)
    register(canonical, *aliases)(build)


_register("ImageNet-A", "imagenet_a", "imageneta", "imagenet-adversarial")
_register("ImageNet-O", "imagenet_o", "imageneto")
_register("ImageNet-R", "imagenet_r", "imagenetr", "imagenet-rendition")


def download(canonical: str, root: str) -> None:
    """Fetch the released tarball with a progress bar and extract it under `root` (no-op when present)."""
    from tqdm import tqdm  # optional: only downloads need it

    folder = os.path.join(root, INFO[canonical].folder)
    if os.path.isdir(folder) and os.listdir(folder):
        return  # already extracted; `prepare --verify` says whether it is complete
    os.makedirs(root, exist_ok=True)
    tar_path = os.path.join(root, f"{INFO[canonical].folder}.tar")
    if not os.path.isfile(tar_path):
        tmp = tar_path + ".part"
        with urllib.request.urlopen(URLS[canonical], timeout=60) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(tar_path)) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, tar_path)
    with tarfile.open(tar_path) as t:
        t.extractall(root, filter="data")  # the tarball holds <folder>/<wnid>/*.jpg
