"""TGA-ZSR loss terms against a straightforward implementation of SPEC §1 (explicit 224×224 maps)."""
import pytest
import torch
import torch.nn.functional as F

from methods.tga_zsr import tga_zsr_loss


def reference_terms(model, frozen, x, x_adv, y, T, distance):
    """SPEC §1 written out naively: explicit maps, second forward for the map, no shortcuts."""
    def amap(tokens):
        t = T[y]
        f = tokens / tokens.norm(dim=1, keepdim=True)
        s = (f[:, 1:, :] @ t[:, :, None]).squeeze(-1)
        lo, hi = s.min(1, keepdim=True).values, s.max(1, keepdim=True).values
        s = ((s - lo) / (hi - lo)).view(-1, 1, 7, 7)
        return F.interpolate(s, size=(224, 224), mode="bilinear", align_corners=False).flatten(1)

    def dist(a, b):
        if distance == "l2":
            return torch.norm(a - b, p=2, dim=1).mean()
        if distance == "cos":
            return (1 - F.cosine_similarity(a, b, dim=1, eps=1e-8)).mean()
        return (a - b).abs().mean()

    logits = model.clip.logit_scale.exp() * F.normalize(model.image_tokens(x_adv)[:, 0], dim=-1) @ T.t()
    ce = F.cross_entropy(logits, y)
    with torch.no_grad():
        a_ori = amap(frozen(x))
    ar = dist(amap(model.image_tokens(x_adv)), a_ori)
    amc = dist(amap(model.image_tokens(x)), a_ori)
    return ce, ar, amc


def make_inputs(model, n=4, classes=6):
    torch.manual_seed(0)
    x = torch.rand(n, 3, 224, 224)
    x_adv = (x + (torch.rand_like(x) - 0.5) * 8 / 255).clamp(0, 1)
    y = torch.tensor([0, 3, 3, 5])[:n]
    with torch.no_grad():
        T = model.encode_text([f"This is a photo of a thing{i}" for i in range(classes)])
    return x, x_adv, y, T


@pytest.mark.parametrize("distance", ["l2", "cos", "l1"])
def test_terms_match_reference(tiny_model, distance):
    frozen = tiny_model.frozen_image_tower()
    with torch.no_grad():  # make the trained tower differ from the frozen one
        for p in tiny_model.visual.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x, x_adv, y, T = make_inputs(tiny_model)
    out = tga_zsr_loss(tiny_model, frozen, x, x_adv, y, T, 0.08, 0.05, distance)
    ce, ar, amc = reference_terms(tiny_model, frozen, x, x_adv, y, T, distance)
    # The loss runs the tower once on [x_adv; x] (batch 8), the reference twice (batch 4): other GEMM
    # blockings, CLS directions within ~3.4e-6 (test_clip_model), logits (s = 14.3) within 5e-5, so the
    # CE ≈ 2.1 within 2·5e-5, 5e-5 relative at worst (measured 0). The l2 / l1 distances (35 / 0.13) sum
    # 50 176 map values, each within ~1e-6: ≤ 1e-6 relative after the Gram shortcut (measured 2e-7).
    # The cos distance 1 − cos ≈ 0.05 carries the absolute error of a cosine near 1 (three 50 176-term
    # sums, ≤ log₂(n)·u ≈ 1e-6 each): abs 2e-6 (measured 3e-7). Missing or wrong terms are off by ≥ 1e-3.
    assert out["ce"].item() == pytest.approx(ce.item(), rel=5e-5)
    for got, want in ((out["ar"], ar), (out["amc"], amc)):
        assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=2e-6)
    assert out["loss"].item() == pytest.approx((ce + 0.08 * ar + 0.05 * amc).item(), rel=5e-5)  # ≈ the CE's
    # gradients too
    params = [p for p in tiny_model.visual.parameters()]
    g_fast = torch.autograd.grad(out["loss"], params)
    g_ref = torch.autograd.grad(ce + 0.08 * ar + 0.05 * amc, params)
    for a, b in zip(g_fast, g_ref):
        # Each gradient is a sum over the batch, the tokens and the map's values (49 Gram cells here, 50 176
        # pixels in the reference) of terms bounded by the tensor's own scale max|b|: the two orders differ
        # by ~log₂(50 176)·u ≈ 1e-6 of it (measured ≤ 1.8e-6). Elements that cancel to ~0 have no relative
        # accuracy, hence a per-tensor bound, 2e-5·max|b|. Dropping AR's gradient moves a tensor by 3e-2 to
        # 0.7 of its scale (measured, per metric).
        assert (a - b).abs().max() <= 2e-5 * b.abs().max()


def test_alpha_beta_zero_is_plain_ce(tiny_model):
    frozen = tiny_model.frozen_image_tower()
    x, x_adv, y, T = make_inputs(tiny_model)
    out = tga_zsr_loss(tiny_model, frozen, x, x_adv, y, T, 0.0, 0.0)
    logits = tiny_model.clip.logit_scale.exp() * F.normalize(tiny_model.image_tokens(x_adv)[:, 0], dim=-1) @ T.t()
    assert torch.equal(out["loss"], out["ce"])
    # the loss's CLS-only path vs the full tokens: logits within s·3.4e-6 = 5e-5 (test_clip_model), CE ≈ 2.2
    # within 2e-5 relative at worst (measured 1e-7); rel 1e-6 was 2 ulps of the CE
    assert out["loss"].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=5e-5)


def test_frozen_copy_gets_no_gradient_and_first_step_is_finite(tiny_model):
    frozen = tiny_model.frozen_image_tower()
    x, x_adv, y, T = make_inputs(tiny_model)
    out = tga_zsr_loss(tiny_model, frozen, x, x_adv, y, T, 0.08, 0.05)
    # identical towers on the first step: ~0 (the frozen copy may take MHA's fused no-grad path): tokens
    # within a few ulps, maps within ~1e-6 per value, ‖·‖ over 224² ≤ 224·1e-6 = 2e-4 (measured 0);
    # frozen maps of the wrong images (x_adv) or weights give ≥ 1.9
    assert out["amc"].item() < 1e-3
    out["loss"].backward()
    assert all(p.grad is None for p in frozen.parameters())
    assert all(torch.isfinite(p.grad).all() for p in tiny_model.visual.parameters() if p.grad is not None)
    # the frozen tower is a separate copy of the visual tower only
    assert frozen.visual is not tiny_model.visual
    assert not any(p is q for p in frozen.parameters() for q in tiny_model.visual.parameters())


def test_cached_frozen_maps_give_identical_loss(tiny_model):
    from attention import patch_attention
    frozen = tiny_model.frozen_image_tower()
    x, x_adv, y, T = make_inputs(tiny_model)
    with torch.no_grad():
        maps = patch_attention(frozen(x), T[y])
    a = tga_zsr_loss(tiny_model, frozen, x, x_adv, y, T, 0.08, 0.05)
    b = tga_zsr_loss(tiny_model, None, x, x_adv, y, T, 0.08, 0.05, frozen_maps=maps)
    assert torch.equal(a["loss"], b["loss"])
