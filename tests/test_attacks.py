"""PGD and CW (SPEC §0, §5): constraints, ascent, no parameter gradients, determinism."""
import pytest
import torch
import torch.nn.functional as F

from attacks import cw_loss, no_param_grad, pgd


def setup_batch(tiny_model, n=4, classes=5):
    torch.manual_seed(0)
    x = torch.rand(n, 3, 224, 224)
    y = torch.arange(n) % classes
    with torch.no_grad():
        text = tiny_model.encode_text([f"a photo of class {i}" for i in range(classes)])
    return x, y, text


@pytest.mark.parametrize("norm", ["l_inf", "l_2"])
def test_pgd_stays_in_ball_and_box_and_increases_loss(tiny_model, norm):
    x, y, text = setup_batch(tiny_model)
    x[0, :, :8, :8] = 1.0  # pixels at the box edge must stay there
    x[1, :, :8, :8] = 0.0
    eps = 4 / 255 if norm == "l_inf" else 0.5

    def objective(xa):
        return F.cross_entropy(tiny_model.logits(xa, text), y)

    with no_param_grad(tiny_model.clip):
        before = objective(x).item()
        delta = pgd(objective, x, eps, eps / 4, 5, norm=norm, random_start=False)
        after = objective(x + delta).item()
    xa = x + delta
    assert xa.min() >= 0 and xa.max() <= 1
    if norm == "l_inf":
        # δ = fl(x + δ) − x: one rounding of a value ≤ 1, half an ulp = 6e-8; a missing clamp is a step off
        assert delta.abs().max() <= eps + 1e-7
    else:
        # ‖δ‖ over 150 528 fp32 values after scaling to ε: relative error ≤ log₂(n)·u ≈ 1e-6 with torch's
        # cascade sum (5e-7 here); 1e-5 = 2e-5 relative. A missing projection overshoots by up to α = 0.125.
        assert delta.flatten(1).norm(dim=1).max() <= eps + 1e-5
    assert after > before


def test_pgd_leaves_no_parameter_gradient(tiny_model):
    x, y, text = setup_batch(tiny_model)
    tiny_model.visual.requires_grad_(True)
    pgd(lambda xa: F.cross_entropy(tiny_model.logits(xa, text), y), x, 1 / 255, 1 / 255, 2)
    assert all(p.grad is None for p in tiny_model.parameters())
    with no_param_grad(tiny_model.clip):
        pgd(lambda xa: F.cross_entropy(tiny_model.logits(xa, text), y), x, 1 / 255, 1 / 255, 2)
    assert all(p.grad is None for p in tiny_model.parameters())
    assert all(p.requires_grad for p in tiny_model.visual.parameters())  # restored


def test_pgd_reproducible_with_seed_and_deterministic_without_start(tiny_model):
    x, y, text = setup_batch(tiny_model)

    def objective(xa):
        return F.cross_entropy(tiny_model.logits(xa, text), y)

    torch.manual_seed(5)
    d1 = pgd(objective, x, 2 / 255, 1 / 255, 3)
    torch.manual_seed(5)
    d2 = pgd(objective, x, 2 / 255, 1 / 255, 3)
    assert torch.equal(d1, d2)
    d3 = pgd(objective, x, 2 / 255, 1 / 255, 3, random_start=False)
    d4 = pgd(objective, x, 2 / 255, 1 / 255, 3, random_start=False)
    assert torch.equal(d3, d4)


def test_pgd_under_autocast(tiny_model):
    x, y, text = setup_batch(tiny_model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        delta = pgd(lambda xa: F.cross_entropy(tiny_model.logits(xa, text), y), x, 2 / 255, 1 / 255, 2)
    assert delta.dtype == torch.float32
    assert delta.abs().max() <= 2 / 255 + 1e-7 and delta.abs().sum() > 0  # δ fp32: half an ulp at 1, 6e-8


def test_pgd_final_iterate_not_best():
    # A loss that rewards the first step and punishes later ones: the final iterate is returned.
    x = torch.full((1, 1, 2, 2), 0.5)
    calls = []

    def objective(xa):
        calls.append(1)
        return (xa - 0.5).sum() * (1 if len(calls) == 1 else -1)

    delta = pgd(objective, x, 0.1, 0.05, 3, random_start=False)
    # three roundings of x + δ near 0.5 (half an ulp: 3e-8 each); the best iterate would be +0.05
    assert torch.allclose(delta, torch.full_like(x, -0.05), rtol=0, atol=1e-7)


def test_momentum_pgd_sign_accumulation():
    x = torch.full((1, 1, 1, 1), 0.5)
    grads = iter([1.0, -1.0, -1.0])

    def objective(xa):
        return xa.sum() * next(grads)

    delta = pgd(objective, x, 1.0, 0.1, 3, random_start=False, momentum=0.9)
    # v1 = sign(0+1)=1, v2 = sign(0.9-1)=-1, v3 = sign(-0.9-1)=-1: δ = 0.1 - 0.1 - 0.1
    assert delta.item() == pytest.approx(-0.1, abs=1e-7)  # three roundings of x + δ ≤ 0.6: ≤ 3 × 3e-8


def test_cw_loss_hand_values():
    z = torch.tensor([[5.0, 1.0, 3.0], [0.0, 2.0, 60.0]])
    y = torch.tensor([0, 1])
    # sample 0: relu(5 - 3 + 50) = 52; sample 1: relu(2 - 60 + 50) = 0
    assert cw_loss(z, y).item() == -52.0  # small integers: exact in fp32
