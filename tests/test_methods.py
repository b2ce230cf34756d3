"""Every baseline of the method registry: losses against hand-computed values, visual prompt
tuning, Grad-CAM hooks, and a few real training steps per method on the tiny model.

    python -m pytest -q tests/test_methods.py
"""
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import methods
from methods import pmg_aft
from methods.comp_tga import negative_prompts
from methods.fare import fare_embedding_loss
from methods.tima import hyperspherical_energy, text_distance_margins
from methods.ft import in_batch_contrastive_loss
from methods.pmg_aft import pmg_aft_loss
from methods.tga_zsr import tga_zsr_loss
from attention import GradCAM
from engine.checkpoint import trainable_state
from engine.settings import mini_learning_rate, parse_args
from engine.prompters import install_prompter, remove_prompter
from engine.train import build_optimizer, trainable_parameters
from engine.settings import Settings
from engine.train import build_method
from engine.model import install_prompts

ALL = methods.available_methods()   # data-driven: a new method is tested here without editing this file
PROMPTS = [f"This is a photo of a thing{i}" for i in range(6)]
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 224, 224, generator=g)
    y = torch.tensor([0, 3, 3, 5, 1, 2, 4, 0])[:n]
    return x, y


def text_of(model, prompts=PROMPTS):
    with torch.no_grad():
        return model.encode_text(prompts)


# --- registry and configs -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_every_method_is_declared_whole(name):
    """Label, aliases, config, flags, run name and mini learning rate of every registered method."""
    cls = methods.get_method(name)
    assert cls.name == name and cls.label and cls.__doc__
    assert all(methods.canonical_method(a) == name for a in (name, cls.label, *cls.aliases))
    assert methods.method_label(name) == cls.label
    args = parse_args(["--Method", name])                 # its configs/<name>.yaml parses
    assert methods.get_method(args.Method, args.atten_methods).name == name
    assert mini_learning_rate(name) >= 0
    assert cls.trains in ("nothing", "visual", "prompts", "visual+text")
    for dest, _ in cls.run_name:                          # what names its run folder is one of its flags
        assert hasattr(args, dest)


def test_registry_names_aliases_and_configs():
    assert {"clip", "ft_clean", "ft_adv", "tecoa", "tecoa_vpt", "pmg_aft", "fare", "tga_zsr", "tga_zsr_visual",
            "comp_tga", "tima"} <= set(ALL)
    for alias, canon in [("TGA-ZSR", "tga_zsr"), ("TeCoA", "tecoa"), ("CLIP", "clip"), ("FT-Clean", "ft_clean"),
                         ("FT-Standard", "ft_adv"), ("FT-Adv", "ft_adv"), ("PMG-AFT", "pmg_aft"), ("FARE", "fare"),
                         ("Comp-TGA", "comp_tga"), ("TIMA", "tima")]:
        assert methods.canonical_method(alias) == canon
    assert methods.get_method("TGA-ZSR", "visual").name == "tga_zsr_visual"
    fare = parse_args(["--Method", "FARE", "-c", "configs/synthetic.yaml"])   # smoke keeps FARE's optimiser
    assert (fare.optimizer, fare.learning_rate, fare.weight_decay, fare.train_numsteps, fare.train_momentum) == \
        ("adamw", 1e-5, 1e-4, 10, 0.9)
    assert fare.arch == "tiny-vit"
    assert methods.get_method("FARE").precision == "fp32"
    vpt = parse_args(["--Method", "tecoa_vpt"])
    assert (vpt.adaptation_method, vpt.add_prompt_size, vpt.learning_rate, vpt.batch_size) == ("VPT", 100, 40.0, 256)
    comp = parse_args(["--Method", "Comp-TGA"])
    assert (comp.Alpha, comp.Beta) == (0.10, 0.07)
    assert parse_args(["--Method", "PMG-AFT"]).learning_rate == 5e-5
    assert parse_args(["--Method", "CLIP"]).epochs == 0


# --- losses against hand-computed values -----------------------------------------------------------

def test_in_batch_contrastive_keeps_duplicate_classes_as_negatives():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 3.0]])        # images 1 and 2 share a class
    t = F.normalize(torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]]), dim=-1)
    s = 2.0
    L = s * F.normalize(f, dim=-1) @ t.t()
    # by hand: row i's CE against column i, column j's CE against row j; duplicates are negatives
    rows = [-L[i, i] + torch.logsumexp(L[i], 0) for i in range(3)]
    cols = [-L[j, j] + torch.logsumexp(L[:, j], 0) for j in range(3)]
    expected = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
    # ~20 fp32 roundings of O(1) values on each side: ≤ 20·6e-8 = 1.2e-6 relative (measured 7e-8); counting
    # the duplicate as a positive, or one direction only, moves the loss by > 0.1
    assert torch.allclose(in_batch_contrastive_loss(f, t, s), expected, rtol=1e-5, atol=0)
    assert L[1, 2] == L[1, 1]  # the duplicate's logit equals the positive one: it is not masked
    assert in_batch_contrastive_loss(f, t, s) > math.log(2) / 2


def test_pmg_aft_reductions_and_temperature(tiny_model):
    model = tiny_model
    frozen = model.frozen_image_tower()
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y = batch()
    x_adv = (x + 4 / 255).clamp(0, 1)
    T = text_of(model)
    out = pmg_aft_loss(model, frozen, x, x_adv, y, T)
    with torch.no_grad():  # by hand: raw cosines, KL(p_ref ‖ p_adv) summed over batch and classes
        o_adv = F.normalize(model.image_tokens(x_adv)[:, 0], dim=-1) @ T.t()
        o_ori = F.normalize(frozen(x_adv)[:, 0], dim=-1) @ T.t()
        o_cl = F.normalize(model.image_tokens(x)[:, 0], dim=-1) @ T.t()
        # temperature 1: |cos| ≤ 1 up to a 64-term dot's roundings (≤ 64·6e-8 = 4e-6); ×100 would give 33 here
        assert o_adv.abs().max() <= 1.0 + 1e-5
        p_adv, p_ori, p_cl = (o.softmax(1) for o in (o_adv, o_ori, o_cl))
        kl_ori = (p_ori * (p_ori.log() - p_adv.log())).sum()
        kl_cl = (p_cl * (p_cl.log() - p_adv.log())).sum()
        ce = -(o_adv.log_softmax(1)[torch.arange(4), y]).mean()
    # The same forwards; each KL sums 24 terms p·log p of size ≤ 0.3 that cancel to ~7e-4: its error is the
    # terms', ≤ 24·0.3·6e-8 = 4e-7 (measured 1e-7), hence an absolute 1e-6. A batch-mean KL would be 5e-4
    # off, the reversed KL(p_adv ‖ p_ori) 2.9e-6 (measured). CE ≈ 1.8, loss ≈ 1.8: 1e-6 = 8 ulps.
    assert torch.allclose(out["kl_ori"], kl_ori, rtol=0, atol=1e-6)
    assert torch.allclose(out["kl_clean"], kl_cl, rtol=0, atol=1e-6)
    assert torch.allclose(out["ce"], ce, rtol=0, atol=1e-6)
    assert torch.allclose(out["loss"], ce + kl_ori + kl_cl, rtol=0, atol=1e-6)
    assert out["loss"].requires_grad


def test_pmg_aft_attack_ascends_the_temperature_one_ce(tiny_model, monkeypatch):
    """PMG-AFT's inner PGD ascends the CE of the raw cosines `norm(f(x + δ)) · Tᵀ` (SPEC §4), the
    logits of its own loss, not the ×100 logits of §0: the step's x_adv is PGD on that CE, written
    out here (uniform start, sign steps, clip to the ε-ball and to [0, 1])."""
    model = tiny_model
    args = parse_args(["--Method", "PMG-AFT", "--train_eps", "4", "--train_stepsize", "1", "--train_numsteps", "3"])
    method = build_method(Settings.from_args(args), model, text_of(model))
    x, y = batch()
    T, eps, alpha = method.text, 4 / 255, 1 / 255
    seen = {}
    real_loss = pmg_aft.pmg_aft_loss

    def spy(model_, frozen, x_, x_adv, *rest):
        seen["x_adv"] = x_adv
        return real_loss(model_, frozen, x_, x_adv, *rest)
    monkeypatch.setattr(pmg_aft, "pmg_aft_loss", spy)
    torch.manual_seed(0)
    method.step(x, y)

    def hand_pgd(scale):
        torch.manual_seed(0)
        delta = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1) - x
        for _ in range(3):
            delta.requires_grad_(True)
            cos = F.normalize(model.image_features(x + delta), dim=-1) @ T.t()
            (g,) = torch.autograd.grad(F.cross_entropy(scale * cos, y), delta)
            delta = (x + (delta.detach() + alpha * g.sign()).clamp(-eps, eps)).clamp(0, 1) - x
        return x + delta
    model.visual.requires_grad_(False)  # as in the step's attack: the same attention kernels
    want, hundred = hand_pgd(1.0), hand_pgd(100.0)
    # A gradient entry within roundoff of 0 may take the other sign (the attack computes without
    # oneDNN): allow 1 pixel in 1000 to differ; the ×100 objective moves far more (checked below).
    assert (seen["x_adv"] != want).float().mean() < 1e-3
    assert (hundred != want).float().mean() > 0.05       # the test tells the two temperatures apart


def test_fare_loss_is_squared_l2_on_unnormalised_embeddings():
    a = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 4.0], [1.0, 1.0]])
    assert fare_embedding_loss(a, b).item() == (9 + 16 + 0) / 2     # small integers, halved: exact in fp32
    assert fare_embedding_loss(2 * a, 2 * b).item() == 4 * 12.5      # not normalised


def test_hyperspherical_energy_by_hand():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # squared distances: 2, 4, 2 (each pair twice in the ordered j≠k mean)
    expected = (1 / 3 + 1 / 5 + 1 / 3) / 3
    # ~8 fp32 roundings of values ≤ 1: ≤ 5e-7 relative (measured 4e-8); a j = k term or a missing pair is > 1e-2
    assert hyperspherical_energy(t).item() == pytest.approx(expected, rel=1e-6)
    assert hyperspherical_energy(5 * t).item() == pytest.approx(expected, rel=1e-6)  # on normalised features


def test_text_distance_margins():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    m = text_distance_margins(t, torch.tensor([0]), 0.1)
    assert m[0, 0] == 0                                                   # the target has none
    # √2/2 rounds by 4e-8, 1 − √2/2 = 0.29 keeps that error: ≤ 3e-7 relative after × 0.1 (measured 7e-8)
    assert m[0, 1].item() == pytest.approx(0.1 * (1 - math.sqrt(2) / 2), rel=1e-6)
    assert m[0, 2].item() == pytest.approx(0.0, abs=1e-7)    # opposite class: no margin (√4 = 2 exactly)


def test_alpha_beta_zero_tga_equals_tecoa(tiny_model):
    model = tiny_model
    frozen = model.frozen_image_tower()
    x, y = batch()
    x_adv = (x - 2 / 255).clamp(0, 1)
    T = text_of(model)
    tga = tga_zsr_loss(model, frozen, x, x_adv, y, T, 0.0, 0.0)["loss"]
    tecoa = build_method(Settings.from_args(parse_args(["--Method", "TeCoA", "--VPbaseline"])), model, T).step(x_adv, y)["loss"]
    assert torch.equal(tga, tecoa)
    logits = model.logit_scale * F.normalize(model.image_tokens(x_adv)[:, 0], dim=-1) @ T.t()
    # the CLS-only path vs the full tokens: logits within s·3.4e-6 = 5e-5 (test_clip_model), the CE ≈ 2.2
    # within 1e-4 at worst (measured 2.4e-7); without the logit scale the CE would be ~0.3 off
    assert torch.allclose(tga, F.cross_entropy(logits, y), rtol=5e-5, atol=0)


def test_comp_tga_map_is_complementary(tiny_model):
    """Comp-TGA's loss equals the distances of A(T[y]) ⊙ (1 − A(T_neg[y])) built by hand."""
    from attention import patch_attention, map_distance_explicit, upsample_map
    model = tiny_model
    frozen = model.frozen_image_tower()
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x, y = batch()
    x_adv = (x + 3 / 255).clamp(0, 1)
    T = text_of(model)
    neg_prompts = negative_prompts(PROMPTS)
    assert neg_prompts[0] == "This is not a photo of a thing0"
    Tn = text_of(model, neg_prompts)
    out = tga_zsr_loss(model, frozen, x, x_adv, y, T, 0.1, 0.07, "l2", negative_text_features=Tn)

    def comp(tokens):
        pos = upsample_map(patch_attention(tokens, T[y]), 224)
        neg = upsample_map(patch_attention(tokens, Tn[y]), 224)
        return pos * (1 - neg)
    with torch.no_grad():
        a_ori = comp(frozen(x))
        a_adv, a_cl = comp(model.image_tokens(x_adv)), comp(model.image_tokens(x))
        ar = (a_adv - a_ori).flatten(1).norm(dim=1).mean()
        amc = (a_cl - a_ori).flatten(1).norm(dim=1).mean()
    # Towers on [x_adv; x] (batch 8) vs 4 at a time: tokens within ~3.4e-6 relative; a map value moves by
    # that over the min-max span (≥ 0.1): ≲ 3e-5 at worst, typically 1e-6; the L2 over 224² values
    # (≈ 19, i.e. 0.08 per value) moves by ≲ 1e-5 relative typical (measured 0). rtol 1e-4.
    assert torch.allclose(out["ar"], ar, rtol=1e-4) and torch.allclose(out["amc"], amc, rtol=1e-4)
    assert torch.allclose(out["ar"], map_distance_explicit(a_adv, a_ori, "l2", 224), rtol=1e-4)
    plain = tga_zsr_loss(model, frozen, x, x_adv, y, T, 0.1, 0.07, "l2")
    assert not torch.allclose(plain["ar"], out["ar"])          # the complement changes the map (by 26)


def test_comp_tga_negative_text_computed_once(tiny_model):
    args = parse_args(["--Method", "Comp-TGA", "--VPbaseline"])
    model = tiny_model
    T = text_of(model)
    calls = []
    orig = model.encode_text
    model.encode_text = lambda p, **k: calls.append(len(p)) or orig(p, **k)
    method = build_method(Settings.from_args(args), model, T, PROMPTS)
    x, y = batch()
    method.step(x, y)
    method.step(x, y)
    assert calls == [len(PROMPTS)]


# --- Grad-CAM (the Vision-based row) ----------------------------------------------------------------

def _visual_method(model, differentiable):
    argv = ["--Method", "TGA-ZSR", "--atten_methods", "visual", "--VPbaseline"]
    args = parse_args(argv + (["--differentiable_cam"] if differentiable else []))
    return build_method(Settings.from_args(args), model, text_of(model))


@pytest.mark.parametrize("differentiable", [False, True])
def test_gradcam_map_gradient_only_when_asked(tiny_model, differentiable):
    model = tiny_model
    T = text_of(model)
    x, y = batch()
    cam = GradCAM(model.image_tower)
    maps, tokens = cam.maps(model.image_tower, x, model.logit_scale, T[y], 224, differentiable)
    assert maps.shape == (4, 1, 224, 224)
    assert maps.min() >= 0 and torch.equal(maps.amax(dim=(1, 2, 3)), torch.ones(4))  # max / max = 1 exactly
    assert maps.requires_grad == differentiable
    assert all(p.grad is None for p in model.parameters())  # the CAM backward leaves no .grad
    cam.remove()
    # the step's loss: the AR/AMC terms move the weights only with --differentiable_cam
    method = _visual_method(model, differentiable)
    with torch.no_grad():  # a trained tower that has moved away from the frozen one: maps differ
        model.visual.conv1.weight.mul_(1.05)
    terms = method.step(x, y)
    assert terms["ar"] > 0 and terms["ar"].requires_grad == differentiable
    p = next(iter(model.visual.transformer.parameters()))
    g_all = torch.autograd.grad(terms["loss"], p, retain_graph=True)[0]
    g_ce = torch.autograd.grad(terms["ce"], p)[0]
    assert torch.equal(g_all, g_ce) != differentiable


def test_gradcam_matches_manual_computation(tiny_model):
    model = tiny_model
    T = text_of(model)
    x, y = batch()
    acts = {}
    h = model.visual.transformer.resblocks[-1].ln_1.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    tokens = model.image_tokens(x)
    h.remove()
    scores = model.logit_scale * F.normalize(tokens[:, 0], dim=-1) @ T[y].t()
    target = scores.argmax(1)
    grad = torch.autograd.grad(scores[torch.arange(4), target].sum(), acts["a"])[0]
    if not model.visual.transformer.batch_first:  # sequence-first blocks: [L, B, D] -> [B, L, D]
        acts["a"], grad = acts["a"].transpose(0, 1), grad.transpose(0, 1)
    a, g = acts["a"][:, 1:].detach(), grad[:, 1:]
    cam = F.relu((g.mean(1, keepdim=True) * a).sum(-1)).view(4, 1, 7, 7)
    cam = F.interpolate(cam, size=(224, 224), mode="bilinear", align_corners=False)
    cam = cam - cam.amin(dim=(2, 3), keepdim=True)
    cam = cam / cam.amax(dim=(2, 3), keepdim=True)
    got, _ = GradCAM(model.image_tower).maps(model.image_tower, x, model.logit_scale, T[y], 224)
    # a CAM value sums 64 channel products and is divided by the map's max: ~√64·u relative to 1 after the
    # division, plus the hooks' other batch layout: ≤ 1e-6 typical (measured 0); maps in [0, 1], atol 1e-5.
    # The diagonal target instead of the argmax, or no ReLU, changes the maps by 0.56 / 0.62 (measured).
    assert torch.allclose(got, cam, atol=1e-5)


def test_gradcam_hooks_do_not_accumulate(tiny_model):
    model = tiny_model
    layer = model.visual.transformer.resblocks[-1].ln_1
    method = _visual_method(model, False)
    x, y = batch()
    method.step(x, y)
    n_hooks = len(layer._forward_hooks)
    n_frozen = len(method.frozen.visual.transformer.resblocks[-1].ln_1._forward_hooks)
    for _ in range(2):
        method.step(x, y)
    assert len(layer._forward_hooks) == n_hooks == 1
    assert len(method.frozen.visual.transformer.resblocks[-1].ln_1._forward_hooks) == n_frozen == 1
    for cam in method.cams:
        assert cam._activation is None
        cam.remove()
    assert len(layer._forward_hooks) == 0


# --- visual prompt tuning -------------------------------------------------------------------------

def test_null_patch_without_tokens_is_the_plain_model(tiny_model):
    x, _ = batch(2)
    # install_prompter freezes the tower; frozen weights select PyTorch's fused attention kernel,
    # which differs from the unfused one in the last bits, so compare at equal requires_grad.
    tiny_model.visual.requires_grad_(False)
    with torch.no_grad():
        plain = tiny_model.image_tokens(x)
    install_prompter(tiny_model, "null_patch", 30, 0)
    with torch.no_grad():
        prompted = tiny_model.image_tokens(x)
    assert torch.equal(plain, prompted)


def test_token_hook_adds_exactly_n_tokens_and_is_removed(tiny_model):
    model = tiny_model
    x, _ = batch(2)
    model.visual.requires_grad_(False)  # as install_prompter leaves it (see the test above)
    with torch.no_grad():
        plain = model.image_tokens(x)
    seen = {}
    probe = model.visual.ln_pre.register_forward_hook(lambda m, i, o: seen.__setitem__("n", o.shape[1]))
    model.image_tokens(x)
    base = seen["n"]
    prompter = install_prompter(model, "null_patch", 30, 5)
    with torch.no_grad():
        prompter.token_prompter.tokens.add_(1.0)
        out = model.image_tokens(x)
    assert seen["n"] == base + 5                         # five tokens enter ln_pre
    assert out.shape == plain.shape                      # ...and leave the token output again
    assert not torch.allclose(out, plain)                # but they change the other tokens (by 0.1)
    assert len(model.visual.patch_dropout._forward_hooks) == 1
    remove_prompter(model)
    assert len(model.visual.patch_dropout._forward_hooks) == 0 and model.prompter is None
    with torch.no_grad():
        assert torch.equal(model.image_tokens(x), plain)
    probe.remove()


@pytest.mark.parametrize("kind", ["padding", "random_patch", "fixed_patch"])
def test_only_prompts_receive_gradients_and_change(tiny_model, kind):
    model = tiny_model
    args = parse_args(["--Method", "tecoa_vpt", "-c", "configs/synthetic.yaml", "--method", kind, "--prompt_size", "30",
                       "--add_prompt_size", "3", "--learning_rate", "1.0", "--warmup", "1"])
    method = build_method(Settings.from_args(args), model, text_of(model))
    params = trainable_parameters(model, method.trains)
    prompter = model.prompter
    assert {id(p) for p in params} == {id(p) for p in prompter.parameters()}
    opt = build_optimizer(Settings.from_args(args).train, params)
    before_clip = copy.deepcopy(model.clip.state_dict())
    before_prompts = {k: v.clone() for k, v in prompter.state_dict().items()}
    x, y = batch()
    loss = method.step(x, y)["loss"]
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in model.clip.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompter.parameters())
    opt.step()
    assert all(torch.equal(v, model.clip.state_dict()[k]) for k, v in before_clip.items())
    assert all(not torch.equal(v, prompter.state_dict()[k]) for k, v in before_prompts.items())
    if kind == "padding":  # the border only: the centre of the prompt is zero
        pr = prompter.pixel.prompt(x)
        assert pr[..., 30:-30, 30:-30].abs().sum() == 0 and pr[..., :30, :].abs().sum() > 0


def _token_prompted(model, lr=0.1, n=50):
    args = parse_args(["--Method", "tecoa_vpt", "-c", "configs/synthetic.yaml", "--method", "null_patch",
                       "--add_prompt_size", str(n), "--learning_rate", str(lr), "--momentum", "0", "--VPbaseline"])
    torch.manual_seed(0)
    install_prompts(model, Settings.from_args(args).model)
    return args, model.prompter.token_prompter


def test_token_prompts_are_drawn_from_randn(tiny_model):
    """TeCoA's token prompts (SPEC §4) [faithful]: randn, std 1, not a width-scaled init."""
    _, tp = _token_prompted(tiny_model)
    # 50 × 64 draws of N(0, 1): the sample std is 1 ± 0.0125 (1σ); width^-0.5 would give 0.125
    assert 0.9 < tp.tokens.detach().std().item() < 1.1
    assert abs(tp.tokens.detach().mean().item()) < 0.1          # ±0.018 (1σ)


def test_token_positional_embedding_is_zero_and_never_trained(tiny_model):
    """TeCoA's optimiser steps only the pixel and token prompters (SPEC §4) [faithful]: the positional
    embedding of the token prompts stays zero. One plain SGD step (no momentum) therefore moves the
    appended tokens `tokens + positional_embedding` by exactly −lr·∇tokens; were the positional
    embedding trained too, it would receive the same gradient and the tokens would move twice as far."""
    model, lr = tiny_model, 0.1
    args, tp = _token_prompted(model, lr)
    assert [n for n, _ in model.prompter.named_parameters()] == ["token_prompter.tokens"]
    assert set(model.prompter.state_dict()) == {"token_prompter.tokens"}     # the zero buffer is not saved
    method = build_method(Settings.from_args(args), model, text_of(model))
    params = trainable_parameters(model, method.trains)
    assert {id(p) for p in params} == {id(tp.tokens)}
    opt = build_optimizer(Settings.from_args(args).train, params)
    x, y = batch()
    appended = (tp.tokens + tp.positional_embedding).detach().clone()
    loss = method.step(x, y)["loss"]
    opt.zero_grad()
    loss.backward()
    want = -lr * tp.tokens.grad
    opt.step()
    moved = (tp.tokens + tp.positional_embedding).detach() - appended
    # fl(t − lr·g) − t is exact to one rounding of t: 2⁻²⁴·max|t| (≈ 2.4e-7 here), with margin ×4
    tol = 4 * 2 ** -24 * appended.abs().max().item()
    assert want.abs().max().item() > 100 * tol                       # a doubled step would be caught
    assert (moved - want).abs().max().item() <= tol
    assert torch.equal(tp.positional_embedding, torch.zeros_like(tp.positional_embedding))


def test_checkpoint_with_a_trained_positional_embedding_loads_with_the_same_prompt(tiny_model, tmp_path):
    """A checkpoint written before the positional embedding became a buffer holds it as a trained
    parameter (`token_prompter.positional_embedding`). It loads strictly, folded into the tokens: the
    tokens that enter ln_pre are the old model's `tokens + positional_embedding`."""
    from engine.weights import load_visual_weights
    model = tiny_model
    prompter = install_prompter(model, "padding", 30, 3)
    g = torch.Generator().manual_seed(0)
    tokens, pos = torch.randn(3, 64, generator=g), 0.5 * torch.randn(3, 64, generator=g)
    old = dict(prompter.state_dict(), **{"token_prompter.tokens": tokens, "token_prompter.positional_embedding": pos})
    torch.save({"vision_encoder_state_dict": model.visual.state_dict(), "prompter_state_dict": old,
                "meta": {"quick_gelu": model.quick_gelu}}, tmp_path / "old.pt")
    with torch.no_grad():
        prompter.token_prompter.tokens.zero_()
    load_visual_weights(model, tmp_path / "old.pt")
    seen = {}
    probe = model.visual.ln_pre.register_forward_hook(lambda m, i, o: seen.__setitem__("in", i[0]))
    with torch.no_grad():
        model.image_tokens(torch.rand(2, 3, 224, 224))
    probe.remove()
    appended = seen["in"] if seen["in"].shape[0] == 2 else seen["in"].transpose(0, 1)  # [B, L, D]
    assert torch.equal(appended[0, -3:], tokens + pos) and torch.equal(appended[1, -3:], tokens + pos)
    assert not prompter.token_prompter.positional_embedding.any()


def test_random_patch_corner_excludes_the_last_position():
    """TeCoA's random_patch draws its top-left corner from 0 … s − p − 1 (SPEC §4): upper bound exclusive."""
    from engine.prompters import PixelPrompter
    pp = PixelPrompter("random_patch", 3, 8)
    with torch.no_grad():
        pp.patch.fill_(1.0)
    torch.manual_seed(0)
    corners = set()
    for _ in range(300):
        rows, cols = pp.prompt(torch.zeros(1))[0, 0].nonzero(as_tuple=True)
        corners.add((rows.min().item(), cols.min().item()))
    # every corner of 0 … 4 appears (each one is missed by 300 draws with probability (24/25)³⁰⁰ ≈ 5e-6)
    assert corners == {(r, c) for r in range(8 - 3) for c in range(8 - 3)}


def test_tecoa_vpt_runs_tecoas_published_command():
    """TeCoA's "w/ Prompting" command passes no --method (our --pixel_prompt): its default padding prompt of 30 joins the
    100 tokens. The config (which `bash main.sh tecoa_vpt` runs) and the mini world's scaled version say so."""
    from engine.prompters import PixelPrompter
    vpt = parse_args(["--Method", "tecoa_vpt"])
    assert (vpt.pixel_prompt, vpt.prompt_size, vpt.add_prompt_size) == ("padding", 30, 100)
    for cfg in ("configs/mini.yaml", "configs/smoke.yaml"):  # 32×32 world images: a border that fits
        a = parse_args(["-c", cfg, "--Method", "tecoa_vpt"])
        assert a.pixel_prompt == "padding" and 0 < a.prompt_size < 16
        PixelPrompter(a.pixel_prompt, a.prompt_size, 32)


def test_vpt_checkpoint_round_trip_through_eval_only(tmp_path):
    import tga_zsr
    from engine.checkpoint import load_file
    run = ["-c", "configs/synthetic.yaml", "--Method", "tecoa_vpt", "--add_prompt_size", "4", "--device", "cpu",
           "--output_dir", str(tmp_path), "--name", "vpt", "--max_steps", "2", "--no_eval", "--learning_rate", "1"]
    assert tga_zsr.main(run) == 0
    ck = load_file(tmp_path / "vpt" / "last.pt")
    assert "token_prompter.tokens" in ck["prompter_state_dict"]
    from engine.model import load_clip
    model = load_clip("tiny-vit", None)
    args = parse_args(["--resume", str(tmp_path / "vpt"), "--eval_only"])
    assert args.adaptation_method == "VPT" and args.add_prompt_size == 4
    install_prompts(model, Settings.from_args(args).model)
    from engine.weights import load_visual_weights
    load_visual_weights(model, tmp_path / "vpt" / "last.pt")
    for k, v in ck["prompter_state_dict"].items():
        assert torch.equal(model.prompter.state_dict()[k], v)


# --- FARE's inner attack ----------------------------------------------------------------------------

def test_fare_inner_attack_increases_the_embedding_loss(tiny_model):
    model = tiny_model
    args = parse_args(["--Method", "FARE", "--train_eps", "4"])
    method = build_method(Settings.from_args(args), model, text_of(model))
    frozen = method.frozen
    x, y = batch()
    with torch.no_grad():
        ref = frozen(x)[:, 0]
        before = fare_embedding_loss(model.image_tokens(x)[:, 0], ref)   # 0: the towers are equal
    calls = []

    def objective(xa):
        value = fare_embedding_loss(model.image_tokens(xa)[:, 0], ref)
        calls.append(float(value.detach()))
        return value
    torch.manual_seed(0)
    x_adv = method.attack(model, x, y, objective=objective)
    with torch.no_grad():
        after = fare_embedding_loss(model.image_tokens(x_adv)[:, 0], ref)
    assert len(calls) == 10
    assert after >= before and after > calls[0]     # beats the random start, too
    assert (x_adv - x).abs().max() <= 4 / 255 + 1e-7    # fl(x + δ) − x: half an ulp at ≤ 1, 6e-8
    assert all(p.grad is None for p in model.parameters())


# --- a few real steps per method on the tiny model ----------------------------------------------------

# Per-method learning rates for this test: large enough that 3 steps move the random tiny model,
# small enough to be stable. SGD methods and AdamW (FARE) live on different scales; PMG-AFT's CE on
# raw cosines (temperature 1) has ~100× smaller gradients; the attention-map methods need small steps
# because a random model's min-max normalised maps are very sensitive to the weights.
TEST_LR = {"ft_clean": 0.05, "ft_adv": 0.05, "tecoa": 0.05, "tecoa_vpt": 1.0, "pmg_aft": 0.5, "fare": 2e-3,
           "tga_zsr": 0.01, "tga_zsr_visual": 0.01, "comp_tga": 0.01, "tima": 0.05}
# The loss the optimiser actually descends: the Vision-based row's maps carry no gradient by default,
# so its AR/AMC terms only drift as the weights move and its trained objective is the CE.
TRAINED_TERM = {"tga_zsr_visual": "ce"}


def _setup(method_name, model, extra=()):
    from datasets import get_dataset
    data = get_dataset("synthetic_train", "", "train")
    args = parse_args(["-c", "configs/synthetic.yaml", "--Method", method_name, "--warmup", "1",
                       "--train_numsteps", "2", "--add_prompt_size", "2", *extra])
    T = text_of(model, data.prompts)
    method = build_method(Settings.from_args(args), model, T, list(data.prompts), list(data.classnames), len(data))
    xs, ys = zip(*[data.dataset[i] for i in range(6)])
    return method, args, torch.stack(xs), torch.tensor(ys)


@pytest.mark.parametrize("name", [m for m in ALL if m != "clip"])
def test_training_steps_lower_the_loss(tiny_model, name):
    model = tiny_model
    method, args, x, y = _setup(name, model, ["--learning_rate", str(TEST_LR[name])])
    if method.frozen is not None:
        # Start away from θ = θ₀, where the AMC distance has its kink (zero subgradient), as in any
        # training step after the first.
        with torch.no_grad():
            g = torch.Generator().manual_seed(1)
            for p in model.visual.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    opt = build_optimizer(Settings.from_args(args).train, trainable_parameters(model, method.trains, args.last_num_ft, method.trainable_extra()))
    term = TRAINED_TERM.get(name, "loss")

    def measured():
        torch.manual_seed(123)  # the same PGD random start every time: a fixed objective
        return float(method.step(x, y)[term].detach())
    start = measured()
    for _ in range(3):
        torch.manual_seed(123)
        loss = method.step(x, y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    end = measured()
    assert math.isfinite(end) and end < start, (name, start, end)


def test_tima_trains_the_text_tower_and_saves_it(tiny_model):
    model = tiny_model
    method, args, x, y = _setup("tima", model, ["--tima_text_params", "last_block"])
    extra = method.trainable_extra()
    names = set(extra)
    last = len(model.clip.transformer.resblocks) - 1
    assert "text_projection" in names and any(n.startswith(f"transformer.resblocks.{last}.") for n in names)
    assert not any(n.startswith("transformer.resblocks.0.") for n in names)
    opt = build_optimizer(Settings.from_args(args).train, trainable_parameters(model, method.trains, 0, extra))
    before = {n: p.detach().clone() for n, p in extra.items()}
    loss = method.step(x, y)["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(before[n], p) for n, p in extra.items())
    state = trainable_state(model, extra)
    assert set(state["extra_trainable_state"]) == names


def test_clip_trains_nothing_and_leaves_weights_bit_identical(tiny_model, tmp_path, monkeypatch):
    import tga_zsr
    model = tiny_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(tga_zsr, "build_model", lambda args, device: model)
    code = tga_zsr.main(["-c", "configs/synthetic.yaml", "--Method", "CLIP", "--device", "cpu", "--output_dir",
                         str(tmp_path), "--name", "clip", "--testdata", "synthetic_colors", "--test_numsteps", "1"])
    assert code == 0
    assert not (tmp_path / "clip" / "last.pt").exists() and not (tmp_path / "clip" / "history.jsonl").exists()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert (tmp_path / "clip" / "results.jsonl").is_file()
