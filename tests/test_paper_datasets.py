"""The sets of the paper's other tables (SPEC §9): ImageNet-A/O/R in their released layouts, the
seeded 100-class ImageNet training subset, the seeded and recorded 80/20 split of TinyImageNet train.
(ImageNet-A/O/R also run through every generic test of tests/test_datasets.py: they are in WRITERS.)

    python -m pytest tests/test_paper_datasets.py -q
"""
from __future__ import annotations

import os

import pytest

import datasets as D
from datasets import prepare, subsets
from datasets.imagenet_shifts import read_wnid_list
from tests import dataset_fixtures as F


# ----------------------------------------------------------------------------- ImageNet-A / -O / -R
def test_shift_class_lists_are_200_imagenet_classes_each():
    names = D.common.read_wnid_names("imagenet_classes_names.txt")
    a, r = read_wnid_list("imagenet_a_wnids.txt"), read_wnid_list("imagenet_r_wnids.txt")
    assert len(a) == len(r) == 200 and set(a) <= set(names) and set(r) <= set(names)
    assert a != r and "n01498041" in a and "n01443537" in r and "n01443537" not in a  # stingray / goldfish
    for name in ("ImageNet-A", "ImageNet-O", "ImageNet-R"):
        assert D.catalog.INFO[name].num_classes == 200 and name not in D.TEST_DATASETS


def test_shift_set_rejects_a_folder_outside_its_classes(tmp_path):
    F.write_imagenet_r(str(tmp_path))
    F._img(os.path.join(tmp_path, "imagenet-r", "n01440764", "x.jpg"))  # tench: an ImageNet class, not an R one
    with pytest.raises(D.DatasetError, match=r"(?s)1 class folders are not among its 200 classes.*n01440764"):
        D.get_dataset("ImageNet-R", str(tmp_path))


def test_prepare_verifies_shift_sets_against_their_full_size(tmp_path, capsys):
    spec = F.write_imagenet_a(str(tmp_path))
    rc = prepare.main(["--root", str(tmp_path), "--verify", "ImageNet-A", "ImageNet-O", "--decode", "1"])
    out = capsys.readouterr().out
    assert rc == 1 and "INCOMPLETE" in out and f"{spec['count']}/7500" in out and "MISSING" in out
    assert "--download ImageNet-O" in out  # the fix for the missing one


# ----------------------------------------------------------------------------- ImageNet100
def test_imagenet100_class_list_is_the_recorded_seeded_draw():
    committed = read_wnid_list(subsets.IMAGENET100_FILE)
    assert committed == subsets.draw_imagenet100() == subsets.draw_imagenet100()  # deterministic and committed
    assert len(set(committed)) == 100
    assert subsets.draw_imagenet100(seed=1) != committed   # the seed matters: the file records this one
    header = (D.common.CLASSNAMES_DIR / subsets.IMAGENET100_FILE).read_text().splitlines()[:2]
    assert header == subsets.imagenet100_header() and "Random(0)" in header[0]


def test_imagenet100_reads_its_classes_from_imagenet_train(tmp_path):
    wnids = read_wnid_list(subsets.IMAGENET100_FILE)
    F.write_imagenet_train(str(tmp_path), wnids + ["n01440764"], per_class=1)  # one extra ImageNet class: not read
    data = D.get_dataset("ImageNet100", str(tmp_path), "train")
    assert len(data) == 100 and D.dataset_labels(data.dataset) == list(range(100))
    names = D.common.read_wnid_names("imagenet_classes_names.txt")
    assert data.prompts[0] == f"This is a photo of a {D.clean_name(names[wnids[0]])}"
    assert data.dataset[5][0].shape == (3, 224, 224)


def test_imagenet100_missing_class_and_test_split(tmp_path):
    wnids = read_wnid_list(subsets.IMAGENET100_FILE)
    F.write_imagenet_train(str(tmp_path), wnids[1:])
    with pytest.raises(D.DatasetError, match=rf"1 of its 100 class folders are missing \(first: {wnids[0]}\)"):
        D.get_dataset("ImageNet100", str(tmp_path), "train")
    for w, n in ((wnids[3], 2), ("n01440764", 1)):  # ImageNet val: two images of a listed class, one other
        for k in range(n):
            F._img(os.path.join(tmp_path, "ImageNet", "val", w, f"ILSVRC2012_val_{w}_{k}.JPEG"))
    test = D.get_dataset("ImageNet100", str(tmp_path), "test")
    assert D.dataset_labels(test.dataset) == [3, 3] and len(test.classnames) == 100


# ----------------------------------------------------------------------------- TinyImageNet 80/20
def _split(root):
    train = D.get_dataset("tinyImageNet_split", root, "train")
    held = D.get_dataset("tinyImageNet_split", root, "test")
    return [p for p, _ in train.dataset.samples], [p for p, _ in held.dataset.samples], train, held


def test_tinyimagenet_split_is_80_20_per_class_disjoint_and_complete(tmp_path):
    F.write_tinyimagenet(str(tmp_path), train_per_class=10)
    train, held, data, held_data = _split(str(tmp_path))
    assert len(train) == 24 and len(held) == 6 and not set(train) & set(held)
    everything = [p for p, _ in D.get_dataset("tinyImageNet", str(tmp_path), "train").dataset.samples]
    assert sorted(train + held) == sorted(everything)
    assert sorted(D.dataset_labels(held_data.dataset)) == [0, 0, 1, 1, 2, 2]  # 2 of each class's 10
    assert data.prompts == held_data.prompts and len(data.classnames) == 3


def test_tinyimagenet_split_is_deterministic_and_recorded(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for r in (a, b):
        F.write_tinyimagenet(str(r), train_per_class=10)
    rel = [os.path.relpath(p, a) for p in _split(str(a))[1]]
    assert rel == [os.path.relpath(p, b) for p in _split(str(b))[1]]  # same files, same split, anywhere
    record = a / "tiny-imagenet-200" / subsets.SPLIT_RECORD
    lines = [x for x in record.read_text().splitlines() if not x.startswith("#")]
    assert len(lines) == 6 and all(x.split("/")[1] == "images" for x in lines)
    # the record, not a re-draw, decides: swap one held-out file of class 0 for another of the same class
    wnid = lines[0].split("/")[0]
    other = next(f"{wnid}/images/{wnid}_{k}.JPEG" for k in range(10) if f"{wnid}/images/{wnid}_{k}.JPEG" not in lines)
    record.write_text("\n".join([other] + lines[1:]) + "\n")
    held = _split(str(a))[1]
    assert any(p.endswith(other) for p in held) and not any(p.endswith(lines[0]) for p in held)


def test_tinyimagenet_split_record_naming_absent_files_is_a_clear_error(tmp_path):
    F.write_tinyimagenet(str(tmp_path), train_per_class=10)
    record = tmp_path / "tiny-imagenet-200" / subsets.SPLIT_RECORD
    record.write_text("n01443537/images/gone.JPEG\n")
    with pytest.raises(D.DatasetError, match=r"(?s)lists 1 files that train/ does not hold.*delete"):
        D.get_dataset("tinyImageNet_split", str(tmp_path), "train")
