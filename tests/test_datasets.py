"""The dataset layer against tiny copies of every dataset in its real on-disk format.

    python -m pytest tests/test_datasets.py -q
"""
from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys

import pytest
import torch

import datasets as D
from datasets import prepare
from tests import dataset_fixtures as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """All 16 fixtures under one root, written once per module."""
    path = tmp_path_factory.mktemp("data")
    specs = F.write_all(str(path))
    return str(path), specs


def _copy_one(src_root, name, dst):
    """A root holding a single dataset (for tests that break it)."""
    top = D.catalog.INFO[name].folder.split("/")[0]
    shutil.copytree(os.path.join(src_root, top), os.path.join(dst, top))
    return str(dst)


# ----------------------------------------------------------------------------- every dataset
@pytest.mark.parametrize("name", list(F.WRITERS))
def test_fixture_loads_with_labels_prompts_and_images(root, name):
    path, specs = root
    spec = specs[name]
    data = D.get_dataset(name, path, spec["split"])
    assert data.name == name
    assert len(data) == spec["count"]
    assert len(data.classnames) == len(data.prompts) == spec["num_classes"]
    assert D.dataset_labels(data.dataset) == spec["labels"]
    for label, prompt in spec["prompts"].items():
        assert data.prompts[label] == prompt
    for i in range(len(data)):  # includes the grayscale / CMYK files where the fixture has them
        img, y = data.dataset[i]
        assert isinstance(img, torch.Tensor) and img.dtype == torch.uint8  # [0, 1] on the device (to_unit)
        img = D.to_unit(img)
        assert tuple(img.shape) == (3, 224, 224)
        assert 0.0 <= img.min() and img.max() <= 1.0
        assert y == spec["labels"][i]


@pytest.mark.parametrize("name", list(F.WRITERS))
def test_default_split_is_the_evaluation_split(root, name):
    path, specs = root
    assert len(D.get_dataset(name, path)) == specs[name]["count"]


def test_names_are_case_insensitive_with_aliases():
    for spelling, canon in [("TINYIMAGENET", "tinyImageNet"), ("tiny-imagenet", "tinyImageNet"),
                            ("imagenet1k", "ImageNet"), ("oxford_pets", "oxfordpet"), ("sun397", "SUN397"),
                            ("stl10", "STL10"), ("FGVC_Aircraft", "fgvc_aircraft"), ("pcam", "PCAM"),
                            ("caltech101", "Caltech101"), ("stanfordcars", "StanfordCars")]:
        assert D.canonical_name(spelling) == canon
    assert len(D.TEST_DATASETS) == 16


def test_transforms_follow_spec(root):
    """CIFAR/STL: squash to 224x224; others: Resize(256)+CenterCrop(224). A 32x16 image shows it."""
    path, _ = root
    cifar = D.get_dataset("cifar10", path)
    assert "Resize(size=(224, 224)" in repr(cifar.dataset.transform)
    food = D.get_dataset("Food101", path)
    assert "Resize(size=256" in repr(food.dataset.transform) and "CenterCrop(size=(224, 224))" in repr(
        food.dataset.transform)


# ----------------------------------------------------------------------------- TinyImageNet layouts
@pytest.mark.parametrize("layout", ["raw", "folders", "flat_folders"])
def test_tinyimagenet_val_layouts_give_the_right_labels(tmp_path, layout):
    spec = F.write_tinyimagenet(str(tmp_path), val_layout=layout)
    data = D.get_dataset("tinyImageNet", str(tmp_path), "val")
    assert D.dataset_labels(data.dataset) == spec["labels"]
    files = [os.path.basename(p) for p, _ in data.dataset.samples]
    truth = dict(F.TINY_VAL)
    assert [truth[f] for f in files] == D.dataset_labels(data.dataset)
    assert data.extra["wnids"] == sorted(F.TINY_WNIDS)


def test_tinyimagenet_train_split_and_class_file_order(tmp_path):
    F.write_tinyimagenet(str(tmp_path))
    train = D.get_dataset("tinyImageNet", str(tmp_path), "train")
    assert len(train) == 6 and D.dataset_labels(train.dataset) == [0, 0, 1, 1, 2, 2]
    assert train.classnames == ["goldfish", "European_fire_salamander", "bullfrog"]
    # the shipped class file is in sorted-wnid order with 200 classes
    names = D.common.read_wnid_names("tinyimagenet_classes_name.txt")
    assert len(names) == 200 and list(names) == sorted(names)


def test_imagenet_class_file_has_1000_classes():
    names = D.common.read_wnid_names("imagenet_classes_names.txt")  # no trailing newline in the file
    assert len(names) == 1000 and names["n03255030"] == "dumbbell"


def test_imagenet_flat_layout_with_solution_csv(tmp_path):
    spec = F.write_imagenet(str(tmp_path), layout="flat")
    data = D.get_dataset("ImageNet", str(tmp_path), "val")
    assert D.dataset_labels(data.dataset) == spec["labels"]
    assert data.prompts == [spec["prompts"][i] for i in range(3)]
    img, _ = data.dataset[1]  # the CMYK JPEG
    assert img.shape == (3, 224, 224)


def test_stanfordcars_all_in_one_release(tmp_path):
    spec = F.write_stanfordcars_all_in_one(str(tmp_path))
    data = D.get_dataset("StanfordCars", str(tmp_path), "test")
    assert D.dataset_labels(data.dataset) == spec["labels"] and data.prompts[1] == spec["prompts"][1]
    assert len(D.get_dataset("StanfordCars", str(tmp_path), "train")) == 1
    assert data.dataset[0][0].shape == (3, 224, 224)


def test_tinyimagenet_val_without_train_uses_wnids_txt(tmp_path):
    spec = F.write_tinyimagenet(str(tmp_path))
    shutil.rmtree(os.path.join(tmp_path, "tiny-imagenet-200", "train"))
    data = D.get_dataset("tinyImageNet", str(tmp_path), "val")
    assert D.dataset_labels(data.dataset) == spec["labels"]


# ----------------------------------------------------------------------------- errors
def test_unknown_name_is_a_clear_error():
    with pytest.raises(D.DatasetError, match="unknown dataset 'imagenet21k'.*Known datasets"):
        D.get_dataset("imagenet21k", "/nonexistent")


@pytest.mark.parametrize("typo, meant", [("Caltec101", "Caltech101"), ("CIFAR-1O", "cifar10"),
                                         ("oxford pets", "oxfordpet"), ("world_colr", "world_colour")])
def test_unknown_name_suggests_the_closest_dataset(typo, meant):
    with pytest.raises(D.DatasetError, match=rf"^unknown dataset '{typo}' — did you mean {meant}\? Known datasets: "):
        D.canonical_name(typo)


def test_unknown_name_without_a_close_match_suggests_nothing():
    with pytest.raises(D.DatasetError, match=r"^unknown dataset 'qqqq'\. Known datasets: .*Caltech101") as err:
        D.canonical_name("qqqq")
    assert "did you mean" not in str(err.value)


@pytest.mark.parametrize("name", list(F.WRITERS))
def test_missing_folder_names_path_layout_and_fix(tmp_path, name):
    with pytest.raises(D.DatasetError) as err:
        D.get_dataset(name, str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg and "looked at" in msg and "expected in" in msg
    assert "python -m datasets.prepare" in msg
    if D.catalog.INFO[name].download == "manual":
        assert "cannot be downloaded automatically" in msg
    else:
        assert f"--download {name}" in msg
    assert os.listdir(tmp_path) == []  # nothing was created on the way (torchvision's Caltech would)


def test_truncated_val_annotations_is_a_clear_error(tmp_path):
    F.write_tinyimagenet(str(tmp_path), truncate=True)
    with pytest.raises(D.DatasetError, match=r"truncated annotation file: 3 annotated files for 5 images"):
        D.get_dataset("tinyImageNet", str(tmp_path), "val")
    with pytest.raises(D.DatasetError, match="truncated"):
        D.check_dataset("tinyImageNet", str(tmp_path))


def test_malformed_val_annotations_is_a_clear_error(tmp_path):
    F.write_tinyimagenet(str(tmp_path), malformed=True)
    with pytest.raises(D.DatasetError, match=r"(?s)malformed line 2.*val_annotations.txt"):
        D.get_dataset("tinyImageNet", str(tmp_path), "val")


def test_torchvision_errors_are_wrapped(tmp_path, root):
    """A present but broken dataset (corrupt pickle) is a DatasetError, not torchvision's error."""
    path = _copy_one(root[0], "cifar10", tmp_path)
    with open(os.path.join(path, "cifar-10-batches-py", "test_batch"), "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(D.DatasetError, match="cifar10: could not be read"):
        D.get_dataset("cifar10", path)


def test_missing_annotation_file_names_the_file(tmp_path, root):
    path = _copy_one(root[0], "dtd", tmp_path)
    os.remove(os.path.join(path, "dtd", "dtd", "labels", "test1.txt"))
    with pytest.raises(D.DatasetError, match=r"file not found\n  looked at: .*labels/test1.txt"):
        D.get_dataset("dtd", path)


# ----------------------------------------------------------------------------- roots, checks, subsets
def test_root_dict_with_default_and_per_dataset_override(tmp_path, root):
    path, specs = root
    other = _copy_one(path, "dtd", tmp_path)
    data = D.get_dataset("dtd", {"DTD": other, "default": "/nonexistent"})
    assert data.root.startswith(other)
    assert len(D.get_dataset("cifar10", {"default": path})) == specs["cifar10"]["count"]
    with pytest.raises(D.DatasetError, match="no root given"):
        D.get_dataset("cifar10", {"dtd": other})


def test_check_dataset_reports_counts(root):
    path, specs = root
    r = D.check_dataset("PCAM", path)
    assert r["count"] == 4 and r["num_classes"] == 2 and r["expected_count"] == 32_768
    assert r["complete"] is False
    with pytest.raises(D.DatasetError, match="looked at"):
        D.check_dataset("SUN397", "/nonexistent")


def test_class_balanced_subset_is_seeded_and_balanced():
    labels = [0] * 10 + [1] * 3 + [2] * 7
    idx = D.labelled.balanced_indices(labels, 7, seed=0)
    picked = [labels[i] for i in idx]
    assert len(idx) == 7 and sorted(picked).count(1) == 2 and picked.count(0) == 3
    assert idx == D.labelled.balanced_indices(labels, 7, seed=0)
    assert idx != D.labelled.balanced_indices(labels, 7, seed=1)
    assert sorted(D.labelled.balanced_indices(labels, 100, seed=0)) == list(range(20))


def test_class_balanced_subset_on_a_dataset(root):
    path, _ = root
    data = D.get_dataset("Caltech256", path)
    sub = D.class_balanced_subset(data, 4, seed=0)
    labels = D.dataset_labels(sub.dataset)
    assert sorted(labels) == [0, 1, 2, 3] and sub.prompts == data.prompts
    img, y = sub.dataset[0]
    assert img.shape == (3, 224, 224) and y == labels[0]


# ----------------------------------------------------------------------------- prepare
def test_prepare_verify_ok_with_fixture_sizes(root, capsys):
    path, specs = root
    expect = [f"{n}={specs[n]['count']}:{specs[n]['num_classes']}" for n in ("cifar10", "tinyImageNet", "PCAM")]
    rc = prepare.main(["--root", path, "--verify", "cifar10", "tinyImageNet", "PCAM", "--decode", "1",
                       "--expect", *expect, "tinyImageNet[train]=6:3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count(" OK ") == 4 and "4/4 OK" in out


def test_prepare_verify_flags_incomplete_and_missing(root, tmp_path, capsys):
    path, _ = root
    rc = prepare.main(["--root", path, "--verify", "cifar10", "--decode", "1"])  # real sizes expected
    out = capsys.readouterr().out
    assert rc == 1 and "INCOMPLETE" in out and "4/10000" in out
    rc = prepare.main(["--root", str(tmp_path), "--verify", "StanfordCars", "--decode", "1"])
    out = capsys.readouterr().out
    assert rc == 1 and "MISSING" in out and "cars_test_annos_withlabels.mat" in out


def test_prepare_verify_flags_a_broken_dataset(root, tmp_path, capsys):
    path = _copy_one(root[0], "tinyImageNet", tmp_path)
    ann = os.path.join(path, "tiny-imagenet-200", "val", "val_annotations.txt")
    lines = open(ann).read().splitlines()
    with open(ann, "w") as f:
        f.write("\n".join(lines[:-1]) + "\n")
    rc = prepare.main(["--root", path, "--verify", "tinyImageNet", "--decode", "1",
                       "--expect", "tinyImageNet=5:3", "tinyImageNet[train]=6:3"])
    out = capsys.readouterr().out
    assert rc == 1 and "ERROR" in out and "truncated" in out


def test_prepare_download_failure_is_clear(tmp_path, monkeypatch, capsys):
    """No network here: make urlopen fail fast and check the message says what to do."""
    import urllib.request

    def offline(*a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    rc = prepare.main(["--root", str(tmp_path), "--download", "tinyImageNet", "--decode", "1"])
    out = capsys.readouterr().out
    assert rc == 1 and "MISSING" in out and "failed" in out and "tiny-imagenet-200.zip" in out


# ----------------------------------------------------------------------------- package structure
def test_catalog_loads_without_torch():
    """catalog.py (paths, sizes, TABLE_ORDER, DatasetError) can be read by torch-free tools."""
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('catalog', 'datasets/catalog.py')\n"
            "m = sys.modules['catalog'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(m)\n"
            "assert not {'torch', 'torchvision', 'PIL'} & set(sys.modules), 'catalog.py imports torch'\n"
            "print(len(m.TABLE_ORDER))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == str(len(D.TABLE_ORDER)), out.stderr


PACKAGE = os.path.join(ROOT, "datasets")
MODULES = sorted(f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py"))
# Top-level names that are this project's code: the packages and the scripts beside them.
PROJECT = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")} | {
    d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, "__init__.py"))}


def _imports(tree):
    """(node, top-level?, modules named) for every import statement of a parsed module."""
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node, id(node) in top, [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            yield node, id(node) in top, [base] if node.module else [f"{base}{a.name}" for a in node.names]


@pytest.mark.parametrize("module", MODULES)
def test_imports_flow_one_way(module):
    """No module of the package imports the package back (`import datasets`, `from datasets import
    get_dataset`): they name a submodule (`from datasets.registry import register`), so the
    package's __init__ can import them all without a cycle. __init__ may import its submodules.
    Project modules are imported at the top of the file, never inside a function."""
    importlib.import_module(f"datasets.{module}" if module != "__init__" else "datasets")
    with open(os.path.join(PACKAGE, f"{module}.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node, top_level, names in _imports(tree):
        where = f"datasets/{module}.py:{node.lineno}"
        for name in names:
            assert not name.startswith("."), f"{where}: relative import {name}; name the submodule"
            project = name.split(".")[0] in PROJECT
            assert top_level or not project, f"{where}: {name} imported inside a function or class"
            if name == "datasets":
                assert module == "__init__" and isinstance(node, ast.ImportFrom) and all(
                    a.name in MODULES for a in node.names), f"{where}: imports the package datasets itself"
