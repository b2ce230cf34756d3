"""Shared pieces of the dataset builders: the error type, the original transforms, RGB
conversion and class-name files.

The transforms are the original code's: `Resize(256) + CenterCrop(224)` for most
sets and `Resize((224, 224))` for CIFAR and STL10, both PIL bilinear. They end in `PILToTensor`:
images leave the loader workers as uint8 (a quarter of float32's bytes through the worker pipes,
the pinned buffers and the host-to-device copy), and `to_unit` divides by 255 on the device,
with the very values of `ToTensor` (a 256-entry table computed by ToTensor's own op on the CPU;
tests/test_gpu_ready.py). Every builder puts `ToRGB` in front: Caltech101/256 and SUN397 hold
grayscale and CMYK JPEGs, and torchvision's Caltech classes hand them over unconverted.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T

from datasets.catalog import DatasetError

CLASSNAMES_DIR = Path(__file__).resolve().parent / "classnames"


def resize_center_crop(size: int = 224):
    """Resize(256) + CenterCrop(224) (PIL bilinear), as uint8 (`to_unit` gives [0, 1])."""
    return T.Compose([T.Resize(int(size * 256 / 224), interpolation=T.InterpolationMode.BILINEAR),
                      T.CenterCrop(size), T.PILToTensor()])


def resize_square(size: int = 224):
    """Resize((224, 224)), used for CIFAR and STL10, as uint8 (`to_unit` gives [0, 1])."""
    return T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR), T.PILToTensor()])


_UNIT_TABLES: dict = {}


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1], bit-identical to `ToTensor` on every device; float images
    pass through. ToTensor computes `x.float().div(255)` on the CPU; CUDA divides by a scalar as a
    multiplication by its reciprocal (one bit may differ), so the 256 values are made on the CPU by
    ToTensor's op once and looked up."""
    if x.dtype != torch.uint8:
        return x
    table = _UNIT_TABLES.get(x.device)
    if table is None:
        table = _UNIT_TABLES[x.device] = torch.arange(256, dtype=torch.uint8).float().div(255).to(x.device)
    return table[x.long()]


def images_to(x: torch.Tensor, device, on_device=None) -> torch.Tensor:
    """A batch from a loader onto `device` (asynchronously from pinned memory), `on_device` applied
    there (a dataset's `ZeroShotData.on_device`: the decoded cache's resize), then in [0, 1]."""
    x = x.to(device, non_blocking=True)
    return to_unit(on_device(x) if on_device is not None else x)


def default_workers() -> int:
    """Loader workers per process: the CPUs this process may use, shared by the torchrun processes
    of the node, at most 8. A TinyImageNet image costs ~0.8 ms of one core (half of it Resize(256));
    a TGA-ZSR step on one H100 takes ~2 000-4 000 images/s, i.e. 2-4 busy cores (docs/gpus.md)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, per_process))


class ToRGB:
    """PIL image of any mode (L, CMYK, RGBA, P, I;16) -> RGB; tensors pass through."""

    def __call__(self, img):
        if isinstance(img, Image.Image) and img.mode != "RGB":
            return img.convert("RGB")
        return img

    def __repr__(self) -> str:
        return "ToRGB()"


def rgb_first(transform):
    """Prepend `ToRGB` to a transform (None -> just `ToRGB`)."""
    return T.Compose([ToRGB()] + ([transform] if transform is not None else []))


def read_lines(filename: str) -> list[str]:
    """Lines of a file in `datasets/classnames/`, without line ends; blank lines dropped.

    Lines are not stripped: the original flower names keep their trailing blanks
    ('cyclamen ', 'hippeastrum '), and the prompts keep them too [faithful]."""
    text = (CLASSNAMES_DIR / filename).read_text(encoding="utf-8")
    return [line.rstrip("\r\n") for line in text.splitlines() if line.strip()]


def read_wnid_names(filename: str) -> dict[str, str]:
    """`wnid index name` files (ImageNet, TinyImageNet) -> {wnid: name} (third column).

    The ImageNet file has no trailing newline; `splitlines` keeps its last class."""
    names = {}
    for line in read_lines(filename):
        parts = line.split()
        if len(parts) < 3:
            raise DatasetError(f"malformed line in {CLASSNAMES_DIR / filename}: {line!r}")
        names[parts[0]] = parts[2]
    return names


def lower_clean(name: str, chars: str = "_-") -> str:
    """The original's per-dataset prompt clean-up: lower-case, `chars` turned into spaces."""
    name = name.lower()
    for ch in chars:
        name = name.replace(ch, " ")
    return name
