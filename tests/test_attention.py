"""Text-guided attention (SPEC §1 steps 1–5) against independent hand computations."""
import math

import pytest
import torch
import torch.nn.functional as F

from attention import (DISTANCES, patch_attention, map_distance, map_distance_explicit, text_guided_attention,
                       upsample_map)


def hand_map(tokens, text):
    """Plain-Python SPEC §1 steps 1–4 for one image: channel-wise norm over tokens, dot, min-max."""
    n_tok, d = len(tokens), len(tokens[0])
    col_norm = [math.sqrt(sum(tokens[i][c] ** 2 for i in range(n_tok))) for c in range(d)]
    s = [sum(tokens[i][c] / col_norm[c] * text[c] for c in range(d)) for i in range(1, n_tok)]
    lo, hi = min(s), max(s)
    return [(v - lo) / (hi - lo) for v in s]


def test_grid_matches_hand_computation():
    torch.manual_seed(1)
    tokens = torch.randn(2, 5, 3, dtype=torch.float64)  # CLS + 2×2 patches, D = 3
    text = F.normalize(torch.randn(2, 3, dtype=torch.float64), dim=-1)
    got = patch_attention(tokens, text)
    assert got.shape == (2, 1, 2, 2)
    for b in range(2):
        want = hand_map(tokens[b].tolist(), text[b].tolist())
        # fp32 (patch_attention casts) vs float64: s = a 3-term dot of values ≤ 1 after a 5-term norm, a
        # few roundings of 6e-8 each, divided by the min-max span (≥ 0.3 here): ≤ 1e-6 (measured 9e-8)
        assert got[b].flatten().tolist() == pytest.approx(want, abs=1e-6)


def test_dim1_normalisation_differs_from_per_token():
    # One channel is large on every token: per-channel (dim=1) normalisation damps it,
    # per-token normalisation would let it dominate. The two maps must differ.
    tokens = torch.tensor([[[10.0, 1.0], [10.0, 0.0], [9.0, 3.0], [10.0, 2.0], [8.0, 0.5]]])
    text = torch.tensor([[0.6, 0.8]])
    ours = patch_attention(tokens, text).flatten()
    per_token = F.normalize(tokens[0, 1:], dim=-1) @ text[0]
    per_token = (per_token - per_token.min()) / (per_token.max() - per_token.min())
    # as above (measured 2e-8); the per-token map differs from ours by 0.14, far outside 1e-3
    assert ours.tolist() == pytest.approx(hand_map(tokens[0].tolist(), text[0].tolist()), abs=1e-6)
    assert not torch.allclose(ours, per_token, atol=1e-3)


@pytest.mark.parametrize("n_tokens,grid,out", [(50, 7, 224), (197, 14, 224), (65, 8, 32)])
def test_map_shape_and_range(n_tokens, grid, out):
    tokens = torch.randn(3, n_tokens, 16)
    text = F.normalize(torch.randn(3, 16), dim=-1)
    m = text_guided_attention(tokens, text, out)
    assert m.shape == (3, 1, out, out)
    assert m.min() >= 0 and m.max() <= 1
    g = patch_attention(tokens, text)
    assert g.shape == (3, 1, grid, grid)
    # exact in IEEE arithmetic: (lo − lo) / span = 0 and (hi − lo) / (hi − lo) = 1
    assert torch.equal(g.flatten(1).min(1).values, torch.zeros(3))
    assert torch.equal(g.flatten(1).max(1).values, torch.ones(3))


def test_upsampling_is_bilinear_without_align_corners():
    g = torch.rand(2, 1, 7, 7)
    ref = F.interpolate(g, size=(224, 224), mode="bilinear", align_corners=False)
    assert torch.equal(upsample_map(g, 224), ref)


def test_constant_map_is_guarded():
    tokens = torch.ones(1, 5, 4)
    m = patch_attention(tokens, F.normalize(torch.ones(1, 4), dim=-1))
    assert torch.isfinite(m).all()


@pytest.mark.parametrize("metric", ["l2", "cos", "l1"])
def test_distance_shortcut_equals_explicit(metric):
    torch.manual_seed(0)
    a = torch.rand(4, 1, 7, 7, dtype=torch.float64, requires_grad=True)
    b = torch.rand(4, 1, 7, 7, dtype=torch.float64)
    fast = map_distance(a, b, metric, 224)
    slow = map_distance_explicit(a, b, metric, 224)
    # float64 (u = 1.1e-16): sums of 50 176 non-negative terms, worst case n·u = 6e-12 relative (measured
    # 2e-15); a wrong Gram matrix (e.g. align_corners=True) changes the distance by > 1e-3
    assert fast.item() == pytest.approx(slow.item(), rel=1e-10)
    (g_fast,) = torch.autograd.grad(fast, a)
    (g_slow,) = torch.autograd.grad(slow, a)
    assert torch.allclose(g_fast, g_slow, rtol=1e-10, atol=1e-12)  # the same bound (measured 1e-14 relative)


def test_distance_shortcut_fp32_tolerance():
    torch.manual_seed(3)
    a, b = torch.rand(8, 1, 7, 7), torch.rand(8, 1, 7, 7)
    for metric in ("l2", "cos"):
        fast, slow = map_distance(a, b, metric, 224), map_distance_explicit(a, b, metric, 224)
        # fp32: the explicit sums over 50 176 values err by ≤ log₂(n)·u ≈ 1e-6 relative (cascade sum; the
        # Gram side sums 49 terms); 1 − cos ≈ 0.15 amplifies the error of cos ≈ 0.85 six-fold: ≤ 6e-6
        # (measured 3.5e-7 for both). A wrong Gram matrix changes them by > 1e-3.
        assert abs(fast.item() - slow.item()) <= 1e-5 * abs(slow.item())


def test_zero_difference_has_zero_gradient():
    # Step 1 of training: trained and frozen towers are identical, the AMC difference is 0.
    a = torch.rand(2, 1, 7, 7, requires_grad=True)
    d = map_distance(a, a.detach().clone(), "l2", 224)
    (g,) = torch.autograd.grad(d, a)
    assert d.item() == 0 and torch.isfinite(g).all() and (g == 0).all()


def test_l2_is_order_ten_for_typical_maps():
    torch.manual_seed(0)
    a, b = torch.rand(4, 1, 7, 7), torch.rand(4, 1, 7, 7)
    # two uniform maps differ by ~0.3 per upsampled value: ‖·‖ over 224² ≈ 0.3·224 ≈ 70 (SPEC: O(10));
    # a squared distance (~5 000) or a mean (~0.3) instead of the plain L2 falls outside
    assert 10 < map_distance(a, b, "l2", 224).item() < 200


def test_maps_and_distances_are_fp32_under_autocast():
    """Under (CPU bf16) autocast the maps and both distances equal their fp32 values. Autocast
    re-casts the inputs of `bmm` / `@` to bf16 (8-bit mantissa), so casting the inputs to fp32 is
    not enough: the computation must run with autocast off. Without that, the map is off by 7e-3
    and the Gram-shortcut l2 / cos distances by 1e-3 / 2e-4 relative (measured on this data)."""
    torch.manual_seed(0)
    tokens = torch.randn(4, 50, 64)
    text = F.normalize(torch.randn(4, 64), dim=-1)
    a, b = patch_attention(tokens, text), torch.rand(4, 1, 7, 7)
    fns = (map_distance, map_distance_explicit)
    want = {(fn, m): fn(a, b, m, 224).item() for fn in fns for m in DISTANCES}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_map = patch_attention(tokens, text)
        got = {(fn, m): fn(a, b, m, 224) for fn in fns for m in DISTANCES}
    # The same fp32 operations in the same order as without autocast: equal in practice. 1e-6 is
    # fp32 roundoff (6e-8) times the ~16 terms a reordered reduction could change, and 1/7000 of the
    # bf16 error of the map.
    assert got_map.dtype == torch.float32 and (got_map - a).abs().max().item() <= 1e-6
    for (fn, m), d in got.items():
        assert d.dtype == torch.float32
        # rel 1e-6: ~16 fp32 roundoffs; 1/200 of the smallest bf16 error above (cos, 2e-4)
        assert d.item() == pytest.approx(want[fn, m], rel=1e-6), (fn.__name__, m)
