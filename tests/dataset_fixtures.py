"""Tiny copies of the 16 test sets (+ TinyImageNet train) in their REAL on-disk formats.

Each `write_<name>(root)` writes a handful of small images with the folder names, annotation
files, .mat / .h5 / pickle / binary files of the official archive (as read by torchvision
0.29's own classes or by the official zip), and returns what a correct loader must report:
    {"name", "split", "count", "num_classes", "labels": [label of sample i, in dataset order],
     "prompts": {label: prompt}}
Images are at most 32x32 except where the format fixes the size (STL10 and PCAM: 96x96).

    python -m tests.dataset_fixtures /tmp/fixture_root     # writes all of them
"""
from __future__ import annotations

import csv
import json
import os
import pickle
import sys

import numpy as np
from PIL import Image

_RNG = np.random.default_rng(0)


def _img(path, size=(16, 12), mode="RGB"):
    """A random tiny image; `mode` 'L' and 'CMYK' reproduce Caltech/SUN/ImageNet oddities."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = _RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr).convert(mode)
    im.save(path, format="PNG" if path.lower().endswith(".png") else "JPEG")


def _text(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


def _pickle(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


# ----------------------------------------------------------------------------- TinyImageNet
TINY_WNIDS = ["n01443537", "n01629819", "n01641577"]  # goldfish, European_fire_salamander, bullfrog
TINY_VAL = [("val_0.JPEG", 2), ("val_1.JPEG", 0), ("val_2.JPEG", 1), ("val_3.JPEG", 2), ("val_4.JPEG", 0)]


def write_tinyimagenet(root, val_layout="raw", truncate=False, malformed=False, train_per_class=2):
    """Official zip layout; `val_layout` 'raw' (val/images + val_annotations.txt), 'folders'
    (val/<wnid>/images/*.JPEG) or 'flat_folders' (val/<wnid>/*.JPEG)."""
    base = os.path.join(root, "tiny-imagenet-200")
    _text(os.path.join(base, "wnids.txt"), TINY_WNIDS)
    _text(os.path.join(base, "words.txt"), [f"{w}\tname {i}" for i, w in enumerate(TINY_WNIDS)])
    for w in TINY_WNIDS:
        for k in range(train_per_class):
            _img(os.path.join(base, "train", w, "images", f"{w}_{k}.JPEG"), (32, 32))
        _text(os.path.join(base, "train", w, f"{w}_boxes.txt"),
              [f"{w}_{k}.JPEG\t0\t0\t31\t31" for k in range(train_per_class)])
    if val_layout == "raw":
        lines = [f"{f}\t{TINY_WNIDS[y]}\t0\t0\t31\t31" for f, y in TINY_VAL]
        if truncate:
            lines = lines[:-2]  # an interrupted extraction: two images without a label
        if malformed:
            lines[1] = "val_1.JPEG n01443537 0 0 31 31"  # spaces instead of tabs
        _text(os.path.join(base, "val", "val_annotations.txt"), lines)
        for f, _ in TINY_VAL:
            _img(os.path.join(base, "val", "images", f), (32, 32))
    else:
        for f, y in TINY_VAL:
            sub = [TINY_WNIDS[y], "images"] if val_layout == "folders" else [TINY_WNIDS[y]]
            _img(os.path.join(base, "val", *sub, f), (32, 32))
    order = sorted(TINY_VAL) if val_layout == "raw" else sorted(TINY_VAL, key=lambda fy: (fy[1], fy[0]))
    return {"name": "tinyImageNet", "split": "val", "count": 5, "num_classes": 3,
            "labels": [y for _, y in order],
            "prompts": {0: "This is a photo of a goldfish",
                        1: "This is a photo of a european fire salamander"}}


# ----------------------------------------------------------------------------- CIFAR, STL10
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm").split()


def _cifar_batch(labels, key):
    n = len(labels)
    return {"batch_label": "fixture", key: list(labels),
            "data": _RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(n)]}


def write_cifar10(root):
    base = os.path.join(root, "cifar-10-batches-py")
    for i in range(1, 6):
        _pickle(os.path.join(base, f"data_batch_{i}"), _cifar_batch([i % 10, (i + 1) % 10], "labels"))
    labels = [3, 0, 9, 3]
    _pickle(os.path.join(base, "test_batch"), _cifar_batch(labels, "labels"))
    _pickle(os.path.join(base, "batches.meta"),
            {"label_names": CIFAR10_NAMES, "num_cases_per_batch": 10000, "num_vis": 3072})
    return {"name": "cifar10", "split": "test", "count": 4, "num_classes": 10, "labels": labels,
            "prompts": {0: "This is a photo of a airplane", 3: "This is a photo of a cat"}}


def write_cifar100(root):
    base = os.path.join(root, "cifar-100-python")
    labels = [1, 99, 41]

    def batch(fine):
        b = _cifar_batch(fine, "fine_labels")
        b["coarse_labels"] = [0] * len(fine)
        return b
    _pickle(os.path.join(base, "train"), batch([0, 5]))
    _pickle(os.path.join(base, "test"), batch(labels))
    _pickle(os.path.join(base, "meta"), {"fine_label_names": CIFAR100_NAMES,
                                         "coarse_label_names": [f"coarse_{i}" for i in range(20)]})
    return {"name": "cifar100", "split": "test", "count": 3, "num_classes": 100, "labels": labels,
            "prompts": {1: "This is a photo of a aquarium fish", 41: "This is a photo of a lawn mower"}}


STL10_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def write_stl10(root):
    """Binary files: X is N x 3 x 96 x 96 uint8 stored column-major per channel, y is 1-based uint8."""
    base = os.path.join(root, "stl10_binary")
    os.makedirs(base, exist_ok=True)
    labels = [7, 0, 2]
    for split, ys in (("train", [1, 2]), ("test", labels)):
        _RNG.integers(0, 256, (len(ys), 3, 96, 96), dtype=np.uint8).tofile(os.path.join(base, f"{split}_X.bin"))
        (np.array(ys, dtype=np.uint8) + 1).tofile(os.path.join(base, f"{split}_y.bin"))
    _text(os.path.join(base, "class_names.txt"), STL10_NAMES)
    _text(os.path.join(base, "fold_indices.txt"), ["0 1"] * 10)
    return {"name": "STL10", "split": "test", "count": 3, "num_classes": 10, "labels": labels,
            "prompts": {7: "This is a photo of a monkey"}}


# ----------------------------------------------------------------------------- folder + split files
def write_food101(root):
    base = os.path.join(root, "food-101")
    classes = ["apple_pie", "baby_back_ribs", "beef_carpaccio"]
    test = {"apple_pie": ["apple_pie/1011328", "apple_pie/101251"],
            "baby_back_ribs": ["baby_back_ribs/1005293"], "beef_carpaccio": ["beef_carpaccio/1030289"]}
    train = {c: [f"{c}/9{i}" for i in range(1)] for c in classes}
    for split in (test, train):
        for ids in split.values():
            for rel in ids:
                _img(os.path.join(base, "images", *rel.split("/")) + ".jpg")
    os.makedirs(os.path.join(base, "meta"), exist_ok=True)
    for name, split in (("test", test), ("train", train)):
        with open(os.path.join(base, "meta", f"{name}.json"), "w") as f:
            json.dump(split, f)
        _text(os.path.join(base, "meta", f"{name}.txt"), [r for ids in split.values() for r in ids])
    _text(os.path.join(base, "meta", "classes.txt"), classes)
    _text(os.path.join(base, "meta", "labels.txt"), ["Apple pie", "Baby back ribs", "Beef carpaccio"])
    return {"name": "Food101", "split": "test", "count": 4, "num_classes": 3, "labels": [0, 0, 1, 2],
            "prompts": {0: "A photo of apple pie, a type of food.",
                        1: "A photo of baby back ribs, a type of food."}}


def write_oxfordpet(root):
    """annotations/test.txt: `Image CLASS-ID SPECIES BREED-ID` (1-based class id, no header)."""
    base = os.path.join(root, "oxford-iiit-pet")
    test = [("Abyssinian_1", 1, 1, 1), ("american_bulldog_10", 2, 2, 1),
            ("american_pit_bull_terrier_1", 3, 2, 2), ("Abyssinian_10", 1, 1, 1)]
    trainval = [("Abyssinian_100", 1, 1, 1), ("american_bulldog_100", 2, 2, 1),
                ("american_pit_bull_terrier_100", 3, 2, 2)]
    for image_id, *_ in test + trainval:
        _img(os.path.join(base, "images", f"{image_id}.jpg"))
    for name, rows in (("test", test), ("trainval", trainval)):
        _text(os.path.join(base, "annotations", f"{name}.txt"), [" ".join(map(str, r)) for r in rows])
    os.makedirs(os.path.join(base, "annotations", "trimaps"), exist_ok=True)
    return {"name": "oxfordpet", "split": "test", "count": 4, "num_classes": 3, "labels": [0, 1, 2, 0],
            "prompts": {0: "A photo of a abyssinian, a type of pet.",
                        2: "A photo of a american pit bull terrier, a type of pet."}}


def write_flowers102(root):
    """imagelabels.mat: labels (1 x N, 1-based); setid.mat: trnid/valid/tstid (1 x k image ids)."""
    import scipy.io
    base = os.path.join(root, "flowers-102")
    labels_1based = [1, 1, 2, 77, 2, 102]
    for i in range(1, len(labels_1based) + 1):
        _img(os.path.join(base, "jpg", f"image_{i:05d}.jpg"))
    scipy.io.savemat(os.path.join(base, "imagelabels.mat"), {"labels": np.array([labels_1based], np.uint8)})
    scipy.io.savemat(os.path.join(base, "setid.mat"), {"trnid": np.array([[1, 3]], np.uint16),
                                                        "valid": np.array([[2, 5]], np.uint16),
                                                        "tstid": np.array([[6, 4, 2, 5]], np.uint16)})
    return {"name": "flowers102", "split": "test", "count": 4, "num_classes": 102, "labels": [101, 76, 0, 1],
            "prompts": {0: "A photo of a pink primrose, a type of flower.",
                        1: "A photo of a hard leaved pocket orchid, a type of flower."}}


def write_dtd(root):
    base = os.path.join(root, "dtd", "dtd")
    test = ["banded/banded_0002.jpg", "zigzagged/zigzagged_0003.jpg", "bubbly/bubbly_0038.jpg",
            "banded/banded_0004.jpg"]
    other = ["banded/banded_0005.jpg", "bubbly/bubbly_0039.jpg", "zigzagged/zigzagged_0010.jpg"]
    for rel in test + other:
        _img(os.path.join(base, "images", *rel.split("/")))
    for p in range(1, 11):  # the archive ships 10 partitions
        _text(os.path.join(base, "labels", f"test{p}.txt"), test if p == 1 else other)
        _text(os.path.join(base, "labels", f"train{p}.txt"), other)
        _text(os.path.join(base, "labels", f"val{p}.txt"), other)
    _text(os.path.join(base, "labels", "labels_joint_anno.txt"), [f"{r} banded" for r in test + other])
    return {"name": "dtd", "split": "test", "count": 4, "num_classes": 3, "labels": [0, 2, 1, 0],
            "prompts": {0: "A surface with a banded texture.", 2: "A surface with a zigzagged texture."}}


def write_eurosat(root):
    base = os.path.join(root, "eurosat", "2750")
    files = {"AnnualCrop": 2, "Forest": 1, "HerbaceousVegetation": 2}
    for cls, n in files.items():
        for k in range(1, n + 1):
            _img(os.path.join(base, cls, f"{cls}_{k}.jpg"), (32, 32))
    return {"name": "EuroSAT", "split": "all", "count": 5, "num_classes": 3, "labels": [0, 0, 1, 2, 2],
            "prompts": {0: "A centered satellite photo of annual crop land.",
                        2: "A centered satellite photo of brushland or shrubland."}}


def write_fgvc_aircraft(root):
    """data/variants.txt (one variant a line) + data/images_variant_test.txt (`id variant name`)."""
    base = os.path.join(root, "fgvc-aircraft-2013b", "data")
    variants = ["707-320", "A300B4", "Cessna 172", "F-16A/B"]
    test = [("1514522", "707-320"), ("0062765", "Cessna 172"), ("1936958", "F-16A/B"), ("0761183", "A300B4")]
    train = [("0034309", "707-320"), ("0041343", "A300B4")]
    for image_id, _ in test + train:
        _img(os.path.join(base, "images", f"{image_id}.jpg"))
    _text(os.path.join(base, "variants.txt"), variants)
    _text(os.path.join(base, "families.txt"), ["Boeing 707", "A300", "Cessna 172", "F-16A/B"])
    _text(os.path.join(base, "manufacturers.txt"), ["Boeing", "Airbus", "Cessna", "Lockheed Martin"])
    for split, rows in (("test", test), ("train", train), ("val", train), ("trainval", train)):
        _text(os.path.join(base, f"images_variant_{split}.txt"), [f"{i} {v}" for i, v in rows])
        _text(os.path.join(base, f"images_{split}.txt"), [i for i, _ in rows])
    return {"name": "fgvc_aircraft", "split": "test", "count": 4, "num_classes": 4, "labels": [0, 2, 3, 1],
            "prompts": {0: "A photo of a boeing 707-320, a type of aircraft.",
                        2: "A photo of a cessna 172, a type of aircraft.",
                        3: "A photo of a f-16a/b, a type of aircraft."}}


# ----------------------------------------------------------------------------- Caltech
def write_caltech101(root):
    base = os.path.join(root, "caltech101", "101_ObjectCategories")
    counts = {"BACKGROUND_Google": 2, "Faces_easy": 2, "accordion": 1, "airplanes": 2}
    for cat, n in counts.items():
        for k in range(1, n + 1):
            # Caltech holds grayscale JPEGs; the loader must still give 3 channels
            _img(os.path.join(base, cat, f"image_{k:04d}.jpg"), mode="L" if cat == "accordion" else "RGB")
    return {"name": "Caltech101", "split": "all", "count": 5, "num_classes": 3, "labels": [0, 0, 1, 2, 2],
            "prompts": {0: "This is a photo of a faces easy", 1: "This is a photo of a accordion"}}


def write_caltech256(root):
    base = os.path.join(root, "caltech256", "256_ObjectCategories")
    counts = {"001.ak47": 2, "145.motorbikes-101": 1, "232.t-shirt": 1, "257.clutter": 2}
    for cat, n in counts.items():
        for k in range(1, n + 1):
            _img(os.path.join(base, cat, f"{cat[:3]}_{k:04d}.jpg"), mode="L" if k == 2 else "RGB")
    return {"name": "Caltech256", "split": "all", "count": 6, "num_classes": 4, "labels": [0, 0, 1, 2, 3, 3],
            "prompts": {0: "A photo of a ak47.", 1: "A photo of a motorbikes.", 2: "A photo of a t shirt.",
                        3: "A photo of a clutter."}}


# ----------------------------------------------------------------------------- Cars, PCAM, ImageNet, SUN
def _cars_annotations(rows, with_class=True):
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"] + (["class"] if with_class else []) + ["fname"]
    arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (fname, cls) in enumerate(rows):
        values = [np.array([[v]], np.uint16) for v in (1, 2, 14, 10)]
        values += [np.array([[cls]], np.uint8)] if with_class else []
        arr[0, i] = tuple(values + [np.array([fname])])
    return arr


def write_stanfordcars(root):
    """devkit/cars_meta.mat (class_names cell), cars_test_annos_withlabels.mat (struct array
    bbox_x1..y2, class (1-based), fname), cars_test/*.jpg -- torchvision's expected layout."""
    import scipy.io
    base = os.path.join(root, "stanford_cars")
    names = np.empty((1, 3), dtype=object)
    names[0, :] = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Mercedes-Benz C-Class Sedan 2012"]
    os.makedirs(os.path.join(base, "devkit"), exist_ok=True)
    scipy.io.savemat(os.path.join(base, "devkit", "cars_meta.mat"), {"class_names": names})
    test = [("00001.jpg", 3), ("00002.jpg", 1), ("00003.jpg", 2), ("00004.jpg", 1)]
    train = [("00001.jpg", 1), ("00002.jpg", 2)]
    scipy.io.savemat(os.path.join(base, "cars_test_annos_withlabels.mat"), {"annotations": _cars_annotations(test)})
    scipy.io.savemat(os.path.join(base, "devkit", "cars_train_annos.mat"), {"annotations": _cars_annotations(train)})
    scipy.io.savemat(os.path.join(base, "devkit", "cars_test_annos.mat"),
                     {"annotations": _cars_annotations(test, with_class=False)})
    for folder, rows in (("cars_test", test), ("cars_train", train)):
        for fname, _ in rows:
            _img(os.path.join(base, folder, fname))
    return {"name": "StanfordCars", "split": "test", "count": 4, "num_classes": 3, "labels": [2, 0, 1, 0],
            "prompts": {0: "A photo of a am general hummer suv.",
                        2: "A photo of a mercedes benz c class sedan."}}


def write_stanfordcars_all_in_one(root):
    """The other official release: cars_annos.mat (relative_im_path, bbox, class, test) + car_ims/."""
    import scipy.io
    base = os.path.join(root, "stanford_cars")
    rows = [("car_ims/000001.jpg", 1, 0), ("car_ims/000002.jpg", 2, 1), ("car_ims/000003.jpg", 1, 1)]
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (rel, cls, test) in enumerate(rows):
        arr[0, i] = (np.array([rel]),) + tuple(np.array([[v]], np.uint16) for v in (1, 2, 14, 10)) + (
            np.array([[cls]], np.uint8), np.array([[test]], np.uint8))
        _img(os.path.join(base, *rel.split("/")))
    names = np.empty((1, 2), dtype=object)
    names[0, :] = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
    scipy.io.savemat(os.path.join(base, "cars_annos.mat"), {"annotations": arr, "class_names": names})
    return {"name": "StanfordCars", "split": "test", "count": 2, "num_classes": 2, "labels": [1, 0],
            "prompts": {1: "A photo of a acura rl sedan."}}


def write_pcam(root):
    """h5 files as torchvision reads them: x (N, 96, 96, 3) uint8, y (N, 1, 1, 1) uint8."""
    import h5py
    base = os.path.join(root, "pcam")
    os.makedirs(base, exist_ok=True)
    labels = [1, 0, 0, 1]
    for stem, ys in (("test", labels), ("valid", [0, 1]), ("train", [1, 0])):
        with h5py.File(os.path.join(base, f"camelyonpatch_level_2_split_{stem}_x.h5"), "w") as f:
            f.create_dataset("x", data=_RNG.integers(0, 256, (len(ys), 96, 96, 3), dtype=np.uint8))
        with h5py.File(os.path.join(base, f"camelyonpatch_level_2_split_{stem}_y.h5"), "w") as f:
            f.create_dataset("y", data=np.array(ys, np.uint8).reshape(-1, 1, 1, 1))
    return {"name": "PCAM", "split": "test", "count": 4, "num_classes": 2, "labels": labels,
            "prompts": {0: "Tthis is a photo of healthy lymph node tissue.",
                        1: "This is a photo of lymph node tumor tissue."}}


IMAGENET_VAL = [("ILSVRC2012_val_00000001", "n01751748"), ("ILSVRC2012_val_00000002", "n09193705"),
                ("ILSVRC2012_val_00000003", "n02105855"), ("ILSVRC2012_val_00000004", "n01751748")]


def write_imagenet(root, layout="folders"):
    """'folders': ImageNet/val/<wnid>/*.JPEG; 'flat': ImageNet/val/*.JPEG + ImageNet/LOC_val_solution.csv."""
    base = os.path.join(root, "ImageNet")
    for i, (image_id, wnid) in enumerate(IMAGENET_VAL):
        sub = [wnid] if layout == "folders" else []
        _img(os.path.join(base, "val", *sub, f"{image_id}.JPEG"), mode="CMYK" if i == 1 else "RGB")
    if layout == "flat":
        with open(os.path.join(base, "LOC_val_solution.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ImageId", "PredictionString"])
            for image_id, wnid in reversed(IMAGENET_VAL):
                w.writerow([image_id, f"{wnid} 12 3 200 180 {wnid} 1 1 50 60 "])
    # sorted wnids: n01751748 (sea_snake), n02105855 (Shetland_sheepdog), n09193705 (alp)
    return {"name": "ImageNet", "split": "val", "count": 4, "num_classes": 3,
            "labels": [0, 0, 1, 2] if layout == "folders" else [0, 2, 1, 0],
            "prompts": {0: "This is a photo of a sea snake", 1: "This is a photo of a shetland sheepdog",
                        2: "This is a photo of a alp"}}


def write_sun397(root):
    base = os.path.join(root, "SUN397")
    _text(os.path.join(base, "ClassName.txt"), ["/a/abbey", "/a/apartment_building/outdoor", "/b/bakery/shop"])
    files = ["a/abbey/sun_aaalbzqrimafwbiv.jpg", "a/abbey/sun_abcdefghijklmnop.jpg",
             "a/apartment_building/outdoor/sun_aabbccddeeffgghh.jpg", "b/bakery/shop/sun_zzyyxxwwvvuuttss.jpg"]
    for i, rel in enumerate(files):
        _img(os.path.join(base, *rel.split("/")), mode="L" if i == 2 else "RGB")
    _text(os.path.join(base, "README.txt"), ["SUN397 fixture"])
    return {"name": "SUN397", "split": "all", "count": 4, "num_classes": 3, "labels": [0, 0, 1, 2],
            "prompts": {0: "This is a photo of a abbey", 1: "This is a photo of a apartment building outdoor",
                        2: "This is a photo of a bakery shop"}}


# ----------------------------------------------------------------------------- ImageNet-A / -O / -R
# Released layout: <folder>/<wnid>/*.jpg (+ README.txt). Labels index the dataset's own sorted 200-wnid list
# (datasets/classnames/): positions 0, 57 and 199 of it below.
SHIFT_CLASSES = {
    "ImageNet-A": [("n01498041", 0, "stingray"), ("n02236044", 57, "mantis"), ("n12267677", 199, "acorn")],
    "ImageNet-R": [("n01443537", 0, "goldfish"), ("n02106662", 57, "german shepherd"), ("n12267677", 199, "acorn")],
}
SHIFT_CLASSES["ImageNet-O"] = SHIFT_CLASSES["ImageNet-A"]  # ImageNet-O files its images under A's classes


def _write_shift(root, name, folder, file_names):
    base = os.path.join(root, folder)
    labels = []
    for (wnid, label, _), files in zip(SHIFT_CLASSES[name], file_names):
        for i, f in enumerate(files):
            _img(os.path.join(base, wnid, f), mode="L" if i == 1 else "RGB")
            labels.append(label)
    _text(os.path.join(base, "README.txt"), [f"{name} fixture"])
    return {"name": name, "split": "test", "count": len(labels), "num_classes": 200, "labels": labels,
            "prompts": {label: f"This is a photo of a {text}" for _, label, text in SHIFT_CLASSES[name]}}


def write_imagenet_a(root):
    return _write_shift(root, "ImageNet-A", "imagenet-a", [["0.000116_digital clock _ digital clock_0.865662.jpg"],
                                                           ["0.000200_mantis _ mantis_0.5.jpg", "0.0008_x_y_0.9.jpg"],
                                                           ["0.001_acorn _ acorn_0.7.jpg"]])


def write_imagenet_o(root):
    return _write_shift(root, "ImageNet-O", "imagenet-o", [["0.jpg", "1.jpg"], ["2.jpg"], ["3.jpg"]])


def write_imagenet_r(root):
    return _write_shift(root, "ImageNet-R", "imagenet-r", [["art_0.jpg"], ["cartoon_0.jpg", "sketch_1.jpg"],
                                                           ["toy_3.jpg", "origami_0.jpg"]])


def write_imagenet_train(root, wnids, per_class=1):
    """ImageNet/train/<wnid>/<wnid>_<n>.JPEG (ILSVRC2012_img_train.tar's class tars, extracted)."""
    for w in wnids:
        for k in range(per_class):
            _img(os.path.join(root, "ImageNet", "train", w, f"{w}_{k}.JPEG"), (8, 8))


WRITERS = {
    "tinyImageNet": write_tinyimagenet, "cifar10": write_cifar10, "cifar100": write_cifar100,
    "STL10": write_stl10, "Food101": write_food101, "oxfordpet": write_oxfordpet,
    "flowers102": write_flowers102, "dtd": write_dtd, "EuroSAT": write_eurosat,
    "fgvc_aircraft": write_fgvc_aircraft, "Caltech101": write_caltech101, "Caltech256": write_caltech256,
    "StanfordCars": write_stanfordcars, "PCAM": write_pcam, "ImageNet": write_imagenet, "SUN397": write_sun397,
    "ImageNet-A": write_imagenet_a, "ImageNet-O": write_imagenet_o, "ImageNet-R": write_imagenet_r,
}


def write_all(root) -> dict:
    return {name: writer(root) for name, writer in WRITERS.items()}


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "./fixture_data"
    for name, spec in write_all(out).items():
        print(f"{name:14s} {spec['count']} images, {spec['num_classes']} classes")
