"""The method registry: every row of the paper's table, each declared once, behind one loop.

A method is a class registered with `@register`. The class says everything about it: its
display label, aliases, its own hyper-parameters (`flags`: added to the CLI by params.py, so a
new method never edits params.py), the flags that name its run folder (`run_name`), its mini
benchmark learning rate, what it trains and whether it needs the frozen original tower. Its
defaults live in `configs/<name>.yaml`. It reads its flags once, in `__init__` (parse-time
binding, as open_clip's `create_loss(args)`), and `step(x, y, idx)` returns
`{"loss": ..., <term>: ...}` for one micro-batch.

| name | loss (one line) |
|---|---|
| clip | none: the pretrained model is evaluated |
| ft_clean / ft_adv | ½[CE(L, arange) + CE(Lᵀ, arange)], L = s·norm f(x or x_adv)·T[y]ᵀ |
| tecoa (+ VPT: tecoa_vpt) | CE(s·norm f(x_adv)·Tᵀ, y) |
| pmg_aft | CE(o_adv) + KL_sum(o_ori‖o_adv) + KL_sum(o_cl‖o_adv), raw cosines |
| fare | mean_b ‖φ_θ(x_adv) − φ_θ₀(x)‖², attack maximises the same |
| tga_zsr / comp_tga | CE + Alpha·d(A_adv, A_ori) + Beta·d(A_cl, A_ori), text-guided (⊙ complementary) maps |
| tga_zsr_visual | the same with Grad-CAM maps (detached by default: CE only) |
| tima | margin-CE + image KD (visual) + MHE + text KD (text tower) |

    from methods import get_method, TrainingSetup
    method = get_method("TGA-ZSR")(args, TrainingSetup(model, text_features, frozen, prompts, classnames))
    terms = method.step(x, y, idx)
"""
from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attacks import no_param_grad, pgd
from attention import GradCAM, patch_attention
from methods.losses import (fare_embedding_loss, ft_loss, gradcam_tga_loss, pmg_aft_attack_objective, pmg_aft_loss,
                    tga_zsr_loss, tima_loss)
from engine.prompters import install_prompter

DEFAULT_METHOD_NAME = "tga_zsr"  # what --Method means when no flag, config or resumed run names one
MINI_LR_FACTOR = 100  # the mini benchmark trains a few hundred steps, not 7 820: paper rate × 100


def flag(*names: str, **kwargs) -> tuple:
    """A method's own command-line flag: `flag("--Alpha", type=float, default=0.08, help=...)`."""
    return names, kwargs


@dataclass
class TrainingSetup:
    """What the loop hands a method when it is built."""
    model: object                      # clip_model.ClipModel (trainable image tower inside)
    text_features: torch.Tensor        # [C, D] normalised training prompts, computed once
    frozen: object = None              # frozen ImageTower of the original weights (needs_frozen)
    prompts: list = None               # the training prompts, one per class
    classnames: list = None            # the training class names
    n_train: int = 0                   # training set size (per-image caches)


class TrainingAttack:
    """SPEC §0 training attack on the current trainable model, bound to the flags once.

    PGD on the batch-mean CE of the ×100 logits, or on `objective(x_adv)` (FARE maximises its
    embedding loss, PMG-AFT the CE of its temperature-1 logits); `--train_momentum μ > 0` uses the
    momentum-on-the-sign step (FARE's inner attack). With `--train_on_clean` (`--VPbaseline`),
    or ε = 0 or no steps, it returns the clean images."""

    def __init__(self, args):
        self.eps, self.alpha = args.train_eps / 255.0, args.train_stepsize / 255.0
        self.steps, self.norm = int(args.train_numsteps), args.norm
        self.momentum = args.train_momentum if args.train_momentum > 0 else None
        self.off = args.train_on_clean or self.steps == 0 or self.eps == 0

    def __call__(self, model, x, y, text_features=None, objective=None):
        if self.off:
            return x
        if objective is None:
            def objective(xa):
                return F.cross_entropy(model.logits(xa, text_features).float(), y)
        with no_param_grad(model.clip, model.prompter):
            delta = pgd(objective, x, self.eps, self.alpha, self.steps, norm=self.norm, momentum=self.momentum)
        return x + delta


class Method:
    """Base class. Subclasses set the class attributes and implement `step`."""
    name = ""                 # registry key and configs/<name>.yaml
    label = ""                # the row name in every table and figure (written into results.jsonl)
    aliases: tuple = ()       # other spellings accepted by --Method (the original code's names)
    flags: tuple = ()         # its own hyper-parameters: flag(...) tuples
    run_name: tuple = ()      # (flag, prefix) pairs that name its run folder
    mini_lr: float | None = None   # mini-benchmark rate; None: the configs/<name>.yaml rate × MINI_LR_FACTOR
    trains = "visual"         # "visual", "prompts", "visual+text" or "nothing"
    needs_frozen = False      # a frozen copy of the original visual tower is built for it
    precision: str | None = None   # forces the training precision (FARE: fp32)

    def __init__(self, args, setup: TrainingSetup):
        self.model, self.text, self.frozen = setup.model, setup.text_features, setup.frozen
        self.attack = TrainingAttack(args)

    def trainable_extra(self) -> dict:
        """Trained tensors outside the visual tower and the prompts: {name in model.clip: parameter}."""
        return {}

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
    return sorted(_METHODS)


def method_label(name: str) -> str:
    """The display label of a method name (any spelling); unknown names are returned as given."""
    key = _key(name)
    return _METHODS[_ALIASES[key]].label if key in _ALIASES else name


def method_flags() -> list[tuple[type[Method], tuple]]:
    """Every method flag once, with the first method that declares it (params.py builds the CLI)."""
    seen, out = set(), []
    for cls in _METHODS.values():
        for names, kwargs in cls.flags:
            if names[0] not in seen:
                seen.add(names[0])
                out.append((cls, (names, kwargs)))
    return out


def run_name_parts(cls: type[Method], args) -> list[str]:
    """The parts of a run folder's name that a method's own settings contribute."""
    parts = []
    for dest, prefix in cls.run_name:
        value = getattr(args, dest)
        if isinstance(value, bool):
            parts += [prefix] if value else []
        else:
            parts.append(f"{prefix}{value:g}" if isinstance(value, float) else f"{prefix}{value}")
    return parts


def prepare_model(model, args) -> None:
    """Before training and before evaluating a checkpoint: `--adaptation_method VPT` installs the
    visual prompts (prompters.py), which freezes the visual tower."""
    if args.adaptation_method == "VPT" and model.prompter is None:
        install_prompter(model, args.pixel_prompt, args.prompt_size, args.add_prompt_size)


def build_method(args, model, text_features, prompts=None, classnames=None, n_train: int = 0) -> Method:
    """The method of `args` set up on `model` as training needs it: the frozen copy of the original
    tower first (before any prompts), then the visual prompts, then the method reads its flags."""
    cls = get_method(args.Method or DEFAULT_METHOD_NAME, args.atten_methods)
    frozen = model.frozen_image_tower() if cls.needs_frozen else None
    prepare_model(model, args)
    return cls(args, TrainingSetup(model, text_features, frozen, prompts, classnames, n_train))


# --- the methods --------------------------------------------------------------------------------------
@register
class Clip(Method):
    """CLIP (SPEC §4): the pretrained model, evaluated as is."""
    name, label, aliases, trains, mini_lr = "clip", "CLIP", ("CLIP",), "nothing", 0.0

    def step(self, x, y, idx=None):
        raise RuntimeError("CLIP is evaluated as pretrained: run it with --epochs 0")


@register
class FTClean(Method):
    """FT-Clean (SPEC §4): in-batch contrastive CE on clean images."""
    name, label, aliases = "ft_clean", "FT-Clean", ("FT-Clean", "FT_Clean", "FTClean")

    def step(self, x, y, idx=None):
        return ft_loss(self.model, x, y, self.text)


@register
class FTAdv(Method):
    """FT-Adv (SPEC §4): in-batch contrastive CE on PGD images (the §0 CE attack)."""
    name, label, aliases = "ft_adv", "FT-Adv.", ("FT-Adv", "FT-Standard", "FT_Standard", "FT-Adv.", "FTAdv")

    def step(self, x, y, idx=None):
        return ft_loss(self.model, self.attack(self.model, x, y, self.text), y, self.text)


@register
class TeCoA(Method):
    """TeCoA (SPEC §4): CE over all classes on PGD images = TGA-ZSR with Alpha = Beta = 0."""
    name, label, aliases = "tecoa", "TeCoA", ("TeCoA",)

    def step(self, x, y, idx=None):
        x_adv = self.attack(self.model, x, y, self.text)
        return tga_zsr_loss(self.model, None, x, x_adv, y, self.text, 0.0, 0.0)


@register
class TeCoAPrompting(TeCoA):
    """TeCoA w/ prompting (SPEC §4): TeCoA's loss, CLIP frozen, only the visual prompts train. The
    prompts live inside the image tower, so the attack and the evaluation see them too."""
    name, label = "tecoa_vpt", "TeCoA w/ Prompting"
    aliases = ("TeCoA w/ Prompting", "TeCoA-VPT", "TeCoA_prompt", "VPT")
    trains = "prompts"
    # With 32 prompt tokens, 4, 0.4 and 0.04 all ended below 40 % clean in the mini world; 8 tokens
    # at 0.4: 60 % (the paper's 40 × 100 would diverge).
    mini_lr = 0.4

    def __init__(self, args, setup):
        if args.adaptation_method != "VPT":
            raise SystemExit("tecoa_vpt trains visual prompts: it needs --adaptation_method VPT "
                             "(configs/tecoa_vpt.yaml sets it)")
        super().__init__(args, setup)


@register
class PMGAFT(Method):
    """PMG-AFT (SPEC §4): CE + KL to the frozen model on x_adv + KL to the trained model on x."""
    name, label, aliases, needs_frozen = "pmg_aft", "PMG-AFT", ("PMG-AFT", "PMG", "PMGAFT"), True

    def step(self, x, y, idx=None):
        # the attack ascends the CE of the same temperature-1 logits as the loss [faithful]
        x_adv = self.attack(self.model, x, y, objective=pmg_aft_attack_objective(self.model, y, self.text))
        return pmg_aft_loss(self.model, self.frozen, x, x_adv, y, self.text)


@register
class FARE(Method):
    """FARE (SPEC §4): unsupervised embedding loss; the inner attack maximises the same loss."""
    name, label, aliases, needs_frozen, precision = "fare", "FARE", ("FARE",), True, "fp32"

    def step(self, x, y, idx=None):
        model = self.model
        with torch.no_grad():
            reference = self.frozen(x)[:, 0].float()

        def embedding_loss(xa):
            return fare_embedding_loss(model.image_tokens(xa)[:, 0], reference)

        loss = embedding_loss(self.attack(model, x, y, objective=embedding_loss))
        return {"loss": loss, "embedding_l2sq": loss}


class FrozenMapCache:
    """Frozen clean attention maps per training image (SPEC §1 A_ori never changes: frozen
    weights, no augmentation). `[N, 1, g, g]` fp32 + a filled mask; 100 000 × 49 floats = 20 MB."""

    def __init__(self, n: int, grid: int, device):
        self.maps = torch.zeros(n, 1, grid, grid, device=device)
        self.filled = torch.zeros(n, dtype=torch.bool, device=device)

    def get(self, idx):
        idx = idx.to(self.filled.device)
        if not bool(self.filled[idx].all()):
            return None
        return self.maps[idx]

    def put(self, idx, maps):
        idx = idx.to(self.filled.device)
        self.maps[idx] = maps.detach().float()
        self.filled[idx] = True


@register
class TGAZSR(Method):
    """TGA-ZSR (SPEC §1): CE on PGD images + Alpha·L_AR + Beta·L_AMC on text-guided attention maps."""
    name, label, aliases, needs_frozen = "tga_zsr", "TGA-ZSR", ("TGA-ZSR", "TGA_ZSR", "tgazsr"), True
    flags = (
        flag("--Alpha", type=float, default=0.08, help="weight of the Attention Refinement loss (Eq. 6)"),
        flag("--Beta", type=float, default=0.05, help="weight of the Attention-based Model Constraint (Eq. 7)"),
        flag("--Distance_metric", default="l2", choices=["l2", "cos", "l1"], help="distance between maps"),
        flag("--atten_methods", default="text", choices=["text", "visual"],
             help="text-guided maps, or Grad-CAM ('visual', the Vision-based row)"),
        flag("--cache_frozen_maps", action=argparse.BooleanOptionalAction, default=False,
             help="compute each training image's frozen clean attention map once and reuse it (tga_zsr)"),
    )
    run_name = (("Alpha", "a"), ("Beta", "b"), ("Distance_metric", ""))

    def __init__(self, args, setup):
        super().__init__(args, setup)
        self.alpha, self.beta, self.distance = args.Alpha, args.Beta, args.Distance_metric
        self.cache = (FrozenMapCache(setup.n_train, self.model.grid_size, self.text.device)
                      if args.cache_frozen_maps else None)

    def frozen_maps(self, x, y, idx):
        """Cached frozen clean maps for this batch, or None (then the loss computes them)."""
        if self.cache is None or idx is None:
            return None
        maps = self.cache.get(idx)
        if maps is None:
            with torch.no_grad():
                maps = patch_attention(self.frozen(x), self.text[y])
            self.cache.put(idx, maps)
        return maps

    def step(self, x, y, idx=None):
        x_adv = self.attack(self.model, x, y, self.text)
        return tga_zsr_loss(self.model, self.frozen, x, x_adv, y, self.text, self.alpha, self.beta, self.distance,
                            frozen_maps=self.frozen_maps(x, y, idx))


@register
class TGAZSRVisual(TGAZSR):
    """The "Vision-based" row (SPEC §2): TGA-ZSR's losses on Grad-CAM maps."""
    name, label, aliases = "tga_zsr_visual", "Vision-based", ("Vision-based", "TGA-ZSR-visual", "visual")
    flags = TGAZSR.flags + (
        flag("--differentiable_cam", action="store_true",
             help="visual variant: build the Grad-CAM map with create_graph so L_AR/L_AMC train "
                  "(the paper's intent; a deviation from the original, whose map carries no gradient)"),)
    run_name = TGAZSR.run_name + (("differentiable_cam", "dcam"),)

    def __init__(self, args, setup):
        super().__init__(args, setup)
        self.differentiable = args.differentiable_cam
        # One hook per tower for the whole run (the original leaks a hook per call).
        self.cams = (GradCAM(self.model.image_tower), GradCAM(self.frozen))

    def step(self, x, y, idx=None):
        x_adv = self.attack(self.model, x, y, self.text)
        cam_model, cam_frozen = self.cams
        return gradcam_tga_loss(self.model, self.frozen, cam_model, cam_frozen, x, x_adv, y, self.text,
                                self.alpha, self.beta, self.distance, differentiable=self.differentiable)


NEGATIVE_TEMPLATE = "This is not a photo of a {}"


def negative_prompts(prompts: list, classnames: list | None = None) -> list:
    """"This is a photo of a {}" -> "This is not a photo of a {}" (SPEC §3), class by class."""
    out = []
    for i, p in enumerate(prompts):
        if "This is a photo of" in p:
            out.append(p.replace("This is a photo of", "This is not a photo of", 1))
        elif classnames:
            out.append(NEGATIVE_TEMPLATE.format(classnames[i]))
        else:
            raise ValueError(f"cannot negate the prompt '{p}': pass the class names")
    return out


@register
class CompTGA(TGAZSR):
    """Comp-TGA (SPEC §3): TGA-ZSR with the complementary map A(T[y]) ⊙ (1 − A(T_neg[y]))."""
    name, label, aliases = "comp_tga", "Comp-TGA", ("Comp-TGA", "Comp_TGA", "CompTGA")

    def __init__(self, args, setup):
        super().__init__(args, setup)
        with torch.no_grad():  # the text tower is frozen: the negative prompts are encoded once
            self.negative_text = self.model.encode_text(negative_prompts(setup.prompts, setup.classnames))

    def step(self, x, y, idx=None):
        x_adv = self.attack(self.model, x, y, self.text)
        return tga_zsr_loss(self.model, self.frozen, x, x_adv, y, self.text, self.alpha, self.beta, self.distance,
                            negative_text_features=self.negative_text)


TIMA_TEXT_PARAMS = ("all", "last_block", "projection")


def tima_text_parameters(model, which: str) -> dict:
    """The text-tower parameters TIMA tunes (names relative to model.clip)."""
    named = {n: p for n, p in model.clip.named_parameters() if not n.startswith("visual.") and n != "logit_scale"}
    if which == "all":
        return named
    keep = ("text_projection", "ln_final.")
    if which == "last_block":
        keep += (f"transformer.resblocks.{len(model.clip.transformer.resblocks) - 1}.",)
    return {n: p for n, p in named.items() if n.startswith(keep)}


@register
class TIMA(Method):
    """TIMA (SPEC §4; no public code: every open choice is a flag, see configs/tima.yaml)."""
    name, label, aliases, needs_frozen, trains = "tima", "TIMA", ("TIMA",), True, "visual+text"
    flags = (
        flag("--tima_mhe_weight", type=float, default=1.0, help="weight of the text MHE term"),
        flag("--tima_text_kd_weight", type=float, default=1.0,
             help="weight of the text distillation (tuned vs original text, on pre-trained image embeddings)"),
        flag("--tima_image_kd_weight", type=float, default=1.0,
             help="weight of the image distillation to the pre-trained model's predictions"),
        flag("--tima_margin", type=float, default=0.02,
             help="largest adaptive margin, in cosine units (×logit scale on the logits)"),
        flag("--tima_text_params", default="last_block", choices=list(TIMA_TEXT_PARAMS),
             help="text-tower parameters TIMA tunes"),
    )
    run_name = (("tima_margin", "m"), ("tima_text_params", ""))

    def __init__(self, args, setup):
        super().__init__(args, setup)
        self.weights = {"mhe": args.tima_mhe_weight, "text_kd": args.tima_text_kd_weight,
                        "image_kd": args.tima_image_kd_weight, "margin": args.tima_margin}
        # TIMA trains part of the text tower: the one method where T is not constant.
        self.text_params = tima_text_parameters(self.model, args.tima_text_params)
        self.tokens = self.model.tokenizer(setup.prompts).to(self.text.device)  # token ids, once per run
        self.text_orig = self.text.detach().clone()                            # the pre-trained T₀

    def trainable_extra(self) -> dict:
        return self.text_params

    def step(self, x, y, idx=None):
        text_now = F.normalize(self.model.clip.encode_text(self.tokens, normalize=False).float(), dim=-1)
        x_adv = self.attack(self.model, x, y, text_now.detach())
        return tima_loss(self.model, self.frozen, x, x_adv, y, text_now, self.text_orig, self.weights)
