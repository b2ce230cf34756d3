"""The 14 test sets that torchvision reads (the paper's test sets 2-14 and 16), wrapped, never copied.

Each builder checks the folder before constructing the torchvision class (so a missing
dataset names the path and the fix instead of torchvision's bare "Dataset not found", and
Caltech's constructor cannot create empty folders), wraps any error torchvision raises into
`DatasetError`, and attaches the prompts of the original code:

  cifar10/100, STL10, Caltech101, SUN397: "This is a photo of a {}" over clean_name(class)
  Food101  "A photo of {}, a type of food."           oxfordpet "A photo of a {}, a type of pet."
  flowers102 "A photo of a {}, a type of flower."     dtd "A surface with a {} texture."
  EuroSAT "A centered satellite photo of {}."         fgvc "A photo of a {}, a type of aircraft."
  Caltech256 / StanfordCars "A photo of a {}."         PCAM: two fixed prompts ("Tthis" typo kept)
For the non-template sets the original lower-cases the names and turns `_` and `-` into
spaces (fgvc: only `_`, so "boeing 707-320"); we do the same [faithful].

Integrity: torchvision md5-checks the CIFAR/STL10/Flowers files on every load; we check that
the files exist instead (the md5s are re-checked by `prepare --download`, counts by `--verify`).

    python -m datasets.prepare --root ./data --download cifar10 STL10
    python -c "from datasets import get_dataset; d = get_dataset('dtd', './data'); print(d.prompts[:3])"
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re

import torchvision.datasets as tvd
from torchvision.datasets.folder import default_loader

from datasets.catalog import INFO, DatasetError, missing
from datasets.common import lower_clean, read_lines, resize_center_crop, resize_square, rgb_first
from datasets.labelled import LabelledFiles
from datasets.registry import TEMPLATE, ZeroShotData, clean_name, register

WHOLE_SET = ("all", "test", "val", "whole")


@contextlib.contextmanager
def torchvision_errors(canonical: str, root: str):
    """torchvision's RuntimeError('Dataset not found ...'), a missing file, a bad .mat... -> DatasetError."""
    try:
        yield
    except DatasetError:
        raise
    except (RuntimeError, OSError, KeyError, ValueError, IndexError, pickle.UnpicklingError) as e:
        path = os.path.join(root, INFO[canonical].folder)
        raise missing(canonical, root, path, f"could not be read ({type(e).__name__}: {e})") from e


def require(canonical: str, root: str, *relpaths: str) -> None:
    """Raise a DatasetError naming the first of `root/relpath` that does not exist."""
    for rel in relpaths:
        path = os.path.join(root, rel)
        if not os.path.exists(path):
            what = "folder not found" if not os.path.splitext(rel)[1] else "file not found"
            raise missing(canonical, root, path, what)


def check_split(canonical: str, split: str, allowed) -> str:
    if split not in allowed:
        raise ValueError(f"{canonical}: split must be one of {allowed}, not {split!r}")
    return split


def _or(transform, default):
    """The caller's transform, else the original code's; always behind ToRGB."""
    return rgb_first(transform if transform is not None else default())


def data(canonical, root, ds, classnames, prompts) -> ZeroShotData:
    return ZeroShotData(canonical, ds, list(classnames), list(prompts),
                        root=os.path.join(root, INFO[canonical].folder))


# --------------------------------------------------------------------------- CIFAR, STL10
class _ExistenceChecked:
    """Mixin: replace torchvision's md5 check of the pickles/binaries by an existence check."""

    def _check_integrity(self) -> bool:
        files = [f for f, _ in self._needed_files()]
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in files)


class CIFAR10Files(_ExistenceChecked, tvd.CIFAR10):
    def _needed_files(self):
        return (self.train_list if self.train else self.test_list) + [(self.meta["filename"], None)]

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class CIFAR100Files(CIFAR10Files, tvd.CIFAR100):
    pass


def _cifar(canonical, cls, folder, files):
    def build(root, split="test", transform=None):
        check_split(canonical, split, ("train", "test"))
        train = split == "train"
        require(canonical, root, folder, *[os.path.join(folder, f) for f in files(train)])
        with torchvision_errors(canonical, root):
            ds = cls(root, train=train, transform=_or(transform, resize_square), download=False)
        return data(canonical, root, ds, ds.classes, [TEMPLATE.format(clean_name(c)) for c in ds.classes])
    return build


register("cifar10", "cifar-10", "cifar_10")(_cifar(
    "cifar10", CIFAR10Files, "cifar-10-batches-py",
    lambda train: ([f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]) + ["batches.meta"]))
register("cifar100", "cifar-100", "cifar_100")(_cifar(
    "cifar100", CIFAR100Files, "cifar-100-python", lambda train: ["train" if train else "test", "meta"]))

STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


class STL10Files(tvd.STL10):
    def _check_integrity(self) -> bool:
        files = {"test": self.test_list}.get(self.split, self.train_list[:2])
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f, _ in files)


@register("STL10", "stl-10", "stl_10")
def build_stl10(root, split="test", transform=None):
    check_split("STL10", split, ("train", "test"))
    require("STL10", root, "stl10_binary", f"stl10_binary/{split}_X.bin", f"stl10_binary/{split}_y.bin")
    with torchvision_errors("STL10", root):
        ds = STL10Files(root, split=split, transform=_or(transform, resize_square), download=False)
    classes = getattr(ds, "classes", None) or STL10_CLASSES  # class_names.txt is optional
    return data("STL10", root, ds, classes, [TEMPLATE.format(clean_name(c)) for c in classes])


def _split_file_set(canonical, root, split, transform, splits, files, tv_class, template):
    """A torchvision set of images + per-split file lists (Food101, Oxford pets): the files checked,
    the set built, one prompt per class (`template` over the lower-cased torchvision names)."""
    check_split(canonical, split, splits)
    require(canonical, root, *(f.format(split=split) for f in files))
    with torchvision_errors(canonical, root):
        ds = tv_class(root, split=split, transform=_or(transform, resize_center_crop))
    return data(canonical, root, ds, ds.classes, [template.format(lower_clean(c)) for c in ds.classes])


@register("Food101", "food-101", "food_101")
def build_food101(root, split="test", transform=None):
    return _split_file_set("Food101", root, split, transform, ("train", "test"),
                           ("food-101/images", "food-101/meta/{split}.json"), tvd.Food101,
                           "A photo of {}, a type of food.")


@register("oxfordpet", "oxford_pets", "oxford-pets", "oxfordpets", "oxford_iiit_pet", "oxford-iiit-pet", "pets")
def build_oxfordpet(root, split="test", transform=None):
    # torchvision names are "American Bulldog"-style; the original lower-cases them.
    return _split_file_set("oxfordpet", root, split, transform, ("trainval", "test"),
                           ("oxford-iiit-pet/images", "oxford-iiit-pet/annotations/{split}.txt"),
                           tvd.OxfordIIITPet, "A photo of a {}, a type of pet.")


class Flowers102Files(tvd.Flowers102):
    def _check_integrity(self) -> bool:
        return self._images_folder.is_dir() and all(
            (self._base_folder / self._file_dict[k][0]).is_file() for k in ("label", "setid"))


@register("flowers102", "flowers", "flowers-102", "oxford_flowers", "oxford_flowers102")
def build_flowers102(root, split="test", transform=None):
    check_split("flowers102", split, ("train", "val", "test"))
    require("flowers102", root, "flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat")
    with torchvision_errors("flowers102", root):
        ds = Flowers102Files(root, split=split, transform=_or(transform, resize_center_crop))
    names = read_lines("flowers102_classes.txt")  # torchvision has no names; labels 0..101 index them
    prompts = ["A photo of a {}, a type of flower.".format(lower_clean(c)) for c in names]
    return data("flowers102", root, ds, names, prompts)


@register("dtd", "describable_textures", "describabletextures")
def build_dtd(root, split="test", transform=None):
    check_split("dtd", split, ("train", "val", "test"))
    # partition 1 only, as the original (torchvision's default); test1.txt has 1 880 lines.
    require("dtd", root, "dtd/dtd/images", f"dtd/dtd/labels/{split}1.txt")
    with torchvision_errors("dtd", root):
        ds = tvd.DTD(root, split=split, partition=1, transform=_or(transform, resize_center_crop))
    prompts = ["A surface with a {} texture.".format(lower_clean(c)) for c in ds.classes]
    return data("dtd", root, ds, ds.classes, prompts)


# torchvision's EuroSAT is an ImageFolder on eurosat/2750: classes are the sorted folder names.
EUROSAT_FOLDERS = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake"]


@register("EuroSAT", "eurosat_rgb", "euro_sat")
def build_eurosat(root, split="all", transform=None):
    check_split("EuroSAT", split, WHOLE_SET)  # the whole set, 27 000 images, as the original
    require("EuroSAT", root, "eurosat/2750")
    with torchvision_errors("EuroSAT", root):
        ds = tvd.EuroSAT(root, transform=_or(transform, resize_center_crop))
    by_folder = dict(zip(EUROSAT_FOLDERS, read_lines("eurosat_classes.txt")))
    unknown = [c for c in ds.classes if c not in by_folder]
    if unknown:
        raise missing("EuroSAT", root, os.path.join(root, "eurosat/2750", unknown[0]),
                      f"unexpected class folder(s) {unknown}; expected {EUROSAT_FOLDERS}")
    names = [by_folder[c] for c in ds.classes]
    prompts = ["A centered satellite photo of {}.".format(lower_clean(c)) for c in names]
    return data("EuroSAT", root, ds, names, prompts)


def fgvc_name(variant: str) -> str:
    """Variants starting with 7 are Boeing 7x7s: '707-320' -> 'Boeing 707-320' (the original's fix)."""
    return f"Boeing {variant}" if variant.startswith("7") else variant


@register("fgvc_aircraft", "fgvc-aircraft", "fgvcaircraft", "aircraft", "fgvc")
def build_fgvc(root, split="test", transform=None):
    check_split("fgvc_aircraft", split, ("train", "val", "trainval", "test"))
    base = "fgvc-aircraft-2013b/data"
    require("fgvc_aircraft", root, f"{base}/images", f"{base}/variants.txt", f"{base}/images_variant_{split}.txt")
    with torchvision_errors("fgvc_aircraft", root):
        ds = tvd.FGVCAircraft(root, split=split, annotation_level="variant",
                              transform=_or(transform, resize_center_crop))
    names = [fgvc_name(c) for c in ds.classes]
    prompts = ["A photo of a {}, a type of aircraft.".format(lower_clean(c, "_")) for c in names]
    return data("fgvc_aircraft", root, ds, names, prompts)


# --------------------------------------------------------------------------- Caltech
class _CaltechFiles:
    """Mixin for torchvision's Caltech101/256: keep its category list (and Caltech101's removal
    of BACKGROUND_Google), but read the image files that are really there.

    torchvision rebuilds each file name from counters (`image_{k:04d}.jpg`,
    `{label+1:03d}_{k:04d}.jpg`), which breaks as soon as a category folder is missing or a
    numbering has a gap (a partial copy, a hand-made subset); it also counts non-image files."""

    _folder = ""

    def _list_files(self):
        base = os.path.join(self.root, self._folder)
        self._files, self.y = [], []
        for label, cat in enumerate(self.categories):
            names = sorted(f for f in os.listdir(os.path.join(base, cat)) if f.lower().endswith(".jpg"))
            self._files += [os.path.join(base, cat, f) for f in names]
            self.y += [label] * len(names)
        self.index = list(range(1, len(self.y) + 1))

    def __len__(self):
        return len(self._files)

    def __getitem__(self, i):
        img = default_loader(self._files[i])
        img = self.transform(img) if self.transform is not None else img
        y = self.y[i]
        return img, (self.target_transform(y) if self.target_transform is not None else y)


class Caltech101Files(_CaltechFiles, tvd.Caltech101):
    _folder = "101_ObjectCategories"

    def __init__(self, root, transform=None):
        super().__init__(root, target_type="category", transform=transform)
        self._list_files()


class Caltech256Files(_CaltechFiles, tvd.Caltech256):
    _folder = "256_ObjectCategories"

    def __init__(self, root, transform=None):
        super().__init__(root, transform=transform)
        self._list_files()


def _caltech101_without_background(folder: str, transform):
    """Without BACKGROUND_Google torchvision's constructor fails (`categories.remove`); list
    the same categories ourselves."""
    cats = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    samples = [(os.path.join(folder, c, f), i) for i, c in enumerate(cats)
               for f in sorted(os.listdir(os.path.join(folder, c))) if f.lower().endswith(".jpg")]
    ds = LabelledFiles(samples, transform, default_loader)
    ds.categories = cats
    return ds


@register("Caltech101", "caltech-101", "caltech_101")
def build_caltech101(root, split="all", transform=None):
    check_split("Caltech101", split, WHOLE_SET)
    require("Caltech101", root, "caltech101/101_ObjectCategories")
    folder = os.path.join(root, "caltech101", "101_ObjectCategories")
    transform = _or(transform, resize_center_crop)  # many Caltech JPEGs are grayscale
    with torchvision_errors("Caltech101", root):
        if os.path.isdir(os.path.join(folder, "BACKGROUND_Google")):
            # torchvision drops BACKGROUND_Google itself ("not a real class"): 101 categories remain.
            ds = Caltech101Files(root, transform=transform)
        else:
            ds = _caltech101_without_background(folder, transform)
    prompts = [TEMPLATE.format(clean_name(c)) for c in ds.categories]
    return data("Caltech101", root, ds, ds.categories, prompts)


def caltech256_name(folder: str) -> str:
    """'001.ak47' -> 'ak47', '253.faces-easy-101' -> 'faces easy', '257.clutter' -> 'clutter'."""
    name = re.sub(r"^\d+\.", "", folder).replace("-101", "")
    return lower_clean(name).strip()


@register("Caltech256", "caltech-256", "caltech_256")
def build_caltech256(root, split="all", transform=None):
    check_split("Caltech256", split, WHOLE_SET)  # all 257 folders, 257.clutter included
    require("Caltech256", root, "caltech256/256_ObjectCategories")
    with torchvision_errors("Caltech256", root):
        ds = Caltech256Files(root, transform=_or(transform, resize_center_crop))
    names = [caltech256_name(c) for c in ds.categories]
    return data("Caltech256", root, ds, names, ["A photo of a {}.".format(n) for n in names])


# --------------------------------------------------------------------------- Cars, PCAM, SUN397
def cars_name(name: str) -> str:
    """'AM General Hummer SUV 2000' -> 'am general hummer suv' (year stripped, then cleaned)."""
    return lower_clean(re.sub(r"\s+\d{4}$", "", name))


def _cars_from_cars_annos(root: str, split: str, transform):
    """The all-in-one release the original code reads: stanford_cars/cars_annos.mat (fields
    relative_im_path 'car_ims/000001.jpg', class (1-based), test (0/1); plus class_names)
    and stanford_cars/car_ims/. Same classes and split as torchvision's layout."""
    import scipy.io  # optional: only this release format needs scipy (as torchvision's StanfordCars)
    base = os.path.join(root, "stanford_cars")
    mat = scipy.io.loadmat(os.path.join(base, "cars_annos.mat"), squeeze_me=True)
    want_test = split == "test"
    samples = [(os.path.join(base, str(a["relative_im_path"])), int(a["class"]) - 1)
               for a in mat["annotations"] if bool(int(a["test"])) == want_test]
    ds = LabelledFiles(samples, transform, default_loader)
    ds.classes = [str(c) for c in mat["class_names"].tolist()]
    return ds


@register("StanfordCars", "stanford_cars", "stanford-cars", "cars", "stanfordcars196")
def build_cars(root, split="test", transform=None):
    check_split("StanfordCars", split, ("train", "test"))
    transform = _or(transform, resize_center_crop)
    if os.path.isfile(os.path.join(root, "stanford_cars", "cars_annos.mat")) and \
            not os.path.isdir(os.path.join(root, "stanford_cars", "devkit")):
        with torchvision_errors("StanfordCars", root):
            ds = _cars_from_cars_annos(root, split, transform)
    else:
        ann = "stanford_cars/cars_test_annos_withlabels.mat" if split == "test" else \
            "stanford_cars/devkit/cars_train_annos.mat"
        require("StanfordCars", root, "stanford_cars", "stanford_cars/devkit/cars_meta.mat", ann,
                f"stanford_cars/cars_{split}")
        with torchvision_errors("StanfordCars", root):
            ds = tvd.StanfordCars(root, split=split, transform=transform)
    names = [str(c) for c in ds.classes]
    return data("StanfordCars", root, ds, names, ["A photo of a {}.".format(cars_name(c)) for c in names])


PCAM_PROMPTS = ["Tthis is a photo of healthy lymph node tissue.",  # the original's typo, kept
                "This is a photo of lymph node tumor tissue."]


class PCAMFiles(tvd.PCAM):
    """torchvision's PCAM plus a `targets` list (read once from the y file, no image decoding)."""

    @property
    def targets(self):
        if not hasattr(self, "_targets"):
            f = self._base_folder / self._FILES[self._split]["targets"][0]
            with self.h5py.File(f) as h:
                self._targets = [int(v) for v in h["y"][:].reshape(-1)]
        return self._targets


@register("PCAM", "patchcamelyon", "patch_camelyon")
def build_pcam(root, split="test", transform=None):
    check_split("PCAM", split, ("train", "val", "test"))
    stem = {"train": "train", "val": "valid", "test": "test"}[split]
    require("PCAM", root, "pcam", f"pcam/camelyonpatch_level_2_split_{stem}_x.h5",
            f"pcam/camelyonpatch_level_2_split_{stem}_y.h5")
    with torchvision_errors("PCAM", root):
        ds = PCAMFiles(root, split=split, transform=_or(transform, resize_center_crop))
        n, n_labels = len(ds), len(ds.targets)
    if n != n_labels:
        raise missing("PCAM", root, os.path.join(root, "pcam"), f"{n} images but {n_labels} labels")
    return data("PCAM", root, ds, ["healthy lymph node tissue", "lymph node tumor tissue"], PCAM_PROMPTS)


class SUN397Sorted(tvd.SUN397):
    """torchvision lists SUN397 with an unsorted rglob; sort so that sample order (and with it
    `class_balanced_subset`) does not depend on the file system."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        order = sorted(range(len(self._image_files)), key=lambda i: str(self._image_files[i]))
        self._image_files = [self._image_files[i] for i in order]
        self._labels = [self._labels[i] for i in order]


@register("SUN397", "sun-397", "sun_397", "sun")
def build_sun397(root, split="all", transform=None):
    check_split("SUN397", split, WHOLE_SET)  # the whole set, as the original
    require("SUN397", root, "SUN397", "SUN397/ClassName.txt")
    with torchvision_errors("SUN397", root):
        ds = SUN397Sorted(root, transform=_or(transform, resize_center_crop))
    if len(ds) == 0:
        raise missing("SUN397", root, os.path.join(root, "SUN397"), "no sun_*.jpg images found")
    # classes are 'abbey', 'apartment_building/outdoor', ...; clean_name turns `_` and `/` into spaces
    return data("SUN397", root, ds, ds.classes, [TEMPLATE.format(clean_name(c)) for c in ds.classes])
