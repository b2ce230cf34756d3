"""The mini world: determinism, captions that tell the truth about the pixels, the zero-shot
suite, and the bundled tiny CLIP being a real zero-shot model.

    python -m pytest tests/test_world.py -q        # ~10 s on 2 CPU cores
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.evaluate import evaluate_dataset  # noqa: E402
from datasets import TABLE_ORDER, TEST_DATASETS, available, get_dataset  # noqa: E402
from datasets.world import (ATTRIBUTES, BACKGROUNDS, COLOUR_NAMES, COLOURS, HELDOUT_COMBOS, POSITIONS,  # noqa: E402
                            PREFIXES, SHAPES, SIZE_NAMES, SUITE, TEXTURES, TRAIN_COMBOS, WORLD_TEST_SETS, DIAGNOSTIC_SETS,
                            _backgrounds, allowed_combos, caption, minimal_pairs, random_mentions, render,
                            sample_attributes, stream, subset)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = os.path.join(ROOT, "checkpoints", "tiny-world-clip.pt")

torch.set_num_threads(2)


def test_deterministic_per_seed_and_index():
    a, b = sample_attributes(300, seed=7), sample_attributes(300, seed=7)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    x = render(a)
    assert x.shape == (300, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert torch.equal(x, render(b))
    # image i depends on (seed, i) only, not on the batch it is rendered in
    part = sample_attributes(50, seed=7, start=100)
    assert torch.equal(render(part), x[100:150])
    assert caption(part) == caption(a)[100:150]
    # another seed gives another world
    c = sample_attributes(300, seed=8)
    assert not torch.equal(render(c), x)
    # attributes cover every value
    for name, values in ATTRIBUTES.items():
        assert set(a[name].tolist()) == set(range(len(values))), name


def _nearest_colour(rgb: torch.Tensor) -> torch.Tensor:
    palette = torch.tensor([COLOURS[c] for c in COLOUR_NAMES])
    return torch.cdist(rgb, palette).argmin(1)


def test_caption_colour_matches_pixel_at_object_centre():
    a = sample_attributes(800, seed=3, constraints={"shape": [s for s in SHAPES if s != "ring"]})
    x = render(a)
    caps = caption(a)
    ix = a["cx"].floor().long()
    iy = a["cy"].floor().long()
    centre = x[torch.arange(len(ix)), :, iy, ix]  # [n, 3]; every texture keeps the colour at the centre
    said = torch.tensor([next(j for j, c in enumerate(COLOUR_NAMES) if f" {c} " in cap) for cap in caps])
    agree = (_nearest_colour(centre) == said).float().mean().item()
    assert agree > 0.99, agree
    # the ring has a hole: its colour is on its band (solid rings; a check may fall there)
    r = sample_attributes(200, seed=4, constraints={"shape": ["ring"], "texture": ["solid"]})
    xr = render(r)
    px = xr[torch.arange(200), :, r["cy"].floor().long(), (r["cx"] + 0.78 * r["radius"]).floor().long()]
    assert (_nearest_colour(px) == r["colour"]).float().mean() > 0.99


def _object_mask(a):
    """Pixels where the object changed the background."""
    return (render(a) - _backgrounds(a, 32)).abs().sum(1) > 0.05


def test_size_and_position_match_pixels():
    a = sample_attributes(1200, seed=5, constraints={"texture": ["solid"]})
    mask = _object_mask(a).float()
    area = mask.sum((1, 2))
    caps = caption(a)
    # the caption's size word orders the pixel areas, for every shape
    for s in range(len(SHAPES)):
        per = [area[(a["shape"] == s) & (a["size"] == k)] for k in range(3)]
        assert all(len(p) > 5 for p in per)
        assert per[0].max() < per[1].min() and per[1].max() < per[2].min(), SHAPES[s]
    assert all(SIZE_NAMES[k] in c for k, c in zip(a["size"].tolist(), caps))
    # the object's pixel centroid lies in the quadrant the caption names
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    cx = (mask * xx).sum((1, 2)) / area
    cy = (mask * yy).sum((1, 2)) / area
    quadrant = (cy >= 15.5).long() * 2 + (cx >= 15.5).long()
    assert (quadrant == a["position"]).float().mean() > 0.98
    assert all(f"in the {POSITIONS[p]}" in c for p, c in zip(a["position"].tolist(), caps))


def test_captions_mention_and_fit_the_context():
    a = sample_attributes(400, seed=1)
    mention, prefix = random_mentions(a, p=0.6)
    caps = caption(a, mention, prefix)
    for i, cap in enumerate(caps):
        assert cap.startswith(PREFIXES[prefix[i]])
        assert (TEXTURES[a["texture"][i]] in cap) == bool(mention["texture"][i])
        assert (SHAPES[a["shape"][i]] in cap) == bool(mention["shape"][i]) or "object" in cap
    import open_clip
    from engine.model import load_clip  # noqa: F401  (registers configs/models)
    ctx = open_clip.get_model_config("tiny-world")["text_cfg"]["context_length"]
    tok = open_clip.get_tokenizer("tiny-world")
    longest = caption(sample_attributes(2000, seed=2), prefix=torch.ones(2000, dtype=torch.long))  # "this is a photo of"
    used = (tok(longest) != 0).sum(1)
    assert used.max() < ctx, "captions would be truncated: raise context_length"


def test_minimal_pairs_differ_in_one_attribute_and_one_phrase():
    c = {"exclude_combos": HELDOUT_COMBOS}
    a = sample_attributes(400, seed=9, constraints=c)
    twin, changed = minimal_pairs(a, allowed_combos(c))
    codes = list(ATTRIBUTES)
    for i, attr in enumerate(changed):
        differ = [k for k in codes if int(a[k][i]) != int(twin[k][i])]
        assert differ == [attr], (i, differ, attr)
    # no held-out combination leaks into pre-training; shape and position get most pairs
    combos = set(zip(twin["shape"].tolist(), twin["colour"].tolist()))
    assert not combos & set(HELDOUT_COMBOS)
    assert changed.count("shape") > 80 and changed.count("position") > 80 and set(changed) == set(codes)
    # the twin's pixels differ and its object lies in its own quadrant
    assert ((render(a) - render(twin)).abs().amax((1, 2, 3)) > 0.1).all()
    moved = [i for i, attr in enumerate(changed) if attr == "position"]
    assert all((twin["cx"][i] >= 16) == bool(twin["position"][i] % 2) for i in moved)
    # a stream batch: base captions and twin captions differ in exactly the changed words
    g1, g2 = stream(16, seed=3, pair_frac=1.0), stream(16, seed=3, pair_frac=1.0)
    (x, caps), (x2, caps2) = next(g1), next(g2)
    assert x.shape == (16, 3, 32, 32) and len(caps) == 16 and caps == caps2 and torch.equal(x, x2)
    for base, tw in zip(caps[:8], caps[8:]):
        assert base != tw and base.split()[:3] == tw.split()[:3]
    assert next(g1)[1] != caps  # the stream moves on
    assert len(next(stream(16, seed=3))[1]) == 16  # pair_frac=0: the plain stream


def test_suite_registered_fixed_and_balanced():
    names = [n for n in available() if n.startswith("world_")]
    assert set(names) == set(SUITE) and len(WORLD_TEST_SETS) >= 6
    assert not set(HELDOUT_COMBOS) & set(TRAIN_COMBOS) and len(HELDOUT_COMBOS) + len(TRAIN_COMBOS) == 64
    for name in WORLD_TEST_SETS:
        d = get_dataset(name, split="test")
        x, y = d.dataset[0]
        assert x.shape == (3, 32, 32) and isinstance(y, int)
        assert len(d.prompts) == len(d.classnames) == len(set(d.prompts))
        counts = torch.bincount(d.dataset.labels, minlength=len(d.classnames))
        assert counts.min() == counts.max() and 200 <= len(d) <= 500, name
        again = get_dataset(name, split="test")
        assert torch.equal(again.dataset.images, d.dataset.images)
    d = get_dataset("world_train", split="train")
    assert len(d.classnames) == len(TRAIN_COMBOS) and 2000 <= len(d) <= 5000
    assert d.prompts[0] == f"This is a photo of a {d.classnames[0]}"
    # the held-out test set only shows held-out combinations, its labels name them
    h = get_dataset("world_heldout")
    for (img, lab), s, c in zip([h.dataset[i] for i in range(24)], h.dataset.attrs["shape"], h.dataset.attrs["colour"]):
        assert h.classnames[lab] == f"{COLOUR_NAMES[c]} {SHAPES[s]}"
    assert {b for b in BACKGROUNDS}  # background labels are phrases, e.g. "on grass"
    assert get_dataset("world_background").classnames[0] == "on grass"


def test_table_order_is_the_test_sets_then_the_suite():
    # catalog.py lists the world sets without importing world.py (no torch there): keep them in step
    assert TABLE_ORDER == TEST_DATASETS + [n for n in SUITE if n != "world_train"]
    assert set(WORLD_TEST_SETS + DIAGNOSTIC_SETS) == set(TABLE_ORDER[len(TEST_DATASETS):])
    assert len(TEST_DATASETS) == 16 and set(TABLE_ORDER) <= set(available())


def clean_accuracy(model, data) -> float:
    """Zero-shot top-1 (a fraction) through the evaluation's own loop (ε = 0: clean only)."""
    with torch.no_grad():
        text = model.encode_text(data.prompts)
    settings = {"attack": "pgd", "norm": "l_inf", "eps": 0, "steps": 0, "step_size": 0, "seed": 0}
    return evaluate_dataset(model, data, text, settings, torch.device("cpu"), "fp32", show_progress=False)[
        "clean_acc"] / 100


def zero_shot_bar(num_classes: int) -> float:
    """3× chance, capped at half-way between chance and 100% for sets with few classes
    (3× chance is unreachable for 2–3 classes and too strict for 4)."""
    chance = 1.0 / num_classes
    return min(3 * chance, (1 + chance) / 2)


# world_position is outside the suite: the bundled checkpoint has not learned position (zero-shot
# 0.25 on 4 classes, see checkpoints/tiny-world-clip.json). A strict xfail: a retrained checkpoint
# that learns it turns this into an error, so that the set goes back into WORLD_TEST_SETS.
@pytest.mark.skipif(not os.path.isfile(CKPT), reason=f"{CKPT} missing: run python pretrain_tiny.py")
@pytest.mark.parametrize("name", DIAGNOSTIC_SETS)
@pytest.mark.xfail(strict=True, reason="position is not learned by the bundled checkpoint")
def test_bundled_model_diagnostic_sets(name, bundled_model):
    d = get_dataset(name)
    assert clean_accuracy(bundled_model, d) >= zero_shot_bar(len(d.classnames))


@pytest.mark.skipif(not os.path.isfile(CKPT), reason=f"{CKPT} missing: run python pretrain_tiny.py")
@pytest.mark.parametrize("name", WORLD_TEST_SETS)
def test_bundled_model_is_a_zero_shot_model(name, bundled_model):
    # Why this bar: a random-weight tiny CLIP scores at chance (± 2-5 points on 480 images);
    # 3× chance, capped at (1+chance)/2 for sets with few classes, can only be met by a model
    # whose text tower understands the attribute words and whose image tower sees the
    # attribute. It guards the generator (a changed renderer silently invalidates the
    # checkpoint) and the loader.
    d = get_dataset(name)
    acc = clean_accuracy(bundled_model, d)
    assert acc >= zero_shot_bar(len(d.classnames)), (name, acc)


@pytest.fixture(scope="module")
def bundled_model():
    from engine.model import load_clip
    return load_clip("tiny-world", pretrained=CKPT).eval()
