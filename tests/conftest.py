"""Shared fixtures: a tiny random-weight open_clip model (configs/models/tiny-vit.json)."""
import logging
import os

import pytest
import torch

logging.getLogger().setLevel(logging.ERROR)  # open_clip's "initialized randomly" warnings
# Two intra-op threads by default; OMP_NUM_THREADS, when set, wins, so that the suite's tolerances can
# be checked with one thread as well as two (a thread count changes the order of fp32 reductions).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (tiny models run ~10× faster on one thread of a shared 2-core
    CPU); the suite's count comes back afterwards. Use with pytestmark = pytest.mark.usefixtures(...)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_clip():
    from engine.model import load_clip
    torch.manual_seed(0)
    return load_clip("tiny-vit", pretrained=None)


@pytest.fixture
def tiny_model(tiny_clip):
    """A fresh copy per test, so tests may train it."""
    import copy
    return copy.deepcopy(tiny_clip)
