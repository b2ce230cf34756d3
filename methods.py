"""The method registry: one training step per method, every one behind the same loop.

A method is a function `step(ctx, x, y, idx) -> {"loss": ..., <term>: ...}` registered with
`@register(name, *aliases, needs_frozen=..., trains=..., setup=..., precision=...)`; its defaults
live in `configs/<name>.yaml`. Adding a baseline touches no loop code. `prepare_model` runs before
training and before an evaluation: it installs visual prompts (`--adaptation_method VPT`) and calls
the method's own `setup(model, args)` (e.g. TIMA unfreezes part of the text tower).

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

`ctx` (`StepContext`) carries the model, the frozen reference tower (if the method needs
one), the training text features (computed once), the parsed args and the frozen-map cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from attacks import no_param_grad, pgd
from losses import (fare_embedding_loss, ft_loss, gradcam_tga_loss, pmg_aft_loss, tga_zsr_loss,
                    tima_loss, pmg_aft_attack_objective)


@dataclass
class Method:
    name: str
    step: Callable
    needs_frozen: bool = False
    aliases: tuple = ()
    trains: bool = True
    setup: Callable | None = None      # setup(model, args): per-method model preparation
    precision: str | None = None       # forces the training precision (FARE: fp32)
    trains_visual: bool = True         # False: the visual tower stays frozen


_METHODS: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "_").replace(" ", "_").replace(".", "")


def register(name: str, *aliases: str, needs_frozen: bool = False, trains: bool = True,
             setup: Callable | None = None, precision: str | None = None, trains_visual: bool = True):
    def wrap(fn):
        _METHODS[name] = Method(name, fn, needs_frozen, aliases, trains, setup, precision, trains_visual)
        for a in (name, *aliases):
            _ALIASES[_key(a)] = name
        return fn
    return wrap


def canonical_method(name: str) -> str:
    key = _key(name)
    if key not in _ALIASES:
        raise SystemExit(f"unknown --Method '{name}'. Known: {', '.join(sorted(_METHODS))} "
                         f"(original names such as TGA-ZSR, TeCoA, FT-Standard are accepted)")
    return _ALIASES[key]


def get_method(name: str, atten_methods: str = "text") -> Method:
    """The registered method; `--atten_methods visual` turns TGA-ZSR into its Grad-CAM row."""
    canon = canonical_method(name)
    if canon == "tga_zsr" and atten_methods == "visual":
        canon = "tga_zsr_visual"
    return _METHODS[canon]


def available_methods() -> list[str]:
    return sorted(_METHODS)


@dataclass
class StepContext:
    model: object                      # clip_model.ClipModel (trainable image tower inside)
    text_features: torch.Tensor        # [C, D] normalised training prompts, computed once
    args: object                       # parsed flags (eps etc. already in pixel units: see eps())
    frozen: object = None              # frozen ImageTower of the original weights, or None
    map_cache: object = None           # FrozenMapCache or None
    prompts: list = None               # the training prompts (TIMA re-encodes them every step)
    classnames: list = None            # the training class names (Comp-TGA's negative prompts)
    extra: dict = field(default_factory=dict)

    def eps(self):
        a = self.args
        return a.train_eps / 255.0, a.train_stepsize / 255.0, int(a.train_numsteps)


def train_pgd(ctx: StepContext, x, y, objective=None, text_features=None):
    """SPEC §0 training attack on the current trainable model: PGD on the batch-mean CE.

    `objective(x_adv)` replaces the CE (FARE maximises its embedding loss); `text_features`
    replaces ctx.text_features (TIMA attacks with its current, detached text features).
    `--train_momentum μ > 0` uses the momentum-on-the-sign step (FARE's inner attack).
    """
    eps, alpha, steps = ctx.eps()
    if steps == 0 or eps == 0:
        return x
    model = ctx.model
    T = ctx.text_features if text_features is None else text_features

    if objective is None:
        def objective(xa):
            return F.cross_entropy(model.logits(xa, T).float(), y)

    momentum = float(getattr(ctx.args, "train_momentum", 0.0) or 0.0)
    with no_param_grad(model.clip, model.prompter):
        delta = pgd(objective, x, eps, alpha, steps, norm=getattr(ctx.args, "norm", "l_inf"),
                    momentum=momentum if momentum > 0 else None)
    return x + delta


def prepare_model(model, args, method: Method) -> None:
    """Per-run model preparation, before training and before evaluating a checkpoint.

    `--adaptation_method VPT` installs the visual prompts (prompters.py) and freezes the visual
    tower; then the method's own `setup(model, args)` runs.
    """
    model.visual_trainable = method.trains_visual
    if getattr(args, "adaptation_method", "FT") == "VPT" and model.prompter is None:
        from prompters import install_prompter
        install_prompter(model, args.method, args.prompt_size, args.add_prompt_size)
        model.visual_trainable = False
    if method.setup is not None:
        method.setup(model, args)


def _frozen_maps(ctx, x, y, idx):
    """Cached frozen clean maps for this batch, or None (then the loss computes them)."""
    cache = ctx.map_cache
    if cache is None or idx is None:
        return None
    maps = cache.get(idx)
    if maps is None:
        from attention import attention_grid
        with torch.no_grad():
            maps = attention_grid(ctx.frozen(x), ctx.text_features[y])
        cache.put(idx, maps)
    return maps


@register("tga_zsr", "TGA-ZSR", "TGA_ZSR", "tgazsr", needs_frozen=True)
def tga_zsr_step(ctx: StepContext, x, y, idx=None):
    a = ctx.args
    x_adv = x if a.VPbaseline else train_pgd(ctx, x, y)
    return tga_zsr_loss(ctx.model, ctx.frozen, x, x_adv, y, ctx.text_features, a.Alpha, a.Beta,
                        a.Distance_metric, frozen_maps=_frozen_maps(ctx, x, y, idx))


@register("tecoa", "TeCoA")
def tecoa_step(ctx: StepContext, x, y, idx=None):
    """TeCoA (SPEC §4): CE over all classes on PGD images = TGA-ZSR with Alpha = Beta = 0."""
    x_adv = x if ctx.args.VPbaseline else train_pgd(ctx, x, y)
    return tga_zsr_loss(ctx.model, None, x, x_adv, y, ctx.text_features, 0.0, 0.0)


def _require_vpt(model, args):
    if getattr(args, "adaptation_method", "FT") != "VPT":
        raise SystemExit("tecoa_vpt trains visual prompts: it needs --adaptation_method VPT "
                         "(configs/tecoa_vpt.yaml sets it)")


@register("tecoa_vpt", "TeCoA-VPT", "TeCoA_prompt", "VPT", setup=_require_vpt, trains_visual=False)
def tecoa_vpt_step(ctx: StepContext, x, y, idx=None):
    """TeCoA w/ prompting (SPEC §4): TeCoA's loss, CLIP frozen, only the prompts train. The
    prompts live inside the image tower, so the attack and the evaluation see them too."""
    return tecoa_step(ctx, x, y, idx)


@register("ft_clean", "FT-Clean", "FT_Clean", "FTClean")
def ft_clean_step(ctx: StepContext, x, y, idx=None):
    """FT-Clean (SPEC §4): in-batch contrastive CE on clean images."""
    return ft_loss(ctx.model, x, y, ctx.text_features)


@register("ft_adv", "FT-Adv", "FT-Standard", "FT_Standard", "FT-Adv.", "FTAdv")
def ft_adv_step(ctx: StepContext, x, y, idx=None):
    """FT-Adv (SPEC §4): in-batch contrastive CE on PGD images (the §0 CE attack)."""
    x_adv = x if ctx.args.VPbaseline else train_pgd(ctx, x, y)
    return ft_loss(ctx.model, x_adv, y, ctx.text_features)


@register("pmg_aft", "PMG-AFT", "PMG", "PMGAFT", needs_frozen=True)
def pmg_aft_step(ctx: StepContext, x, y, idx=None):
    """PMG-AFT (SPEC §4): CE + KL to the frozen model on x_adv + KL to the trained model on x."""
    attack = pmg_aft_attack_objective(ctx.model, y, ctx.text_features)  # temperature 1, as the loss
    x_adv = x if ctx.args.VPbaseline else train_pgd(ctx, x, y, objective=attack)
    return pmg_aft_loss(ctx.model, ctx.frozen, x, x_adv, y, ctx.text_features)


@register("fare", "FARE", needs_frozen=True, precision="fp32")
def fare_step(ctx: StepContext, x, y, idx=None):
    """FARE (SPEC §4): unsupervised embedding loss; the inner attack maximises the same loss."""
    model = ctx.model
    with torch.no_grad():
        reference = ctx.frozen(x)[:, 0].float()

    def embedding_loss(xa):
        return fare_embedding_loss(model.image_tokens(xa)[:, 0], reference)

    x_adv = x if ctx.args.VPbaseline else train_pgd(ctx, x, y, objective=embedding_loss)
    loss = embedding_loss(x_adv)
    return {"loss": loss, "embedding_l2sq": loss}


def _gradcams(ctx: StepContext):
    """The two Grad-CAM hooks (trained and frozen tower), registered once per run."""
    cams = ctx.extra.get("gradcam")
    if cams is None:
        from gradcam import GradCAM
        cams = (GradCAM(ctx.model.image_tower), GradCAM(ctx.frozen))
        ctx.extra["gradcam"] = cams
    return cams


@register("tga_zsr_visual", "Vision-based", "TGA-ZSR-visual", "visual", needs_frozen=True)
def tga_zsr_visual_step(ctx: StepContext, x, y, idx=None):
    """The "Vision-based" row (SPEC §2): TGA-ZSR's losses on Grad-CAM maps."""
    a = ctx.args
    x_adv = x if a.VPbaseline else train_pgd(ctx, x, y)
    cam_model, cam_frozen = _gradcams(ctx)
    return gradcam_tga_loss(ctx.model, ctx.frozen, cam_model, cam_frozen, x, x_adv, y, ctx.text_features,
                            a.Alpha, a.Beta, a.Distance_metric, differentiable=bool(a.differentiable_cam))


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
            raise RuntimeError(f"cannot negate the prompt '{p}': pass the class names")
    return out


def negative_text_features(ctx: StepContext):
    """Comp-TGA's negative prompts, encoded once per run (the text tower is frozen)."""
    neg = ctx.extra.get("negative_text")
    if neg is None:
        if not ctx.prompts:
            raise RuntimeError("Comp-TGA needs the training prompts (StepContext.prompts)")
        with torch.no_grad():
            neg = ctx.model.encode_text(negative_prompts(ctx.prompts, ctx.classnames))
        ctx.extra["negative_text"] = neg
    return neg


@register("comp_tga", "Comp-TGA", "Comp_TGA", "CompTGA", needs_frozen=True)
def comp_tga_step(ctx: StepContext, x, y, idx=None):
    """Comp-TGA (SPEC §3): TGA-ZSR with the complementary map A(T[y]) ⊙ (1 − A(T_neg[y]))."""
    a = ctx.args
    x_adv = x if a.VPbaseline else train_pgd(ctx, x, y)
    return tga_zsr_loss(ctx.model, ctx.frozen, x, x_adv, y, ctx.text_features, a.Alpha, a.Beta,
                        a.Distance_metric, negative_text_features=negative_text_features(ctx))


TIMA_TEXT_PARAMS = ("all", "last_block", "projection")


def tima_text_parameters(model, which: str) -> dict:
    """The text-tower parameters TIMA tunes (names relative to model.clip)."""
    if which not in TIMA_TEXT_PARAMS:
        raise SystemExit(f"--tima_text_params {which}: choose from {TIMA_TEXT_PARAMS}")
    named = {n: p for n, p in model.clip.named_parameters() if not n.startswith("visual.") and n != "logit_scale"}
    if which == "all":
        return named
    keep = ("text_projection", "ln_final.")
    if which == "last_block":
        last = len(model.clip.transformer.resblocks) - 1
        keep += (f"transformer.resblocks.{last}.",)
    return {n: p for n, p in named.items() if n.startswith(keep)}


def _tima_setup(model, args):
    """TIMA trains part of the text tower too: the one method where T is not constant."""
    params = tima_text_parameters(model, args.tima_text_params)
    for p in params.values():
        p.requires_grad_(True)
    model.extra_trainable = params


def _tima_text(ctx: StepContext):
    """The current class text features, with grad (token ids cached once per run)."""
    model = ctx.model
    tokens = ctx.extra.get("tima_tokens")
    if tokens is None:
        if not ctx.prompts:
            raise RuntimeError("TIMA needs the training prompts (StepContext.prompts)")
        tokens = model.tokenizer(ctx.prompts).to(model.clip.logit_scale.device)
        ctx.extra["tima_tokens"] = tokens
        ctx.extra["tima_text_orig"] = ctx.text_features.detach().clone()  # the pre-trained T₀
    return F.normalize(model.clip.encode_text(tokens, normalize=False).float(), dim=-1), ctx.extra["tima_text_orig"]


@register("tima", "TIMA", needs_frozen=True, setup=_tima_setup)
def tima_step(ctx: StepContext, x, y, idx=None):
    """TIMA (SPEC §4; no public code: every open choice is a config value, see configs/tima.yaml)."""
    a = ctx.args
    text_now, text_orig = _tima_text(ctx)
    t_attack = text_now.detach()
    x_adv = x if a.VPbaseline else train_pgd(ctx, x, y, text_features=t_attack)
    weights = {"mhe": a.tima_mhe_weight, "text_kd": a.tima_text_kd_weight, "image_kd": a.tima_image_kd_weight,
               "margin": a.tima_margin}
    return tima_loss(ctx.model, ctx.frozen, x, x_adv, y, text_now, text_orig, weights)


@register("clip", "CLIP", trains=False)
def clip_step(ctx: StepContext, x, y, idx=None):
    raise RuntimeError("CLIP is evaluated as pretrained: run it with --epochs 0")


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
