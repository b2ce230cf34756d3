"""Every published robust-CLIP format of SPEC §10 loads (strictly) and gives the source's features:
transformers CLIPModel folders, open_clip hub folders, `hf-hub:` from an offline cache, ViT-B/16 and
ViT-L/14 token grids; files that change nothing are refused.

Tolerances: the loaded model runs the same float32 operations on the same weights as the source,
in another order where transformers splits q, k, v (three matmuls instead of one): differences are
rounding of float32 sums of a few hundred terms, ~1e-6 relative; 1e-5 (the bound of
tests/test_clip_model.py for the CLS-only path) leaves room for it and nothing else.

    python -m pytest -q tests/test_weight_formats.py
"""
import copy
import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from attention import patch_attention, text_guided_attention
from engine.weights import load_visual_weights
from engine.model import CLIP_MEAN, CLIP_STD, load_clip

TOL = dict(atol=1e-5, rtol=1e-5)

# A small random transformers CLIPModel config (transformers 5.24 writes these fields, and more).
HF_CONFIG = {
    "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 24, "logit_scale_init_value": 2.6592,
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
                    "max_position_embeddings": 16, "vocab_size": 49408, "hidden_act": "quick_gelu",
                    "layer_norm_eps": 1e-05, "model_type": "clip_text_model"},
    "vision_config": {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 2, "num_hidden_layers": 2,
                      "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05,
                      "num_channels": 3, "model_type": "clip_vision_model"},
}
# The state-dict keys of transformers' CLIPModel, recorded from transformers 5.24.0 (layer 0 stands
# for every layer; older versions also save `*.embeddings.position_ids`, which the loader drops).
HF_TOP_KEYS = ["logit_scale", "text_model.embeddings.token_embedding.weight",
               "text_model.embeddings.position_embedding.weight", "text_model.final_layer_norm.weight",
               "text_model.final_layer_norm.bias", "vision_model.embeddings.class_embedding",
               "vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.position_embedding.weight",
               "vision_model.pre_layrnorm.weight", "vision_model.pre_layrnorm.bias",
               "vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias",
               "visual_projection.weight", "text_projection.weight"]
HF_LAYER_KEYS = ["self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight",
                 "self_attn.v_proj.bias", "self_attn.q_proj.weight", "self_attn.q_proj.bias",
                 "self_attn.out_proj.weight", "self_attn.out_proj.bias", "layer_norm1.weight", "layer_norm1.bias",
                 "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "layer_norm2.weight",
                 "layer_norm2.bias"]


def hf_shape(key, cfg):
    t, v, d = cfg["text_config"], cfg["vision_config"], cfg["projection_dim"]
    tower = t if key.startswith("text_model") else v
    w, m = tower["hidden_size"], tower["intermediate_size"]
    grid = (v["image_size"] // v["patch_size"]) ** 2
    fixed = {"logit_scale": (), "text_model.embeddings.token_embedding.weight": (t["vocab_size"], w),
             "text_model.embeddings.position_embedding.weight": (t["max_position_embeddings"], w),
             "vision_model.embeddings.class_embedding": (w,),
             "vision_model.embeddings.patch_embedding.weight": (w, 3, v["patch_size"], v["patch_size"]),
             "vision_model.embeddings.position_embedding.weight": (grid + 1, w),
             "visual_projection.weight": (d, v["hidden_size"]), "text_projection.weight": (d, t["hidden_size"])}
    if key in fixed:
        return fixed[key]
    if "fc1.weight" in key:
        return (m, w)
    if "fc1.bias" in key:
        return (m,)
    if "fc2.weight" in key:
        return (w, m)
    return (w, w) if key.endswith("proj.weight") else (w,)


def recorded_hf_state(cfg, seed=0):
    """A random CLIPModel state dict under the recorded key names (LayerNorm weights near 1)."""
    g = torch.Generator().manual_seed(seed)
    keys = list(HF_TOP_KEYS)
    for tower in ("text_model", "vision_model"):
        n = cfg["text_config" if tower == "text_model" else "vision_config"]["num_hidden_layers"]
        keys += [f"{tower}.encoder.layers.{i}.{k}" for i in range(n) for k in HF_LAYER_KEYS]
    state = {}
    for k in keys:
        x = 0.05 * torch.randn(hf_shape(k, cfg), generator=g)
        state[k] = 1 + x if ("norm" in k and k.endswith("weight")) else x
    state["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return state


def hf_image_features(sd, cfg, pixels):
    """transformers' CLIP image features written out from its definition (q, k, v separate,
    `pre_layrnorm`, CLS after `post_layernorm`, `visual_projection`): the reference, independent of
    hf_clip.py. `pixels` are normalised."""
    v = cfg["vision_config"]
    w, heads, eps = v["hidden_size"], v["num_attention_heads"], v["layer_norm_eps"]
    act = (lambda h: h * torch.sigmoid(1.702 * h)) if v["hidden_act"] == "quick_gelu" else F.gelu

    def p(name):
        return sd[f"vision_model.{name}"]

    def ln(x, name):
        return F.layer_norm(x, (w,), p(f"{name}.weight"), p(f"{name}.bias"), eps)

    x = F.conv2d(pixels, p("embeddings.patch_embedding.weight"), stride=v["patch_size"]).flatten(2).transpose(1, 2)
    x = torch.cat([p("embeddings.class_embedding").expand(x.shape[0], 1, w), x], 1)
    x = ln(x + p("embeddings.position_embedding.weight"), "pre_layrnorm")
    for i in range(v["num_hidden_layers"]):
        def lin(h, name, i=i):
            return F.linear(h, p(f"encoder.layers.{i}.{name}.weight"), p(f"encoder.layers.{i}.{name}.bias"))
        h = ln(x, f"encoder.layers.{i}.layer_norm1")
        q, k, val = (lin(h, f"self_attn.{n}_proj").view(*h.shape[:2], heads, -1).transpose(1, 2) for n in "qkv")
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ val
        x = x + lin(a.transpose(1, 2).reshape(h.shape), "self_attn.out_proj")
        x = x + lin(act(lin(ln(x, f"encoder.layers.{i}.layer_norm2"), "mlp.fc1")), "mlp.fc2")
    return ln(x[:, 0], "post_layernorm") @ sd["visual_projection.weight"].t()


def normalise(x):
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_transformers_folder_gives_the_source_image_features(tmp_path, act):
    cfg = copy.deepcopy(HF_CONFIG)
    cfg["text_config"]["hidden_act"] = cfg["vision_config"]["hidden_act"] = act
    folder = tmp_path / "hf_clip"
    folder.mkdir()
    try:  # the real library when this machine has it (not a dependency of the project)
        from transformers import CLIPConfig, CLIPModel
        torch.manual_seed(0)
        source = CLIPModel(CLIPConfig(**{k: v for k, v in cfg.items() if k != "architectures"})).eval()
        source.save_pretrained(folder)
        state = {k: v.detach() for k, v in source.state_dict().items()}
    except ImportError:  # else the recorded key list
        source = None
        state = recorded_hf_state(cfg)
        save_file(state, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(cfg))
    model = load_clip("ignored-arch", str(folder))
    assert model.quick_gelu == (act == "quick_gelu")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf_image_features(state, cfg, normalise(x))
        assert torch.allclose(model.image_features(x), want, **TOL)
        assert torch.allclose(model.image_tokens(x)[:, 0], want, **TOL)
        if source is not None:
            ref = source.get_image_features(pixel_values=normalise(x))
            ref = getattr(ref, "pooler_output", ref)
            assert torch.allclose(want, ref, **TOL)


def test_transformers_folder_with_a_missing_key_names_it(tmp_path):
    state = recorded_hf_state(HF_CONFIG)
    del state["vision_model.encoder.layers.1.mlp.fc2.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    with pytest.raises(ValueError, match=r"missing keys: \['visual.transformer.resblocks.1.mlp.c_proj.bias'\]"):
        load_clip("x", str(tmp_path))


def write_hub_folder(folder, model, weights="open_clip_model.safetensors", quick_gelu=True):
    folder.mkdir(parents=True)
    cfg = dict(model.model_cfg)
    if quick_gelu is None:
        cfg.pop("quick_gelu", None)
    else:
        cfg["quick_gelu"] = quick_gelu
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    state = {k: v.contiguous() for k, v in model.clip.state_dict().items()}
    if weights.endswith(".safetensors"):
        save_file(state, str(folder / weights))
    else:
        torch.save(state, folder / weights)


def same_logits(a, b):
    x = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        t = a.encode_text(["a photo of a cat", "a photo of a dog", "a ship"])
        return torch.allclose(a.logits(x, t), b.logits(x, b.encode_text(["a photo of a cat", "a photo of a dog",
                                                                          "a ship"])), **TOL)


@pytest.mark.parametrize("weights", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_open_clip_hub_folder_round_trip(tiny_model, tmp_path, weights):
    write_hub_folder(tmp_path / "hub", tiny_model, weights)
    loaded = load_clip("vit_b32", str(tmp_path / "hub"))
    assert loaded.arch == "tiny-vit" and loaded.quick_gelu
    assert same_logits(tiny_model, loaded)
    plain = open_clip.create_model(f"local-dir:{tmp_path / 'hub'}")  # the same folder for plain open_clip
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in loaded.clip.state_dict().items())


def fake_hf_cache(root, repo, model, quick_gelu):
    """The layout huggingface_hub leaves in its cache: models--org--name/{refs/main, snapshots/<rev>/}."""
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("0123abcd")
    write_hub_folder(base / "snapshots" / "0123abcd", model, quick_gelu=quick_gelu)


def test_hf_hub_loads_offline_from_the_cache_with_activation_from_config_or_origin(tiny_model, tmp_path,
                                                                                  monkeypatch):
    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    fake_hf_cache(tmp_path, "someone/tiny-robust-clip", tiny_model, quick_gelu=True)
    fake_hf_cache(tmp_path, "chs20/fare2-clip", tiny_model, quick_gelu=None)   # OpenAI-derived, config silent
    fake_hf_cache(tmp_path, "someone/laion-clip", tiny_model, quick_gelu=None)  # config silent: GELU
    a = load_clip("vit_b32", "hf-hub:someone/tiny-robust-clip")
    assert a.quick_gelu and same_logits(tiny_model, a)
    assert load_clip("vit_b32", "hf-hub:chs20/fare2-clip").quick_gelu
    assert not load_clip("vit_b32", "hf-hub:someone/laion-clip").quick_gelu
    with pytest.raises(SystemExit, match="not in the local Hugging Face cache"):
        load_clip("vit_b32", "hf-hub:someone/absent")


def test_a_file_that_changes_nothing_is_refused(tiny_model, tmp_path):
    torch.save(tiny_model.visual.state_dict(), tmp_path / "same.pt")
    with pytest.raises(SystemExit, match="changes nothing"):
        load_visual_weights(copy.deepcopy(tiny_model), tmp_path / "same.pt")
    changed = {k: v + 0.01 for k, v in tiny_model.visual.state_dict().items()}
    torch.save(changed, tmp_path / "changed.pt")
    load_visual_weights(copy.deepcopy(tiny_model), tmp_path / "changed.pt")  # a real change loads


@pytest.mark.parametrize("patch,width,grid", [(16, 48, 14), (14, 80, 16)])  # ViT-B/16 and ViT-L/14 grids
def test_other_patch_sizes_token_grid_cls_path_and_map(tmp_path, patch, width, grid):
    name = f"tiny-p{patch}-w{width}"
    (tmp_path / f"{name}.json").write_text(json.dumps({
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": width, "head_width": 16, "patch_size": patch},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    torch.manual_seed(0)
    model = load_clip(str(tmp_path / f"{name}.json"), None).eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        tokens = model.image_tokens(x)
        assert tokens.shape == (2, 1 + grid * grid, 32)
        full = model.clip.encode_image(normalise(x))           # open_clip's own forward
        assert torch.allclose(model.image_features(x), full, **TOL)   # CLS-only last block
        assert torch.allclose(tokens[:, 0], full, **TOL)
        t = model.encode_text(["a photo of a cat", "a photo of a dog"])
        assert patch_attention(tokens, t).shape == (2, 1, grid, grid)
        maps = text_guided_attention(tokens, t, 224)
    assert maps.shape == (2, 1, 224, 224) and maps.min() >= 0 and maps.max() <= 1
