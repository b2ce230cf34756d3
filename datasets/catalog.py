"""Where every dataset lives under `--root`, what must be there, how to get it, and how big it is.

One entry per canonical dataset name. The folders follow torchvision's own conventions, so
what `torchvision.datasets.X(root, download=True)` writes is found as is; TinyImageNet and
ImageNet follow the original code (`<root>/tiny-imagenet-200`, `<root>/ImageNet/val`).
The builders, `check_dataset` and `python -m datasets.prepare` all read this table, so an
error message, the prepare report and the loader never disagree. The module needs no torch
or PIL, which is why `DatasetError` is defined here and not in `common.py`.

    python -m datasets.prepare --root ./data --verify
    python -m datasets.prepare --root ./data --download cifar10 dtd tinyImageNet
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field


class DatasetError(RuntimeError):
    """A dataset is missing or malformed; the message says where, what, and how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    folder: str                 # path under root that must exist (first thing checked)
    layout: str                 # the exact files and folders expected inside `folder`
    num_classes: int
    counts: dict                # split -> expected number of images (the paper's evaluation / torchvision docs)
    eval_split: str             # the split the paper evaluates on
    download: str = "torchvision"   # "torchvision" | "tinyimagenet" | "tar" (one archive URL) | "manual"
    source: str = ""            # where to get the files when they cannot be downloaded
    extra: dict = field(default_factory=dict)


INFO: dict[str, DatasetInfo] = {
    "tinyImageNet": DatasetInfo(
        "tiny-imagenet-200",
        "train/<wnid>/images/*.JPEG (200 wnid folders), val/images/*.JPEG + val/val_annotations.txt "
        "(tab-separated: file, wnid, x0, y0, x1, y1) -- the official zip extracted as is; "
        "a re-foldered val/<wnid>/[images/]*.JPEG is accepted too",
        200, {"train": 100_000, "val": 10_000}, "val", "tinyimagenet",
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip"),
    "cifar10": DatasetInfo(
        "cifar-10-batches-py", "data_batch_1..5, test_batch, batches.meta (python pickles)",
        10, {"train": 50_000, "test": 10_000}, "test"),
    "cifar100": DatasetInfo(
        "cifar-100-python", "train, test, meta (python pickles)",
        100, {"train": 50_000, "test": 10_000}, "test"),
    "STL10": DatasetInfo(
        "stl10_binary", "test_X.bin, test_y.bin (and train_X.bin, train_y.bin), class_names.txt",
        10, {"train": 5_000, "test": 8_000}, "test"),
    "Food101": DatasetInfo(
        "food-101", "images/<class>/<id>.jpg, meta/train.json, meta/test.json",
        101, {"train": 75_750, "test": 25_250}, "test"),
    "oxfordpet": DatasetInfo(
        "oxford-iiit-pet", "images/<Breed>_<n>.jpg, annotations/trainval.txt, annotations/test.txt",
        37, {"trainval": 3_680, "test": 3_669}, "test"),
    "flowers102": DatasetInfo(
        "flowers-102", "jpg/image_00001.jpg ..., imagelabels.mat, setid.mat",
        102, {"train": 1_020, "val": 1_020, "test": 6_149}, "test"),
    "dtd": DatasetInfo(
        "dtd/dtd", "images/<class>/<file>.jpg, labels/test1.txt (and train1.txt, val1.txt, ...)",
        47, {"train": 1_880, "val": 1_880, "test": 1_880}, "test"),
    "EuroSAT": DatasetInfo(
        "eurosat/2750", "<Class>/<Class>_<n>.jpg for the 10 classes AnnualCrop ... SeaLake (RGB version)",
        10, {"all": 27_000}, "all"),
    "fgvc_aircraft": DatasetInfo(
        "fgvc-aircraft-2013b", "data/images/<id>.jpg, data/variants.txt, data/images_variant_test.txt "
        "(and _train/_val/_trainval)",
        100, {"train": 3_334, "val": 3_333, "trainval": 6_667, "test": 3_333}, "test"),
    "Caltech101": DatasetInfo(
        "caltech101/101_ObjectCategories",
        "<category>/image_0001.jpg ... for the 101 categories (+ BACKGROUND_Google, which is skipped)",
        101, {"all": 8_677}, "all", "manual",
        "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip; unzip it and extract "
        "the 101_ObjectCategories.tar.gz inside into <root>/caltech101/, so that <root>/caltech101/101_ObjectCategories/accordion/"
        "image_0001.jpg exists"),
    "Caltech256": DatasetInfo(
        "caltech256/256_ObjectCategories",
        "001.ak47/001_0001.jpg ... 257.clutter/257_0001.jpg (257 folders incl. clutter)",
        257, {"all": 30_607}, "all", "manual",
        "https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar; extract it "
        "into <root>/caltech256/, so that <root>/caltech256/256_ObjectCategories/001.ak47/001_0001.jpg exists"),
    "StanfordCars": DatasetInfo(
        "stanford_cars", "devkit/cars_meta.mat, cars_test_annos_withlabels.mat, cars_test/00001.jpg ... "
        "(train: devkit/cars_train_annos.mat, cars_train/); or the all-in-one release "
        "cars_annos.mat + car_ims/000001.jpg ... that the original code reads",
        196, {"train": 8_144, "test": 8_041}, "test", "manual",
        "cars_test.tgz + car_devkit.tgz + cars_test_annos_withlabels.mat (the Stanford site is gone; "
        "mirrors: Kaggle 'stanford-cars-dataset' and 'cars_test_annos_withlabels'); arrange them as "
        "<root>/stanford_cars/devkit/cars_meta.mat, <root>/stanford_cars/cars_test_annos_withlabels.mat, "
        "<root>/stanford_cars/cars_test/00001.jpg ... 08041.jpg"),
    "PCAM": DatasetInfo(
        "pcam", "camelyonpatch_level_2_split_test_x.h5 (x: N x 96 x 96 x 3 uint8), "
        "camelyonpatch_level_2_split_test_y.h5 (y: N x 1 x 1 x 1)",
        2, {"train": 262_144, "val": 32_768, "test": 32_768}, "test", "manual",
        "the .h5.gz files from https://github.com/basveeling/pcam (Google Drive / Zenodo record "
        "2546921); gunzip them into <root>/pcam/. `--download PCAM` tries torchvision's Google "
        "Drive download first"),
    "ImageNet": DatasetInfo(
        "ImageNet/val", "<wnid>/*.JPEG (1000 folders, ImageFolder) or the flat official layout "
        "*.JPEG + ../LOC_val_solution.csv (ImageId,PredictionString; first token = wnid) "
        "or LOC_val_solution.csv inside val/",
        1000, {"train": 1_281_167, "val": 50_000}, "val", "manual",
        "ILSVRC2012 validation images need an account at https://image-net.org (or the Kaggle "
        "'imagenet-object-localization-challenge': ILSVRC/Data/CLS-LOC/val + LOC_val_solution.csv); "
        "put them in <root>/ImageNet/val"),
    "SUN397": DatasetInfo(
        "SUN397", "ClassName.txt (lines like /a/abbey), <letter>/<class>[/<sub>]/sun_*.jpg",
        397, {"all": 108_754}, "all", "manual",
        "SUN397.tar.gz (http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz, often "
        "unreachable; mirrors: TensorFlow Datasets 'sun397'); extract so that "
        "<root>/SUN397/ClassName.txt and <root>/SUN397/a/abbey/sun_*.jpg exist. "
        "`--download SUN397` tries torchvision's download first"),
}

TEST_DATASETS = list(INFO)  # the paper's 16 (tinyImageNet first), in table order

# The sets some of the paper's other tables need (docs/paper_tables.md): ImageNet-A/O/R (Tables 11-12), the
# 100-class ImageNet training subset (Tables 9-10) and the 80/20 split of TinyImageNet train
# (Table 13). Registered like the 16, but not evaluated by default (not in TEST_DATASETS).
_SHIFT_SOURCE = ("https://people.eecs.berkeley.edu/~hendrycks/{0}.tar (Hendrycks et al.; mirrors: "
                 "Zenodo, Hugging Face); extract it as is into <root>/, so that <root>/{0}/{1}/ holds .jpg files")
PAPER_SETS = {
    "ImageNet-A": DatasetInfo(
        "imagenet-a", "<wnid>/*.jpg for the 200 ImageNet classes of datasets/classnames/imagenet_a_wnids.txt "
        "(the released imagenet-a.tar extracted as is; its README.txt is ignored)",
        200, {"test": 7_500}, "test", "tar", _SHIFT_SOURCE.format("imagenet-a", "n01498041")),
    "ImageNet-O": DatasetInfo(
        "imagenet-o", "<wnid>/*.jpg for the 200 ImageNet classes of datasets/classnames/imagenet_a_wnids.txt "
        "(ImageNet-O uses ImageNet-A's classes; the released imagenet-o.tar extracted as is)",
        200, {"test": 2_000}, "test", "tar", _SHIFT_SOURCE.format("imagenet-o", "n01498041")),
    "ImageNet-R": DatasetInfo(
        "imagenet-r", "<wnid>/*.jpg for the 200 ImageNet classes of datasets/classnames/imagenet_r_wnids.txt "
        "(the released imagenet-r.tar extracted as is; its README.txt is ignored)",
        200, {"test": 30_000}, "test", "tar", _SHIFT_SOURCE.format("imagenet-r", "n01443537")),
    "ImageNet100": DatasetInfo(
        "ImageNet/train", "<wnid>/*.JPEG for (at least) the 100 classes of datasets/classnames/"
        "imagenet100_wnids.txt, drawn with a fixed seed; test split: those classes of ImageNet/val",
        100, {"val": 5_000}, "val", "manual",
        "the ILSVRC2012 training images (an account at https://image-net.org, or Kaggle's "
        "'imagenet-object-localization-challenge': ILSVRC/Data/CLS-LOC/train); put them in "
        "<root>/ImageNet/train/<wnid>/*.JPEG (only the 100 listed classes are read)"),
    "tinyImageNet_split": DatasetInfo(
        "tiny-imagenet-200", "TinyImageNet's train/<wnid>/images/*.JPEG, split per class 80/20 with a fixed "
        "seed; the held-out 20 % is recorded in tiny-imagenet-200/holdout20_seed0.txt on first use",
        200, {"train": 80_000, "test": 20_000}, "test", "tinyimagenet",
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip"),
}
INFO.update(PAPER_SETS)

# The one order of datasets in results tables: the 16 test sets, then the mini world's sets in
# the order of `datasets/world.py` SUITE (which also fixes their seeds; a test keeps the two
# in step). Listed here, not imported, so that this module stays free of torch.
WORLD_SETS = ["world_heldout", "world_shape", "world_colour", "world_texture", "world_size", "world_background",
              "world_position"]
TABLE_ORDER = TEST_DATASETS + WORLD_SETS


def info(canonical: str) -> DatasetInfo:
    return INFO[canonical]


def expected_count(canonical: str, split: str):
    """Full-size image count of `split` ('test' = the paper's evaluation split), or None."""
    i = INFO.get(canonical)
    if i is None:
        return None
    if split == "test" or i.eval_split == "all":
        split = i.eval_split
    return i.counts.get(split)


def thousands(n: int) -> str:
    """27000 -> '27 000' (the paper's own spacing of large numbers)."""
    return f"{n:,}".replace(",", " ")


def partial_label(count: int, expected: int | None, classes: int | None = None,
                  expected_classes: int | None = None) -> str | None:
    """'partial (30 / 27 000)' for a split with fewer images (or classes) than its official release, else
    None: what tga_zsr.py refuses without --allow_partial, and what every result of such a split carries."""
    short_images = expected is not None and count < expected
    short_classes = expected_classes is not None and classes is not None and classes < expected_classes
    if not (short_images or short_classes):
        return None
    text = f"{thousands(count)} / {thousands(expected)}" if expected is not None else f"{thousands(count)} images"
    if short_classes:
        text += f"; {classes} / {expected_classes} classes"
    return f"partial ({text})"


def prepare_hint(canonical: str, root: str) -> str:
    """The command or the manual steps that put `canonical` in place under `root`."""
    i = INFO[canonical]
    if i.download == "manual":
        return (f"this dataset cannot be downloaded automatically: get {i.source.replace('<root>', root)}. "
                f"Then check with: python -m datasets.prepare --root {root} --verify {canonical}")
    return f"run: python -m datasets.prepare --root {root} --download {canonical}"


def meant_root(canonical: str, root: str) -> tuple[str, str] | None:
    """(the root meant, a note) when `root` ends like the dataset's own folder (`--root data/eurosat` for
    `eurosat/2750`): the user gave the dataset's folder, not the folder that holds the datasets."""
    want = INFO[canonical].folder.split("/")
    given = os.path.normpath(str(root)).split(os.sep)
    for k in range(min(len(want), len(given)), 0, -1):
        if [p.lower() for p in given[-k:]] == [p.lower() for p in want[:k]]:
            above = given[:-k]
            parent = os.sep if above == [""] else (os.sep.join(above) or ".")
            renamed = "" if given[-k:] == want[:k] else \
                f" (and rename {os.sep.join(given[-k:])} to {os.sep.join(want[:k])}: names are case-sensitive)"
            return parent, renamed
    return None


def missing(canonical: str, root: str, path: str, problem: str) -> DatasetError:
    """A DatasetError that says what is wrong at `path`, what should be there, and how to fix it; when
    the dataset's folder is not under `root` at all, also what --root must be (the folder that holds
    the datasets), and the root meant when the one given is the dataset's own folder."""
    i = INFO[canonical]
    folder = os.path.join(root, i.folder)
    where, fix_root = "", root
    if not os.path.isdir(folder):
        where = (f"\n  --root is the folder that holds the datasets (given: {root}); {canonical} must be in its "
                 f"subfolder {i.folder}")
        meant = meant_root(canonical, root)
        if meant:
            fix_root = meant[0]
            where += (f"\n  --root {root} looks like the {canonical} folder itself: give the folder above it, "
                      f"--root {fix_root}{meant[1]}")
    return DatasetError(
        f"{canonical}: {problem}\n"
        f"  looked at: {path}\n"
        f"  expected in {folder}: {i.layout}" + where + "\n"
        f"  how to fix: {prepare_hint(canonical, fix_root)}")
