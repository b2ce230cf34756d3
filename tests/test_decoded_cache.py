"""`--decoded_cache`: the device-side Resize(256) + CenterCrop(224) equals PIL's byte for byte on every
image tested here, the cache is built once, checked against PIL, keyed by the sample list, and a
run trained and evaluated from it equals the run that decodes JPEGs in the loader exactly.

    python -m pytest -q tests/test_decoded_cache.py
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import datasets
import tga_zsr
from engine.checkpoint import load_file
from dataset_fixtures import write_tinyimagenet
from datasets.decoded_cache import DecodedImages
from datasets.pil_resize import PilResizeCenterCrop, resized_size

PIL_PIPELINE = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(224),
                          T.PILToTensor()])
SIZES = [(64, 64), (32, 32), (64, 80), (100, 64), (224, 224), (256, 256), (300, 257), (375, 500)]


def images(shape, n, seed):
    """Random pixels, pure black/white edges and smooth ramps: all three stress the rounding."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
        if k % 3 == 1:
            a = (a // 128) * 255
        elif k % 3 == 2:
            ramp = np.linspace(0, 255, shape[1])[None, :, None] * np.linspace(0.2, 1, shape[0])[:, None, None]
            a = (ramp + rng.integers(0, 3, size=shape + (3,))).clip(0, 255).astype(np.uint8)
        out.append(a)
    return out


@pytest.mark.parametrize("shape", SIZES)
def test_device_resize_equals_pil_on_every_image(shape):
    arrays = images(shape, 24, seed=shape[0] * 1000 + shape[1])
    ours = PilResizeCenterCrop()(torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays]))
    theirs = torch.stack([PIL_PIPELINE(Image.fromarray(a)) for a in arrays])
    assert ours.dtype == torch.uint8 and ours.shape == theirs.shape == (24, 3, 224, 224)
    assert torch.equal(ours, theirs), f"{int((ours != theirs).sum())} bytes differ"


def test_device_resize_equals_pil_on_decoded_jpegs(tmp_path):
    """TinyImageNet's case: 64x64 JPEGs as PIL decodes them (200 of them)."""
    rng = np.random.default_rng(3)
    arrays = []
    for k in range(200):
        path = tmp_path / f"{k}.JPEG"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=75)
        arrays.append(np.array(Image.open(path).convert("RGB")))
    ours = PilResizeCenterCrop()(torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays]))
    theirs = torch.stack([PIL_PIPELINE(Image.fromarray(a)) for a in arrays])
    assert torch.equal(ours, theirs)


def test_resized_size_is_torchvisions():
    for h, w in SIZES:
        img = Image.new("RGB", (w, h))
        assert resized_size(h, w, 256) == T.Resize(256)(img).size[::-1]


def test_cache_is_built_once_checked_and_keyed_by_the_samples(tmp_path):
    data_root, cache = tmp_path / "data", tmp_path / "cache"
    write_tinyimagenet(str(data_root), train_per_class=3)
    plain = datasets.get_dataset("tinyImageNet", str(data_root), "train")
    cached = datasets.use_decoded_cache(plain, "train", cache)
    assert isinstance(cached.dataset, DecodedImages) and cached.on_device is not None
    (npy,) = cache.glob("tinyImageNet_train_*.npy")
    meta = json.loads(npy.with_suffix(".json").read_text())
    assert meta["n"] == len(plain) == 9 and meta["checked_against_pil"] == 9 and meta["shape"] == [3, 32, 32]
    # every image: the cached uint8 resized where it is, then to [0, 1], equals the loader's PIL path
    for i in range(len(plain)):
        x, y = cached.dataset[i]
        assert x.dtype == torch.uint8 and y == plain.dataset[i][1]
        ours = datasets.images_to(x[None], "cpu", cached.on_device)[0]
        assert torch.equal(ours, datasets.to_unit(plain.dataset[i][0]))
    # a second use reads what is there; a changed folder gets a cache of its own
    stamp = os.stat(npy).st_mtime_ns
    datasets.use_decoded_cache(plain, "train", cache)
    assert os.stat(npy).st_mtime_ns == stamp
    extra = data_root / "tiny-imagenet-200" / "train" / "n01443537" / "images" / "n01443537_9.JPEG"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(extra)
    datasets.use_decoded_cache(datasets.get_dataset("tinyImageNet", str(data_root), "train"), "train", cache)
    assert len(list(cache.glob("tinyImageNet_train_*.npy"))) == 2
    assert not list(cache.glob("*.tmp*")), "no temporary file left"


def test_cache_refuses_what_it_cannot_reproduce(tmp_path):
    data_root, cache = tmp_path / "data", tmp_path / "cache"
    write_tinyimagenet(str(data_root))
    odd = data_root / "tiny-imagenet-200" / "val" / "images" / "val_3.JPEG"
    Image.fromarray(np.zeros((40, 32, 3), np.uint8)).save(odd)       # one image of another size
    val = datasets.get_dataset("tinyImageNet", str(data_root), "val")
    with pytest.raises(datasets.DatasetError, match="val_3.JPEG.*one size only"):
        datasets.use_decoded_cache(val, "test", cache)
    assert not list(cache.iterdir()), "nothing half-built is left"
    square = datasets.get_dataset("tinyImageNet", str(data_root), "val", transform=T.Resize((224, 224)))
    with pytest.raises(datasets.DatasetError, match="transform other than Resize"):
        datasets.use_decoded_cache(square, "test", cache)
    with pytest.raises(datasets.DatasetError, match="not read from image files"):
        datasets.use_decoded_cache(datasets.get_dataset("synthetic_colors"), "test", cache)


def test_cache_that_no_longer_matches_is_refused(tmp_path):
    data_root, cache = tmp_path / "data", tmp_path / "cache"
    write_tinyimagenet(str(data_root))
    train = datasets.get_dataset("tinyImageNet", str(data_root), "train")
    datasets.use_decoded_cache(train, "train", cache)
    (meta_path,) = cache.glob("*.json")
    meta = json.loads(meta_path.read_text())
    meta["targets"][0] = 2
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(datasets.DatasetError, match="does not match.*delete it"):
        datasets.use_decoded_cache(train, "train", cache)


def test_training_and_evaluation_from_the_cache_equal_the_jpeg_loader(tmp_path):
    """Two FT-Clean steps on TinyImageNet (batch 3) and an evaluation on its val set, with and without
    --decoded_cache: the trained weights and every accuracy are identical (the inputs are the same bytes)."""
    data_root = tmp_path / "data"
    write_tinyimagenet(str(data_root))
    base = ["-c", "configs/synthetic.yaml", "--Method", "FT-Clean", "--device", "cpu", "--dataset", "tinyImageNet",
            "--root", str(data_root), "--batch_size", "3", "--epochs", "1", "--max_steps", "2", "--save_freq", "0",
            "--testdata", "tinyImageNet", "--test_numsteps", "2", "--output_dir", str(tmp_path / "runs"),
            "--allow_partial"]  # the fixture holds a few of TinyImageNet's images
    assert tga_zsr.main(base + ["--name", "plain"]) == 0
    assert tga_zsr.main(base + ["--name", "cached", "--decoded_cache", str(tmp_path / "cache")]) == 0
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # train and val
    a, b = load_file(tmp_path / "runs" / "plain" / "last.pt"), load_file(tmp_path / "runs" / "cached" / "last.pt")
    assert a["step"] == b["step"] == 2
    weights = a["vision_encoder_state_dict"]
    assert weights and all(torch.equal(v, b["vision_encoder_state_dict"][k]) for k, v in weights.items())
    rows = [json.loads((tmp_path / "runs" / n / "results.jsonl").read_text().splitlines()[-1]) for n in ("plain", "cached")]
    assert (rows[0]["clean_acc"], rows[0]["robust_acc"]) == (rows[1]["clean_acc"], rows[1]["robust_acc"])


def test_prepare_builds_the_cache_ahead(tmp_path, capsys):
    from datasets import prepare
    write_tinyimagenet(str(tmp_path / "data"))
    assert prepare.main(["--root", str(tmp_path / "data"), "--decoded_cache", str(tmp_path / "cache")]) == 0
    said = capsys.readouterr().out
    assert "tinyImageNet (train): 6 images" in said and "tinyImageNet (test): 5 images" in said
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert prepare.main(["--root", str(tmp_path / "none"), "--decoded_cache", str(tmp_path / "cache")]) == 1
