"""The method registry: every row of the paper's comparison table, one file each, behind one loop.

A method is one file in this folder: its loss, and a class registered with `@register` that says
everything else about it: its display label, aliases, its own hyper-parameters (`flags`, added to
the command line of tga_zsr.py with their defaults), the flags that name its run folder
(`run_name`), its mini-world learning rate, what it trains and whether it needs the frozen
original tower. The paper row's training protocol (learning rate, attack, schedule) is
`configs/<name>.yaml`. Every module of this package is imported with it, so a new file is found
without editing anything (docs/adding_a_method.md walks through one).

The method is built once per run with its flags' values (`Method(setup, **options)`) and
`step(x, y, idx)` returns `{"loss": ..., <term>: ...}` for one micro-batch. Before the micro-batches
of an optimiser step the loop calls `begin_batch(chunks, split)`: `split` (a `BatchSplit`) says how
the global batch is split over processes and micro-batches, so that a loss that couples the samples
of a batch is that of the global batch however it is split (docs/gpus.md: PMG-AFT's KL sums, FT's
in-batch contrastive loss, the Vision-based row's Grad-CAM targets).

| name | loss (one line) |
|---|---|
| clip | none: the pretrained model is evaluated |
| ft_clean / ft_adv | ½[CE(L, arange) + CE(Lᵀ, arange)], L = s·norm f(x or x_adv)·T[y]ᵀ |
| tecoa (+ prompts: tecoa_vpt) | CE(s·norm f(x_adv)·Tᵀ, y) |
| pmg_aft | CE(o_adv) + KL_sum(o_ori‖o_adv) + KL_sum(o_cl‖o_adv), raw cosines |
| fare | mean_b ‖φ_θ(x_adv) − φ_θ₀(x)‖², the attack maximises the same |
| tga_zsr / comp_tga | CE + Alpha·d(A_adv, A_ori) + Beta·d(A_cl, A_ori) (paper Eq. 6–8), (complementary) maps |
| tga_zsr_visual | the same with Grad-CAM maps (detached by default: CE only) |
| tima | margin-CE + image KD (visual tower) + MHE + text KD (text tower) |

    from methods import get_method
    method = get_method("TGA-ZSR")(setup, **options)     # engine.train.build_method does this
    terms = method.step(x, y, idx)
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from attacks import PGDSettings, no_param_grad, pgd

DEFAULT_METHOD_NAME = "tga_zsr"  # what --Method means when no flag, config or resumed run names one
MINI_LR_FACTOR = 100  # the mini world trains a few hundred steps, not 7 820: the paper's rate × 100


def flag(*names: str, **kwargs) -> tuple:
    """A method's own command-line flag: `flag("--label_smoothing", type=float, default=0.1, help=...)`."""
    return names, kwargs


class TrainingAttack:
    """The training attack on the current trainable model, bound to its settings once.

    PGD on the batch-mean CE of the ×100 logits, or on `objective(x_adv)` (FARE maximises its
    embedding loss, PMG-AFT the CE of its temperature-1 logits); a momentum > 0 uses the
    momentum-on-the-sign step (FARE's inner attack). Off (the clean images are returned) with
    `--train_on_clean`, ε = 0 or no steps."""

    def __init__(self, settings: PGDSettings, on_clean: bool = False):
        self.settings = settings
        self.off = on_clean or settings.steps == 0 or settings.eps == 0

    def __call__(self, model, x, y, text_features=None, objective=None):
        if self.off:
            return x
        if objective is None:
            def objective(xa):
                return F.cross_entropy(model.logits(xa, text_features).float(), y)
        s = self.settings
        with no_param_grad(model.clip, model.prompter):
            delta = pgd(objective, x, s.eps, s.step_size, s.steps, norm=s.norm, momentum=s.momentum or None)
        return x + delta


@dataclass
class TrainingSetup:
    """What the loop hands a method when it is built."""
    model: object                      # engine.model.ClipModel (trainable image tower inside)
    text_features: torch.Tensor        # [C, D] normalised training prompts, computed once
    attack: TrainingAttack             # the training attack, bound to its flags
    frozen: object = None              # frozen ImageTower of the original weights (needs_frozen)
    prompts: list = None               # the training prompts, one per class
    classnames: list = None            # the training class names
    n_train: int = 0                   # training set size (per-image caches)


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass(frozen=True)
class BatchSplit:
    """How the global batch of one optimiser step is split: `world` processes, this one `rank`, each
    with `micro_batches` micro-batches of its `rank_batch` images (the loop weights each micro-batch's
    loss by its share of the rank's batch and DDP averages the ranks). `gather(t)`: `t` of every rank,
    concatenated in rank order (`t` itself in one process; no gradient flows through it)."""
    global_batch: int
    rank_batch: int
    world: int = 1
    rank: int = 0
    micro_batches: int = 1
    gather: Callable = _same

    @property
    def whole(self) -> bool:
        """One process, one micro-batch: the batch is computed in one piece."""
        return self.world * self.micro_batches == 1

    def sum_scale(self, micro_batch: int) -> float:
        """The factor that turns a sum over one micro-batch into its share of the sum over the global
        batch, after the loop's weighting and DDP's mean: global batch / micro-batch (1 when whole)."""
        return 1.0 if self.whole else self.global_batch / micro_batch


def whole_batch(n: int) -> BatchSplit:
    """The split of a batch of `n` computed in one piece (a method stepped outside the loop)."""
    return BatchSplit(global_batch=n, rank_batch=n)


class Method:
    """Base class. Subclasses set the class attributes and implement `step`; `__init__` takes the
    method's own flags by name (`def __init__(self, setup, Alpha, Beta, ...)`)."""
    name = ""                 # registry key and configs/<name>.yaml
    label = ""                # the row name in every table and figure (written into results.jsonl)
    aliases: tuple = ()       # other spellings accepted by --Method (the original code's names)
    order = 100               # where its row stands in tables and `bash main.sh all` (the paper's order)
    flags: tuple = ()         # its own hyper-parameters: flag(...) tuples
    run_name: tuple = ()      # (flag, prefix) pairs that name its run folder
    mini_lr: float | None = None   # mini-world rate; None: the configs/<name>.yaml rate × MINI_LR_FACTOR
    trains = "visual"         # "visual", "prompts", "visual+text" or "nothing"
    needs_frozen = False      # a frozen copy of the original visual tower is built for it
    precision: str | None = None   # forces the training precision (FARE: fp32)

    def __init__(self, setup: TrainingSetup):
        self.model, self.text, self.frozen = setup.model, setup.text_features, setup.frozen
        self.attack = setup.attack
        self.split: BatchSplit | None = None   # this optimiser step's, set by begin_batch

    @classmethod
    def option_names(cls) -> list[str]:
        """The destinations of its own flags: the keyword arguments of its `__init__`."""
        return [kwargs.get("dest", names[0].lstrip("-")) for names, kwargs in cls.flags]

    def trainable_extra(self) -> dict:
        """Trained tensors outside the visual tower and the prompts: {name in model.clip: parameter}."""
        return {}

    def begin_batch(self, chunks: list, split: BatchSplit) -> None:
        """Called once per optimiser step, under the step's autocast, before `step` runs on each of this
        process's micro-batches `chunks` = [(x, y, idx), ...] in order. A method whose loss is a
        per-sample mean needs nothing here; one whose loss couples the samples of a batch reads
        `split` (and may prepare the global batch's terms)."""
        self.split = split

    def batch_split(self, n: int) -> BatchSplit:
        """This step's split, or that of a whole batch of `n` when the method is stepped on its own."""
        return self.split if self.split is not None else whole_batch(n)

    def step(self, x, y, idx=None) -> dict:
        raise NotImplementedError


_METHODS: dict[str, type[Method]] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "_").replace(" ", "_").replace(".", "")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: adds the method under its name and aliases."""
    _METHODS[cls.name] = cls
    for a in (cls.name, *cls.aliases):
        _ALIASES[_key(a)] = cls.name
    return cls


def canonical_method(name: str) -> str:
    key = _key(name)
    if key not in _ALIASES:
        close = difflib.get_close_matches(key, list(_ALIASES), n=1)
        hint = f" Did you mean {_ALIASES[close[0]]}?" if close else ""
        raise SystemExit(f"unknown --Method '{name}'.{hint} Known: {', '.join(sorted(_METHODS))} "
                         f"(original names such as TGA-ZSR, TeCoA, FT-Standard are accepted)")
    return _ALIASES[key]


def get_method(name: str, atten_methods: str = "text") -> type[Method]:
    """The registered method class; `--atten_methods visual` turns TGA-ZSR into its Grad-CAM row."""
    canon = canonical_method(name)
    if canon == "tga_zsr" and atten_methods == "visual":
        canon = "tga_zsr_visual"
    return _METHODS[canon]


def available_methods() -> list[str]:
    """Every registered name, in the order of the paper's table (then new methods by name)."""
    return [c.name for c in sorted(_METHODS.values(), key=lambda c: (c.order, c.name))]


def method_label(name: str) -> str:
    """The display label of a method name (any spelling); unknown names are returned as given."""
    key = _key(name)
    return _METHODS[_ALIASES[key]].label if key in _ALIASES else name


def method_flags() -> list[tuple[type[Method], tuple]]:
    """Every method flag once, with the method that declares it (a subclass's inherited flags stay its
    parent's: the Vision-based row's Alpha is TGA-ZSR's), in table order."""
    seen, out = set(), []
    for cls in (_METHODS[n] for n in available_methods()):
        inherited = {f[0][0] for base in cls.__mro__[1:] for f in getattr(base, "flags", ())}
        for names, kwargs in cls.flags:
            if names[0] not in seen and names[0] not in inherited:
                seen.add(names[0])
                out.append((cls, (names, kwargs)))
    return sorted(out, key=lambda item: (item[0].order, item[0].name))


def run_name_parts(cls: type[Method], values: dict) -> list[str]:
    """The parts of a run folder's name that a method's own settings contribute."""
    parts = []
    for dest, prefix in cls.run_name:
        value = values[dest]
        if isinstance(value, bool):
            parts += [prefix] if value else []
        else:
            parts.append(f"{prefix}{value:g}" if isinstance(value, float) else f"{prefix}{value}")
    return parts


# Each module of the package registers its methods when imported.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
