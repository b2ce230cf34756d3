"""The procedural half of the mini world: attributes, a counter-based hash, sampling,
rendering, captions and the pre-training stream. The zero-shot test sets built from it (and
their registry entries) are in `datasets/world.py`, which re-exports the public names.

Each 32×32 RGB image shows one object with six attributes: shape, colour, size, texture,
background and position (which quadrant). Everything is a pure function of (seed, index):
a counter-based integer hash gives every image its own random numbers, so image i is the same
whether it is rendered alone, in a batch of 4096 or streamed in a different order. Rendering is
vectorised torch ops on a 2× supersampled grid (anti-aliased edges): tens of thousands of images
per second on one CPU core.

`pretrain_tiny.py` trains the bundled tiny CLIP (`checkpoints/tiny-world-clip.pt`) on captions
that mention a random subset of the attributes, so that the text tower learns every one of them
and the model is zero-shot capable on every test set.

    from datasets.world_render import sample_attributes, render, caption
    a = sample_attributes(8, seed=0); x = render(a); print(caption(a))
    python -m pytest tests/test_world.py -q
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
SUPERSAMPLE = 2

SHAPES = ["circle", "square", "triangle", "diamond", "star", "cross", "ring", "heart"]
COLOURS = {
    "red": (0.90, 0.12, 0.10), "orange": (1.00, 0.55, 0.05), "yellow": (0.95, 0.90, 0.10),
    "green": (0.15, 0.75, 0.20), "blue": (0.15, 0.30, 0.95), "purple": (0.55, 0.15, 0.75),
    "pink": (1.00, 0.50, 0.75), "white": (0.97, 0.97, 0.97),
}
COLOUR_NAMES = list(COLOURS)
SIZES = {"small": (4.5, 6.0), "medium": (7.5, 9.0), "large": (10.5, 12.0)}  # bounding radius, px
SIZE_NAMES = list(SIZES)
TEXTURES = ["solid", "striped", "dotted", "checkered"]
BACKGROUNDS = ["grass", "sky", "sand", "bricks", "water", "plain"]
POSITIONS = ["top left", "top right", "bottom left", "bottom right"]

# Caption phrases. A background is a place ("on grass", "in the sky"), a position a corner.
BACKGROUND_PHRASE = {"grass": "on grass", "sky": "in the sky", "sand": "on sand", "bricks": "on bricks",
                     "water": "on water", "plain": "on a plain background"}
POSITION_PHRASE = {p: f"in the {p}" for p in POSITIONS}
PREFIXES = ["a photo of", "this is a photo of", "a picture of", "an image of"]

ATTRIBUTES = {"shape": SHAPES, "colour": COLOUR_NAMES, "size": SIZE_NAMES, "texture": TEXTURES,
              "background": BACKGROUNDS, "position": POSITIONS}

# Shape–colour combinations never shown in pre-training nor in `world_train`: every shape and
# every colour occurs in 1–2 of them, so each is a new *combination* of known words.
HELDOUT_COMBOS = sorted({(s, (3 * s + 1) % 8) for s in range(8)} | {(s, (3 * s + 5) % 8) for s in (0, 2, 4, 6)})
TRAIN_COMBOS = [c for c in itertools.product(range(8), range(8)) if c not in HELDOUT_COMBOS]


# --------------------------------------------------------------------------- random numbers
_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (lowbias32) on int64 tensors; products stay below 2^63."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _key(seed: int, index: torch.Tensor) -> torch.Tensor:
    """The per-image key: a hash of (seed, index)."""
    return _hash32(_hash32(torch.as_tensor(index, dtype=torch.int64) + 0x9E3779B9) ^ _hash32(torch.tensor(seed) * 0x632BE5AB + 1))


def _uniform(key: torch.Tensor, stream: int) -> torch.Tensor:
    """U[0, 1) float32, one per key, independent across streams."""
    return _hash32(key ^ _hash32(torch.tensor(stream * 0x27D4EB2F + 7))).float() / 2.0 ** 32


def _noise(key: torch.Tensor, stream: int, h: int, w: int) -> torch.Tensor:
    """Per-pixel U[0, 1) noise `[n, h, w]` from the image keys."""
    cells = torch.arange(h * w, dtype=torch.int64).view(1, h, w)
    return _hash32(key.view(-1, 1, 1) * 0x3243F6A9 + cells * 0x9E3779B1 + stream * 0x85EBCA77).float() / 2.0 ** 32


def _smooth_noise(key: torch.Tensor, stream: int, cells: int, size: int) -> torch.Tensor:
    """Value noise: a `cells×cells` grid of uniforms upsampled bilinearly to `size`."""
    g = _noise(key, stream, cells, cells)[:, None]
    return F.interpolate(g, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


# --------------------------------------------------------------------------- attributes
def _index_of(values, names) -> list[int]:
    return [v if isinstance(v, int) else names.index(v) for v in values]


def _place(key: torch.Tensor, size: torch.Tensor, position: torch.Tensor):
    """Radius and centre of the object from its size class, quadrant and the image key."""
    lo = torch.tensor([SIZES[s][0] for s in SIZE_NAMES])[size]
    hi = torch.tensor([SIZES[s][1] for s in SIZE_NAMES])[size]
    radius = lo + (hi - lo) * _uniform(key, 6)
    # Quadrant: the centre lies at least 3 px from the midline (so that even a large triangle,
    # whose mass sits below its centre, is visibly in its quadrant) and the object inside the image.
    right = (position % 2).float()
    bottom = (position // 2).float()
    half = IMAGE_SIZE / 2

    def coord(u, far):
        near_lo, near_hi = radius + 0.5, torch.full_like(radius, half - 3)
        far_lo, far_hi = torch.full_like(radius, half + 3), IMAGE_SIZE - 0.5 - radius
        lo_, hi_ = torch.where(far > 0, far_lo, near_lo), torch.where(far > 0, far_hi, near_hi)
        return lo_ + (hi_ - lo_) * u
    return radius, coord(_uniform(key, 7), right), coord(_uniform(key, 8), bottom)


def allowed_combos(constraints: dict | None) -> list[tuple[int, int]]:
    """The (shape, colour) codes that `constraints` (see `sample_attributes`) allow."""
    c = constraints or {}
    shapes = _index_of(c.get("shape", range(len(SHAPES))), SHAPES)
    colours = _index_of(c.get("colour", range(len(COLOUR_NAMES))), COLOUR_NAMES)
    pair = lambda s, k: (_index_of([s], SHAPES)[0], _index_of([k], COLOUR_NAMES)[0])  # noqa: E731
    combos = [pair(s, k) for s, k in c["combos"]] if "combos" in c else list(itertools.product(shapes, colours))
    drop = {pair(s, k) for s, k in c.get("exclude_combos", ())}
    combos = [p for p in combos if p not in drop]
    if not combos:
        raise ValueError("constraints leave no (shape, colour) combination")
    return combos


def sample_attributes(n: int, seed: int, start: int = 0, constraints: dict | None = None) -> dict:
    """Attributes of images `start .. start+n-1` of the world with this seed.

    Returns a dict of tensors `[n]`: integer codes for `shape colour size texture background
    position` (indices into the lists above), and the continuous draws `radius cx cy jitter`
    plus the image `key` the renderer derives its noise from.

    `constraints` (all optional):
      * `shape`, `colour`, ...: allowed values (names or codes) of that attribute;
      * `combos`: allowed (shape, colour) pairs (names or codes); default every pair allowed
        by the `shape`/`colour` constraints; `exclude_combos`: pairs to remove;
      * `balance`: an attribute name; its value cycles through the allowed values with the
        index (`index % k`), so a test set has exactly balanced classes.
    """
    c = dict(constraints or {})
    index = torch.arange(start, start + n, dtype=torch.int64)
    key = _key(seed, index)
    allowed = {a: _index_of(c.get(a, range(len(names))), names) for a, names in ATTRIBUTES.items()}
    combos = allowed_combos(c)
    balance = c.get("balance")

    def pick(options, stream, name):
        opts = torch.tensor(options, dtype=torch.int64)
        if balance == name:
            return opts[index % len(opts)]
        return opts[(_uniform(key, stream) * len(opts)).long().clamp_max(len(opts) - 1)]

    combo = torch.tensor(combos, dtype=torch.int64)[pick(list(range(len(combos))), 1, "combo")]
    shape, colour = combo[:, 0], combo[:, 1]
    if balance in ("shape", "colour"):  # balance one attribute, then draw the other among allowed combos
        which = 0 if balance == "shape" else 1
        vals = sorted({p[which] for p in combos})
        v = torch.tensor(vals)[index % len(vals)]
        partner = torch.empty_like(v)
        for val in vals:
            opts = [p[1 - which] for p in combos if p[which] == val]
            sel = v == val
            u = _uniform(key[sel], 1)
            partner[sel] = torch.tensor(opts)[(u * len(opts)).long().clamp_max(len(opts) - 1)]
        shape, colour = (v, partner) if which == 0 else (partner, v)
    size = pick(allowed["size"], 2, "size")
    texture = pick(allowed["texture"], 3, "texture")
    background = pick(allowed["background"], 4, "background")
    position = pick(allowed["position"], 5, "position")

    radius, cx, cy = _place(key, size, position)
    jitter = torch.stack([_uniform(key, 9 + i) for i in range(3)], 1) * 0.1 - 0.05  # colour ±0.05
    return {"shape": shape, "colour": colour, "size": size, "texture": texture, "background": background,
            "position": position, "radius": radius, "cx": cx, "cy": cy, "jitter": jitter, "key": key,
            "index": index}


def subset(attrs: dict, sel) -> dict:
    return {k: v[sel] for k, v in attrs.items()}


# --------------------------------------------------------------------------- rendering
def _shape_mask(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-mask of one shape. u, v: coordinates in units of the bounding radius, v pointing
    down. Every shape fits in the unit disc and has its centroid at the centre."""
    if shape in (0, 4, 6):
        r = torch.sqrt(u * u + v * v)
    if shape == 0:                                                       # circle
        return r <= 1.0
    au, av = u.abs(), v.abs()
    if shape == 1:                                                       # square
        return torch.maximum(au, av) <= 0.7
    if shape == 2:                                                       # triangle, apex up
        return (v <= 0.5) & (au <= (v + 1) * 0.5774)                    # equilateral, inscribed
    if shape == 3:                                                       # diamond
        return au + av <= 1.0
    if shape == 4:                                                       # five-pointed star
        return r <= 0.55 + 0.42 * torch.cos(5 * (torch.atan2(v, u) + math.pi / 2))
    if shape == 5:                                                       # cross
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == 6:                                                       # ring
        return (r <= 1.0) & (r >= 0.55)
    # heart: (x²+y²−1)³ − x²y³ ≤ 0 with y up; scaled into the disc, its centroid at the centre
    hx, hy = u * 1.3, 0.29 - v * 1.3
    return (hx * hx + hy * hy - 1) ** 3 - hx * hx * hy ** 3 <= 0


def _backgrounds(attrs: dict, s: int) -> torch.Tensor:
    """`[n, 3, s, s]` procedural backgrounds (each kind computed only for its own images)."""
    key_all, bg = attrs["key"], attrs["background"]
    n = key_all.shape[0]
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32),
                            indexing="ij")
    out = torch.empty(n, 3, s, s)

    def rgb(c):
        return torch.tensor(c).view(1, 3, 1, 1)

    for code in range(len(BACKGROUNDS)):
        sel = (bg == code).nonzero().squeeze(1)
        if len(sel) == 0:
            continue
        key = key_all[sel]
        phase = _uniform(key, 24).view(-1, 1, 1) * 2 * math.pi
        if code == 0:    # grass: dark green, vertical blades + speckle
            amp = 0.18 * (_noise(key, 23, 1, s) - 0.5) + 0.12 * (_noise(key, 21, s, s) - 0.5)
            img = rgb((0.20, 0.42, 0.12)) + amp[:, None]
        elif code == 1:  # sky: light blue getting paler downwards, with soft white clouds
            clouds = ((_smooth_noise(key, 22, 5, s) - 0.55).clamp_min(0) * 2.5)[:, None]
            base = rgb((0.40, 0.62, 0.92)) + (yy / s).view(1, 1, s, s) * rgb((0.2, 0.15, 0.06))
            img = base * (1 - clouds) + 0.97 * clouds
        elif code == 2:  # sand: tan with fine grain and faint diagonal ripples
            amp = 0.10 * (_noise(key, 21, s, s) - 0.5) + 0.05 * torch.sin((xx + yy) * 0.9 * 32 / s + phase)
            img = rgb((0.84, 0.74, 0.50)) + amp[:, None]
        elif code == 3:  # bricks: red-brown bricks (8×4 px, rows staggered) with light mortar lines
            k = s / 32
            off = (_uniform(key, 25) * 8).floor().view(-1, 1, 1) * k
            oy = (_uniform(key, 26) * 4).floor().view(-1, 1, 1) * k
            row = torch.div(yy + oy, 4 * k, rounding_mode="floor")
            mortar = (((yy + oy) % (4 * k)) < k) | (((xx + off + 4 * k * (row % 2)) % (8 * k)) < k)
            brick = rgb((0.62, 0.26, 0.16)) + 0.1 * (_smooth_noise(key, 22, 5, s)[:, None] - 0.5)
            img = torch.where(mortar[:, None], rgb((0.78, 0.76, 0.72)), brick)
        elif code == 4:  # water: deep blue with horizontal light waves
            k = 32 / s
            amp = 0.12 * torch.sin(yy * 1.3 * k + 0.6 * torch.sin(xx * 0.5 * k + phase) + phase) \
                + 0.05 * (_noise(key, 21, s, s) - 0.5)
            img = rgb((0.08, 0.28, 0.55)) + amp[:, None]
        else:            # plain: one flat grey level per image
            img = (0.35 + 0.3 * _uniform(key, 27)).view(-1, 1, 1, 1).expand(-1, 3, s, s)
        out[sel] = img
    return out.clamp(0, 1)


def render(attrs: dict, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Images `[n, 3, size, size]` in [0, 1] for the attributes of `sample_attributes`.

    The object is drawn on a 2× supersampled grid and averaged down (anti-aliased edges); the
    background is drawn at the output size. The object's colour fills its centre: the dark
    second tone of the texture (stripes 1.5 px wide, dots on a 4 px grid, 3 px checks) is
    phased so that the centre pixel shows the named colour.
    """
    n = attrs["shape"].shape[0]
    ss = size * SUPERSAMPLE
    scale = size / IMAGE_SIZE
    coords = (torch.arange(ss, dtype=torch.float32) + 0.5) / SUPERSAMPLE  # pixel units of `size`
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    inside = torch.zeros(n, ss, ss)
    second = torch.zeros(n, ss, ss, dtype=torch.bool)
    for code in range(len(SHAPES)):
        sel = (attrs["shape"] == code).nonzero().squeeze(1)
        if len(sel) == 0:
            continue
        cx = (attrs["cx"][sel] * scale).view(-1, 1, 1)
        cy = (attrs["cy"][sel] * scale).view(-1, 1, 1)
        r = (attrs["radius"][sel] * scale).view(-1, 1, 1)
        dx, dy = xx - cx, yy - cy
        inside[sel] = _shape_mask(code, dx / r, dy / r).float()
        tex = attrs["texture"][sel].view(-1, 1, 1)
        p = 1.5 * scale  # stripe width / half the check size, in pixels
        stripes = (torch.floor(dy / p + 0.5) % 2) == 1
        gx = (dx / (4 * scale)).remainder(1.0) - 0.5
        gy = (dy / (4 * scale)).remainder(1.0) - 0.5
        dots = (gx * gx + gy * gy) * 16 <= 1.1 ** 2  # radius 1.1 px on a 4 px grid, none at the centre
        checks = ((torch.floor(dx / (2 * p) + 0.5) + torch.floor(dy / (2 * p) + 0.5)) % 2) == 1
        second[sel] = ((tex == 1) & stripes) | ((tex == 2) & dots) | ((tex == 3) & checks)

    base = torch.tensor([COLOURS[c] for c in COLOUR_NAMES])[attrs["colour"]] + attrs["jitter"]
    base = base.clamp(0, 1).view(-1, 3, 1, 1)
    obj = torch.where(second[:, None], base * 0.3, base)
    a = inside[:, None]
    alpha = F.avg_pool2d(a, SUPERSAMPLE)
    colour = F.avg_pool2d(obj * a, SUPERSAMPLE)
    img = _backgrounds(attrs, size) * (1 - alpha) + colour
    return img.clamp(0, 1)


# --------------------------------------------------------------------------- captions
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(attrs: dict, mention: dict | None = None, prefix: torch.Tensor | None = None) -> list[str]:
    """One caption per image, e.g. "a photo of a small red striped triangle on grass in the top left".

    `mention[attr]`: bool tensor `[n]`, whether the caption names that attribute (default: all).
    An unnamed shape becomes "object". `prefix`: index into PREFIXES per image (default 0).
    """
    n = attrs["shape"].shape[0]
    mention = mention or {}
    out = []
    for i in range(n):
        say = {a: bool(mention[a][i]) if a in mention else True for a in ATTRIBUTES}
        words = []
        if say["size"]:
            words.append(SIZE_NAMES[attrs["size"][i]])
        if say["colour"]:
            words.append(COLOUR_NAMES[attrs["colour"][i]])
        if say["texture"]:
            words.append(TEXTURES[attrs["texture"][i]])
        words.append(SHAPES[attrs["shape"][i]] if say["shape"] else "object")
        head = PREFIXES[int(prefix[i]) if prefix is not None else 0]
        text = f"{head} {_article(words[0])} {' '.join(words)}"
        if say["background"]:
            text += " " + BACKGROUND_PHRASE[BACKGROUNDS[attrs["background"][i]]]
        if say["position"]:
            text += " " + POSITION_PHRASE[POSITIONS[attrs["position"][i]]]
        out.append(text)
    return out


def random_mentions(attrs: dict, p: float | dict = 0.6) -> tuple[dict, torch.Tensor]:
    """Which attributes a training caption names (each with probability p), and its prefix.

    `p`: one probability for every attribute, or a dict attribute -> probability (missing
    attributes: 0.6). Deterministic per image (from its key). Captions with few attributes teach
    the text tower the one-attribute prompts of the test sets; captions with many make the
    contrastive task hard.
    """
    key = attrs["key"]
    prob = p if isinstance(p, dict) else {a: p for a in ATTRIBUTES}
    mention = {a: _uniform(key, 40 + j) < prob.get(a, 0.6) for j, a in enumerate(ATTRIBUTES)}
    prefix = (_uniform(key, 50) * len(PREFIXES)).long().clamp_max(len(PREFIXES) - 1)
    return mention, prefix


# How often each attribute is the one a minimal pair differs in. Shape and position get most of
# the pairs: colour and background are learned from unpaired captions alone, shape and position
# were not (zero-shot ~chance after 600 steps without pairs).
PAIR_WEIGHTS = {"shape": 0.35, "colour": 0.05, "size": 0.1, "texture": 0.1, "background": 0.05, "position": 0.35}


def minimal_pairs(attrs: dict, combos=None) -> tuple[dict, list[str]]:
    """A twin of every image that differs in exactly one attribute (drawn with PAIR_WEIGHTS).

    The twin keeps the key, so its background, noise, colour jitter and the relative place of
    its centre are the base image's: only the changed attribute tells the two apart. A size or
    position change moves the object (radius and centre are recomputed). `combos`: the allowed
    (shape, colour) codes; a shape or colour change stays inside them (no held-out combination
    leaks into pre-training). Returns the twin attributes and the changed attribute per image.
    """
    key = attrs["key"]
    names = list(PAIR_WEIGHTS)
    cum = torch.tensor(list(PAIR_WEIGHTS.values())).cumsum(0)
    which = torch.searchsorted(cum / cum[-1], _uniform(key, 60), right=True).clamp_max(len(names) - 1)
    u = _uniform(key, 61)
    allowed = set(combos) if combos is not None else set(itertools.product(range(len(SHAPES)), range(len(COLOUR_NAMES))))
    twin = {k: v.clone() for k, v in attrs.items()}
    changed = []
    for i in range(len(key)):
        attr = names[int(which[i])]
        s, c = int(attrs["shape"][i]), int(attrs["colour"][i])
        fits = {"shape": lambda v: (v, c) in allowed, "colour": lambda v: (s, v) in allowed}.get(attr, lambda v: True)
        opts = [v for v in range(len(ATTRIBUTES[attr])) if v != int(attrs[attr][i]) and fits(v)]
        if not opts:  # the other attribute has a single allowed partner: vary the texture instead
            attr = "texture"
            opts = [v for v in range(len(TEXTURES)) if v != int(attrs[attr][i])]
        twin[attr][i] = opts[min(int(u[i] * len(opts)), len(opts) - 1)]
        changed.append(attr)
    twin["radius"], twin["cx"], twin["cy"] = _place(key, twin["size"], twin["position"])
    return twin, changed


def stream(batch_size: int, seed: int, start: int = 0, constraints: dict | None = None, p: float | dict = 0.6,
           pair_frac: float = 0.0):
    """Endless (images, captions) batches for pre-training.

    `pair_frac` of every batch is made of minimal pairs (`minimal_pairs`): two images that differ
    in one attribute, with captions that name it and are otherwise word for word the same. In
    the contrastive loss each is the other's hard negative, which forces the image tower to see
    that attribute (random batches almost never contain such a pair). Batch b holds the images
    start + b·m .. start + (b+1)·m - 1 (m = batch_size minus the twins) and the twins of the
    first ones; everything is a function of (seed, index).
    """
    i = start
    c = constraints if constraints is not None else {"exclude_combos": HELDOUT_COMBOS}
    n_twins = int(round(batch_size * pair_frac / 2))
    n_base = batch_size - n_twins
    combos = allowed_combos(c)
    while True:
        a = sample_attributes(n_base, seed, i, c)
        mention, prefix = random_mentions(a, p)
        images, captions = render(a), caption(a, mention, prefix)
        if n_twins:
            base = subset(a, slice(0, n_twins))
            twin, changed = minimal_pairs(base, combos)
            m = {k: v[:n_twins].clone() for k, v in mention.items()}
            for j, attr in enumerate(changed):
                m[attr][j] = True
            captions[:n_twins] = caption(base, m, prefix[:n_twins])
            images = torch.cat([images, render(twin)])
            captions = captions + caption(twin, m, prefix[:n_twins])
        yield images, captions
        i += n_base
