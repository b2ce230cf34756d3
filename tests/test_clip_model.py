"""The CLIP wrapper: token output, text features, logits, weight files and the QuickGELU guard."""
import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F

from engine.weights import save_clip
from engine.model import CLIP_MEAN, CLIP_STD, load_clip


def test_cls_token_equals_open_clip_encode_image(tiny_model):
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        tokens = tiny_model.image_tokens(x)
        normed = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        ref = tiny_model.clip.encode_image(normed)
    assert tokens.shape == (2, 50, 64)
    # the same blocks on the same batch (forward_intermediates vs forward): equal in practice (measured
    # 0); 1e-6 = 4 ulps at |F| ≈ 2 for a kernel that orders a sum differently. A missing proj / ln_post: O(1).
    assert torch.allclose(tokens[:, 0], ref, atol=1e-6)


@pytest.mark.parametrize("prompts", [0, 3])
def test_cls_only_path_equals_open_clip_forward(prompts):
    """`image_features` runs the last block for the CLS query only: same values and same input
    gradients as open_clip's full forward, with and without appended VPT prompt tokens."""
    from engine.prompters import install_prompter
    torch.manual_seed(0)
    model = load_clip("tiny-vit", None)
    if prompts:
        install_prompter(model, "null_patch", add_prompt_size=prompts)
        with torch.no_grad():
            model.prompter.token_prompter.positional_embedding.normal_()
    tower = model.image_tower
    assert tower._cls_only_last_block()
    x = torch.rand(3, 3, 224, 224, requires_grad=True)
    fast = model.image_features(x)
    (g_fast,) = torch.autograd.grad(fast.square().sum(), x)
    full = tower.visual(tower.prompter(tower.preprocess(x)) if prompts else tower.preprocess(x))
    (g_full,) = torch.autograd.grad(full.square().sum(), x)
    # One query instead of 50: other GEMM shapes, so other fp32 summation orders over the width (64) and
    # the tokens (50) of O(1) terms: ~√(64·50)·u ≈ 3e-6 per value of |F| ≤ 2.2 (measured 6e-7), tolerance
    # 1e-5 + 1e-5·|F|. Dropping the last MLP or attending from the wrong token changes the CLS by O(1).
    assert torch.allclose(fast, full, atol=1e-5, rtol=1e-5)
    assert torch.allclose(fast, model.image_tokens(x)[:, 0], atol=1e-5, rtol=1e-5)
    # input gradients ≤ 0.07: the same relative roundings (1e-5·0.07 ≈ 1e-6), measured 5e-8
    assert torch.allclose(g_fast, g_full, atol=1e-6, rtol=1e-4)


def test_blocks_run_sequence_first_with_identical_outputs():
    """The towers are switched to open_clip's sequence-first block layout (faster projections
    with gradients on the CPU): same tokens as the batch-first layout, same state dict keys."""
    torch.manual_seed(0)
    model = load_clip("tiny-vit", None)
    v = model.visual
    assert v.transformer.batch_first is False and not v.transformer.resblocks[0].attn.batch_first
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        seq_first = model.image_tokens(x)
        v.transformer.batch_first = True
        for b in v.transformer.resblocks:
            b.attn.batch_first = True
        batch_first = model.image_tokens(x)
    # the same products in another memory layout: a kernel may sum in another order, as above (measured 0)
    assert torch.allclose(seq_first, batch_first, atol=1e-5, rtol=1e-5)
    assert set(model.state_dict()) == set(load_clip("tiny-vit", None).state_dict())


def test_cls_only_path_falls_back_for_other_pooling(tiny_model):
    v = tiny_model.visual
    old = v.pool_type
    try:
        v.pool_type = "avg"
        assert not tiny_model.image_tower._cls_only_last_block()
        x = torch.rand(2, 3, 224, 224)
        with torch.no_grad():
            assert torch.equal(tiny_model.image_features(x), v(tiny_model.image_tower.preprocess(x)))
    finally:
        v.pool_type = old


def test_patch_tokens_equal_ln_post_then_proj(tiny_model):
    x = torch.rand(2, 3, 224, 224)
    v = tiny_model.visual
    with torch.no_grad():
        tokens = tiny_model.image_tokens(x)
        normed = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        h = v.conv1(normed).flatten(2).transpose(1, 2)
        h = torch.cat([v.class_embedding.expand(2, 1, -1), h], dim=1) + v.positional_embedding
        h = v.ln_pre(h)
        seq_first = not v.transformer.batch_first  # clip_model.sequence_first: blocks take [L, B, D]
        h = h.transpose(0, 1) if seq_first else h
        for blk in v.transformer.resblocks:
            h = blk(h)
        h = h.transpose(0, 1) if seq_first else h
        want = v.ln_post(h)[:, 1:] @ v.proj
    # the blocks re-run by hand: equal in practice (measured 0); 1e-5 = 20 ulps at |F| ≈ 4 for another
    # summation order. Patch tokens before proj or without ln_post differ by O(1).
    assert torch.allclose(tokens[:, 1:], want, atol=1e-5)


def test_resize_inside_model(tiny_model):
    x = torch.rand(1, 3, 64, 64)
    big = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
    with torch.no_grad():
        # the same bicubic resize, the same batch: exact in practice (measured 0); 1e-6 = 2 ulps at |F| ≈ 4
        assert torch.allclose(tiny_model.image_tokens(x), tiny_model.image_tokens(big), atol=1e-6)


def test_text_features_normalised_and_logits(tiny_model):
    with torch.no_grad():
        t = tiny_model.encode_text(["a photo of a cat", "a photo of a dog", "a photo of a car"])
        x = torch.rand(2, 3, 224, 224)
        logits = tiny_model.logits(x, t)
        cls = F.normalize(tiny_model.image_tokens(x)[:, 0], dim=-1)
    assert t.shape == (3, 64)
    # each component rounds twice (division, norm) and the norm sums 64 squares: ≲ 8u = 5e-7
    assert torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-6)
    # logits take the CLS-only path: its direction differs by ≲ 3.4e-6 (see above); times s = 14.3, ≤ 5e-5
    # (measured 4e-7). Without the logit scale the logits (≤ 0.85 here) would be 14× smaller.
    assert torch.allclose(logits, tiny_model.clip.logit_scale.exp() * cls @ t.t(), atol=5e-5)


def test_logits_independent_of_batch_size(tiny_model):
    with torch.no_grad():
        t = tiny_model.encode_text(["a", "b", "c"])
        x = torch.rand(4, 3, 224, 224)
        full = tiny_model.logits(x, t)
        parts = torch.cat([tiny_model.logits(x[:1], t), tiny_model.logits(x[1:], t)])
    # batch 4 vs 1 + 3: other GEMM blockings, the CLS direction within ~√(64·50)·u = 3.4e-6, times s = 14.3:
    # ≤ 5e-5 (measured 5e-7); a batch-dependent logit (PMG-AFT's re-normalised scaled text) differs by O(1)
    assert torch.allclose(full, parts, atol=5e-5)


def test_text_tower_frozen_visual_trainable(tiny_model):
    assert all(not p.requires_grad for n, p in tiny_model.clip.named_parameters() if not n.startswith("visual."))
    assert tiny_model.clip.logit_scale.requires_grad is False


def _uses_quick_gelu(model):
    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.visual.modules())


def test_local_state_dict_round_trip(tiny_model, tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(tiny_model.clip.state_dict(), path)
    loaded = load_clip("tiny-vit", str(path))
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.image_tokens(x), tiny_model.image_tokens(x))
        assert torch.equal(loaded.encode_text(["a red cat"]), tiny_model.encode_text(["a red cat"]))
    path2 = tmp_path / "ours.pt"
    save_clip(tiny_model, str(path2))
    again = load_clip("tiny-vit", str(path2))
    with torch.no_grad():
        assert torch.equal(again.image_tokens(x), tiny_model.image_tokens(x))


def test_half_save_halves_the_file_and_loads_as_float32(tiny_model, tmp_path):
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    save_clip(tiny_model, str(full))
    save_clip(tiny_model, str(half), half=True)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    loaded = load_clip("tiny-vit", str(half))
    state = loaded.clip.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values() if torch.is_floating_point(v))
    for k, v in tiny_model.clip.state_dict().items():
        if torch.is_floating_point(v):  # float16 keeps ~3 significant digits
            # float16 rounds to 2⁻¹¹ = 4.9e-4 relative; below its smallest normal (6e-5) the spacing is
            # absolute: rtol 1e-3, atol 1e-4 (measured 3.4e-4 relative)
            assert torch.allclose(state[k], v, rtol=1e-3, atol=1e-4), k
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        # every weight off by ≤ 4.9e-4 relative, summed over 64-wide layers (≈ √64 × 4.9e-4 ≈ 4e-3
        # relative per layer) on tokens ≤ 4: ~1.5e-2 (measured 1.3e-3); weights read as garbage: O(1)
        assert torch.allclose(loaded.image_tokens(x), tiny_model.image_tokens(x), atol=2e-2)


def test_openai_format_file_gets_quickgelu_and_guard(tiny_model, tmp_path):
    # An OpenAI-format state dict (it carries input_resolution / context_length / vocab_size).
    sd = dict(tiny_model.clip.state_dict())
    sd.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "openai_format.pt"
    torch.save(sd, path)
    model = load_clip("tiny-vit", str(path))
    assert model.quick_gelu and _uses_quick_gelu(model)
    with pytest.raises(ValueError, match="QuickGELU"):
        load_clip("tiny-vit", str(path), quick_gelu=False)


def test_torchscript_archive_loads(tiny_model, tmp_path):
    # OpenAI ships TorchScript archives; build one from the tiny model's weights.
    traced = torch.jit.trace_module(tiny_model.clip.float().eval(),
                                    {"encode_image": torch.rand(1, 3, 224, 224)}, check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    traced.save(str(path))
    model = load_clip("tiny-vit", str(path))
    assert model.quick_gelu
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        # the same weights through the same forward: exact in practice; 1e-6 = 2 ulps at |F| ≈ 4
        assert torch.allclose(model.image_tokens(x), tiny_model.image_tokens(x), atol=1e-6)


def test_openai_tag_needs_quickgelu_everywhere():
    # The tag path cannot download here, but the activation decision happens first.
    with pytest.raises(ValueError, match="QuickGELU"):
        load_clip("ViT-B-32", "openai", quick_gelu=False)


def test_mismatched_file_names_keys(tiny_model, tmp_path):
    sd = dict(tiny_model.clip.state_dict())
    sd.pop("visual.proj")
    sd["visual.extra_thing"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="visual.proj"):
        load_clip("tiny-vit", str(path))


def test_vit_b32_token_shape():
    model = load_clip("vit_b32", None)
    with torch.no_grad():
        tokens = model.image_tokens(torch.rand(1, 3, 224, 224))
    assert tokens.shape == (1, 50, 512)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_weights_file_says_what_it_loaded_not_initialized_randomly(tiny_model, tmp_path):
    """open_clip's "No pretrained weights loaded ... Model initialized randomly." is dropped when a
    weights file is loaded right after, and one line on the tga_zsr logger says what was loaded; with
    no weights (`--pretrained none`) the warning is true and stays."""
    path = tmp_path / "ours.pt"
    save_clip(tiny_model, str(path))
    handlers = {name: _Records() for name in ("", "tga_zsr")}
    levels = {name: logging.getLogger(name).level for name in handlers}
    for name, h in handlers.items():
        logging.getLogger(name).addHandler(h)
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        filters = list(logging.getLogger().filters)
        load_clip("tiny-vit", str(path))
        from_file = [r.getMessage() for r in handlers[""].records]
        ours = [r.getMessage() for r in handlers["tga_zsr"].records]
        assert logging.getLogger().filters == filters                # the filter lasted for the load only
        for h in handlers.values():
            h.records.clear()
        load_clip("tiny-vit", None)
        random = [r.getMessage() for r in handlers[""].records]
    finally:
        for name, h in handlers.items():
            logging.getLogger(name).removeHandler(h)
            logging.getLogger(name).setLevel(levels[name])
    assert not any("initialized randomly" in m for m in from_file), from_file
    assert ours == [f"loaded weights from {path} (open_clip weights, QuickGELU={tiny_model.quick_gelu})"]
    assert any("initialized randomly" in m for m in random), random
