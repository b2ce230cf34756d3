"""Shared fixtures: a tiny random-weight open_clip model (configs/models/tiny-vit.json)."""
import logging

import pytest
import torch

logging.getLogger().setLevel(logging.ERROR)  # open_clip's "initialized randomly" warnings
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_clip():
    from clip_model import load_clip
    torch.manual_seed(0)
    return load_clip("tiny-vit", pretrained=None)


@pytest.fixture
def tiny_model(tiny_clip):
    """A fresh copy per test, so tests may train it."""
    import copy
    return copy.deepcopy(tiny_clip)
