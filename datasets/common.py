"""Shared pieces of the dataset builders: the error type and the original transforms."""
from __future__ import annotations

from torchvision import transforms as T


class DatasetError(RuntimeError):
    """A dataset is missing or malformed; the message says where, what, and how to fix it."""


def resize_center_crop(size: int = 224):
    """Resize(256) + CenterCrop(224) + ToTensor (PIL bilinear), SPEC §0/§5."""
    return T.Compose([T.Resize(int(size * 256 / 224), interpolation=T.InterpolationMode.BILINEAR),
                      T.CenterCrop(size), T.ToTensor()])


def resize_square(size: int = 224):
    """Resize((224, 224)) + ToTensor, used for CIFAR and STL10 (SPEC §5)."""
    return T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR), T.ToTensor()])
