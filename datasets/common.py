"""Shared pieces of the dataset builders: the error type, the original transforms, RGB
conversion and class-name files.

The transforms are the original code's (SPEC §0/§5): `Resize(256) + CenterCrop(224)` for most
sets and `Resize((224, 224))` for CIFAR and STL10, both PIL bilinear, then `ToTensor` so
images come out in [0, 1]. Every builder puts `ToRGB` in front: Caltech101/256 and SUN397 hold
grayscale and CMYK JPEGs, and torchvision's Caltech classes hand them over unconverted.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image
from torchvision import transforms as T

from datasets.catalog import DatasetError

CLASSNAMES_DIR = Path(__file__).resolve().parent / "classnames"


def resize_center_crop(size: int = 224):
    """Resize(256) + CenterCrop(224) + ToTensor (PIL bilinear), SPEC §0/§5."""
    return T.Compose([T.Resize(int(size * 256 / 224), interpolation=T.InterpolationMode.BILINEAR),
                      T.CenterCrop(size), T.ToTensor()])


def resize_square(size: int = 224):
    """Resize((224, 224)) + ToTensor, used for CIFAR and STL10 (SPEC §5)."""
    return T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR), T.ToTensor()])


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
