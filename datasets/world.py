"""A procedural image–caption "mini world" in which the whole paper protocol runs on a CPU.

Each 32×32 image shows one object with six attributes (shape, colour, size, texture, background,
position). `datasets/world_render.py` draws the images, their captions and the pre-training
`stream`; this module turns them into zero-shot test sets and registers them. It re-exports the
renderer's public names, so `from datasets.world import render, stream` keeps working.

The registry entries (prefix `world_`) mirror the paper's protocol in miniature:

* `world_train` plays TinyImageNet: the 52 shape–colour classes that are not held out,
  prompt "This is a photo of a {colour} {shape}".
* six zero-shot test sets the fine-tuning never sees (`WORLD_TEST_SETS`), each with its own
  task, template and class names: `world_heldout` (the 12 held-out shape–colour combinations,
  never seen in pre-training either), `world_shape`, `world_colour`, `world_texture`,
  `world_size`, `world_background`; and `world_position`, a diagnostic set outside the suite
  (the bundled model has not learned position).

    from datasets import get_dataset
    data = get_dataset("world_shape"); print(data.prompts, len(data))
    python -m pytest tests/test_world.py -q
"""
from __future__ import annotations

import functools

import torch

from datasets.registry import ZeroShotData, register
# Re-exported: pretrain_tiny.py and the tests import the renderer's names from here.
from datasets.world_render import (  # noqa: F401
    ATTRIBUTES, BACKGROUND_PHRASE, BACKGROUNDS, COLOUR_NAMES, COLOURS, HELDOUT_COMBOS, IMAGE_SIZE, PAIR_WEIGHTS,
    POSITION_PHRASE, POSITIONS, PREFIXES, SHAPES, SIZE_NAMES, SIZES, SUPERSAMPLE, TEXTURES, TRAIN_COMBOS,
    _backgrounds, allowed_combos, caption, minimal_pairs, random_mentions, render, sample_attributes, stream,
    subset)


# --------------------------------------------------------------------------- zero-shot suite
class WorldImages(torch.utils.data.Dataset):
    """Pre-rendered images `[n, 3, 32, 32]` and integer labels; `attrs` kept for inspection."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, attrs: dict):
        self.images, self.labels, self.attrs = images, labels, attrs
        self.targets = labels.tolist()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


# name: (seed, images per split, template, what the label is, constraints)
WORLD_SEED = 2024
SUITE = {
    "world_train": dict(n=4160, template="This is a photo of a {}", label="combo", combos=TRAIN_COMBOS),
    "world_heldout": dict(n=480, template="a photo of a {}.", label="combo", combos=HELDOUT_COMBOS),
    "world_shape": dict(n=480, template="a photo of a {}.", label="shape"),
    "world_colour": dict(n=480, template="a photo of a {} object.", label="colour"),
    "world_texture": dict(n=480, template="a photo of a {} object.", label="texture"),
    "world_size": dict(n=480, template="a photo of a {} object.", label="size"),
    "world_background": dict(n=480, template="a photo of an object {}.", label="background"),
    "world_position": dict(n=480, template="a photo of an object {}.", label="position"),
}


def _classnames(spec: dict) -> list[str]:
    label = spec["label"]
    if label == "combo":
        return [f"{COLOUR_NAMES[k]} {SHAPES[s]}" for s, k in spec["combos"]]
    if label == "background":
        return [BACKGROUND_PHRASE[b] for b in BACKGROUNDS]
    if label == "position":
        return [POSITION_PHRASE[p] for p in POSITIONS]
    return list(ATTRIBUTES[label])


@functools.lru_cache(maxsize=16)
def build_world(name: str, split: str = "test", n: int | None = None) -> ZeroShotData:
    """Render a suite member. `split` picks disjoint image streams (train/val/test seeds).

    Every split of every set is a fixed, balanced, deterministic set of images: the label
    cycles through the classes with the index. Cached per process (a pure function of its
    arguments): the dataset check and the run, or the many runs of a paper table in one process
    (paper.py), render each set once. Callers must not modify what they get (none does: subsets
    are new objects).
    """
    spec = SUITE[name]
    n = spec["n"] if n is None else n
    seed = WORLD_SEED + 1000 * list(SUITE).index(name) + {"train": 0, "val": 1, "test": 2}.get(split, 3)
    label = spec["label"]
    if label == "combo":
        c = {"combos": spec["combos"], "balance": "combo"}
        attrs = sample_attributes(n, seed, 0, c)
        lookup = {p: j for j, p in enumerate(spec["combos"])}
        labels = torch.tensor([lookup[(int(s), int(k))] for s, k in zip(attrs["shape"], attrs["colour"])])
    else:
        attrs = sample_attributes(n, seed, 0, {"balance": label})
        labels = attrs[label].clone()
    classnames = _classnames(spec)
    prompts = [spec["template"].format(c) for c in classnames]
    ds = WorldImages(render(attrs), labels, attrs)
    return ZeroShotData(name, ds, classnames, prompts, root="", extra={"world_seed": seed, "label": label})


def _register(name: str):
    def builder(root, split, transform=None):
        # The images are generated, not read: root is unused. The tensors are 32×32 already;
        # the model resizes to its own input size, so a transform is neither needed nor applied.
        return build_world(name, split)
    register(name)(builder)


for _name in SUITE:
    _register(_name)

# The zero-shot suite of the mini benchmark. `world_position` is registered and rendered but kept
# out: the bundled tiny CLIP does not learn position (zero-shot at chance, see
# checkpoints/tiny-world-clip.json), so its numbers would say nothing about robustness.
DIAGNOSTIC_SETS = ["world_position"]
WORLD_TEST_SETS = [n for n in SUITE if n != "world_train" and n not in DIAGNOSTIC_SETS]
