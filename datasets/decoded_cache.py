"""The decoded cache (`--decoded_cache DIR`): a dataset's images decoded once to uint8 arrays on
disk, and Resize(256) + CenterCrop(224) done on the device, bit-identical to PIL.

Why: a TinyImageNet image costs ~0.8 ms of one core in the loader (JPEG decode + PIL Resize(256)
+ crop), and one H100 trains TGA-ZSR at ~2 000-4 000 images/s: 2-4 busy cores just to keep up.
From the cache a batch is a slice of a memory-mapped array (64x64x3 bytes per image, 1.2 GB for
TinyImageNet train), shipped as uint8 and resized on the GPU by `pil_resize.PilResizeCenterCrop`,
whose bytes equal PIL's.

Files, in DIR: `<dataset>_<split>_<key>.npy` (uint8 [N, 3, h, w], RGB) and `.json` beside it
(the samples, Pillow's version, how many images were checked). `key` hashes the sample list
(paths and labels), so another copy of the dataset or a changed folder gets a new cache; a cache
is written to temporary names and renamed when complete, so an interrupted build leaves nothing
that could be read. When built, 1 000 images (seeded) are decoded again and passed through the
dataset's own PIL transform: any byte that differs from the device resize stops the build. Each
use checks a few more.

It applies to datasets read from image files (`LabelledFiles`) with the default transform
(RGB, Resize(256) + CenterCrop(224)) whose images all have one size: TinyImageNet (train and
val) and its 80/20 split. Anything else stops with the reason.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import PIL
import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T
from tqdm import tqdm

from datasets.catalog import DatasetError
from datasets.common import resize_center_crop, rgb_first
from datasets.labelled import LabelledFiles
from datasets.pil_resize import PilResizeCenterCrop
from datasets.registry import ZeroShotData

FORMAT = 1
CHECKED_AT_BUILD = 1000
CHECKED_AT_USE = 8


class DecodedImages(torch.utils.data.Dataset):
    """(uint8 [3, h, w] tensor, label) from the memory-mapped array; `targets` is the label list."""

    def __init__(self, path: Path, targets: list[int]):
        self.path, self.targets = Path(path), list(targets)
        self._array = None  # opened lazily: each loader worker maps the file itself

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self._array[i])), self.targets[i]

    def __getstate__(self):  # workers get the path, not an open map
        return {**self.__dict__, "_array": None}


class _Decode(torch.utils.data.Dataset):
    """The source images decoded to uint8 [3, h, w] at their own size (RGB), for the build."""

    def __init__(self, files: LabelledFiles):
        self.files, self.to_tensor = files, rgb_first(T.PILToTensor())

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path, _ = self.files.samples[i]
        try:
            return self.to_tensor(self.files.loader(path))
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
            raise DatasetError(f"decoded cache: cannot decode {path} ({type(e).__name__}: {e}); "
                               f"check the dataset: python -m datasets.prepare --verify --deep") from e


def _as_list(batch):
    return batch


def _default_transform_repr() -> str:
    return repr(rgb_first(resize_center_crop()))


def cache_key(data: ZeroShotData) -> str:
    """A hash of the sample list (paths relative to the dataset's folder, labels)."""
    h = hashlib.sha1()
    for path, y in data.dataset.samples:
        h.update(f"{os.path.relpath(path, data.root) if data.root else path}\t{y}\n".encode())
    return h.hexdigest()[:12]


def _source_files(data: ZeroShotData) -> LabelledFiles:
    ds = data.dataset
    if not isinstance(ds, LabelledFiles):
        raise DatasetError(f"--decoded_cache: {data.name} is not read from image files "
                           f"({type(ds).__name__}); drop --decoded_cache for it")
    if repr(ds.transform) != _default_transform_repr():
        raise DatasetError(f"--decoded_cache: {data.name} uses a transform other than Resize(256) + "
                           f"CenterCrop(224) ({ds.transform!r}); the device resize reproduces only that one")
    return ds


def check_against_pil(files: LabelledFiles, array, indices, resize: PilResizeCenterCrop, where: str) -> None:
    """The device resize of the cached images equals the dataset's own PIL transform, byte for byte."""
    for start in range(0, len(indices), 64):
        chunk = indices[start:start + 64]
        cached = torch.from_numpy(np.stack([np.asarray(array[i]) for i in chunk]))
        ours = resize(cached)
        for k, i in enumerate(chunk):
            theirs = files[i][0]
            if not torch.equal(ours[k], theirs):
                diff = (ours[k].int() - theirs.int()).abs()
                raise DatasetError(
                    f"{where}: image {files.samples[i][0]} differs from PIL's Resize(256) + CenterCrop(224) "
                    f"({int((diff > 0).sum())} bytes, at most {int(diff.max())} apart; Pillow {PIL.__version__}). "
                    "Delete the cache and run without --decoded_cache, and report it")


def build(data: ZeroShotData, split: str, npy: Path, meta_path: Path, workers: int, seed: int = 0) -> None:
    files = _source_files(data)
    n = len(files)
    first = _Decode(files)[0]
    shape = (n,) + tuple(first.shape)
    tmp = npy.with_suffix(f".tmp{os.getpid()}.npy")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    try:
        loader = DataLoader(_Decode(files), batch_size=256, num_workers=workers, collate_fn=_as_list)
        at = 0
        with tqdm(total=n, desc=f"decoding {data.name} ({split}) -> {npy.name}", unit="img") as bar:
            for batch in loader:
                for img in batch:
                    if tuple(img.shape) != shape[1:]:
                        raise DatasetError(
                            f"--decoded_cache: {files.samples[at][0]} is {tuple(img.shape[1:])} but the first "
                            f"image is {shape[2:]}; the cache holds images of one size only")
                    array[at] = img.numpy()
                    at += 1
                bar.update(len(batch))
        array.flush()
        checked = sorted(random.Random(seed).sample(range(n), min(CHECKED_AT_BUILD, n)))
        check_against_pil(files, array, checked, PilResizeCenterCrop(), "decoded cache build")
        del array
        meta = {"format": FORMAT, "dataset": data.name, "split": split, "n": n, "shape": list(shape[1:]),
                "key": npy.stem.rsplit("_", 1)[-1], "root": data.root, "pillow": PIL.__version__,
                "checked_against_pil": len(checked), "targets": files.targets}
        os.replace(tmp, npy)
        tmp_meta = meta_path.with_suffix(f".tmp{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(tmp_meta, meta_path)
    finally:
        if tmp.exists():
            tmp.unlink()


def use_decoded_cache(data: ZeroShotData, split: str, cache_dir, workers: int = 0, seed: int = 0) -> ZeroShotData:
    """`data` read from its decoded cache in `cache_dir` (built on first use): the dataset yields uint8
    images at their stored size, and `on_device` resizes them where they are (see the module docstring)."""
    files = _source_files(data)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{data.name}_{split}_{cache_key(data)}"
    npy, meta_path = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
    if not (npy.is_file() and meta_path.is_file()):
        build(data, split, npy, meta_path, workers, seed)
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    array = np.load(npy, mmap_mode="r")
    if meta.get("format") != FORMAT or meta.get("n") != len(files) or array.shape[0] != len(files) \
            or meta.get("targets") != files.targets:
        raise DatasetError(f"--decoded_cache: {npy} does not match {data.name} ({split}) as it is now; "
                           "delete it (and its .json) and it is rebuilt")
    resize = PilResizeCenterCrop()
    rng = random.Random(f"{seed}-use")
    check_against_pil(files, array, sorted(rng.sample(range(len(files)), min(CHECKED_AT_USE, len(files)))),
                      resize, f"decoded cache {npy.name}")
    return ZeroShotData(data.name, DecodedImages(npy, files.targets), data.classnames, data.prompts,
                        root=data.root, extra={**data.extra, "decoded_cache": str(npy)}, on_device=resize)
