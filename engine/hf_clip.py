"""transformers `CLIPModel` weights -> open_clip, by key mapping (transformers is not needed).

A transformers CLIP folder holds `config.json` (`text_config`, `vision_config`, `projection_dim`)
and `model.safetensors` or `pytorch_model.bin`. The two libraries hold the same tensors under other
names, with three differences of layout: transformers keeps q, k and v as three linear layers
where open_clip's `nn.MultiheadAttention` has one `in_proj` (q, k, v stacked in that order), its
projections are `nn.Linear` weights (`[out, in]`) where open_clip keeps matrices it multiplies on
the right (`[in, out]`), and its position embeddings are `nn.Embedding` weights. The activation
is named in the config (`hidden_act`: `quick_gelu` for OpenAI's CLIP and what is fine-tuned
from it). Key names were recorded from transformers 5.24 (`tests/test_weight_formats.py` keeps
the list); older versions add `position_ids` buffers, which are dropped.

    from engine.hf_clip import open_clip_config, convert_state_dict
    cfg = open_clip_config(json.load(open("folder/config.json")))
    state = convert_state_dict(safetensors.torch.load_file("folder/model.safetensors"))
"""
from __future__ import annotations

import torch

# transformers name (inside one encoder layer) -> open_clip name (inside one residual block)
LAYER_KEYS = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
TOWERS = {"text_model": "", "vision_model": "visual."}
# keys outside the layers: transformers name -> (open_clip name, how the tensor changes)
FIXED_KEYS = {
    "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", None),
    "text_model.embeddings.position_embedding.weight": ("positional_embedding", None),
    "text_model.final_layer_norm.weight": ("ln_final.weight", None),
    "text_model.final_layer_norm.bias": ("ln_final.bias", None),
    "text_projection.weight": ("text_projection", "t"),
    "vision_model.embeddings.class_embedding": ("visual.class_embedding", None),
    "vision_model.embeddings.patch_embedding.weight": ("visual.conv1.weight", None),
    "vision_model.embeddings.position_embedding.weight": ("visual.positional_embedding", None),
    "vision_model.pre_layrnorm.weight": ("visual.ln_pre.weight", None),   # sic: transformers' spelling
    "vision_model.pre_layrnorm.bias": ("visual.ln_pre.bias", None),
    "vision_model.post_layernorm.weight": ("visual.ln_post.weight", None),
    "vision_model.post_layernorm.bias": ("visual.ln_post.bias", None),
    "visual_projection.weight": ("visual.proj", "t"),
    "logit_scale": ("logit_scale", None),
}
DROPPED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def is_transformers_config(config: dict) -> bool:
    return isinstance(config, dict) and "vision_config" in config and "text_config" in config


def open_clip_config(config: dict) -> dict:
    """The open_clip `model_cfg` of a transformers CLIP `config.json` (ViT towers only)."""
    if not is_transformers_config(config):
        raise ValueError("not a transformers CLIP config.json (no text_config / vision_config)")
    v, t = config["vision_config"], config["text_config"]
    acts = {v.get("hidden_act", "quick_gelu"), t.get("hidden_act", "quick_gelu")}
    if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
        raise ValueError(f"activations {sorted(acts)}: open_clip's CLIP has one activation, quick_gelu or gelu")
    for name, tower in (("vision_config", v), ("text_config", t)):
        if tower["hidden_size"] % tower["num_attention_heads"]:
            raise ValueError(f"{name}: hidden_size {tower['hidden_size']} is not a multiple of the heads")
    return {
        "embed_dim": int(config["projection_dim"]),
        "quick_gelu": acts == {"quick_gelu"},
        "vision_cfg": {
            "image_size": int(v["image_size"]), "layers": int(v["num_hidden_layers"]),
            "width": int(v["hidden_size"]), "head_width": int(v["hidden_size"] // v["num_attention_heads"]),
            "mlp_ratio": v["intermediate_size"] / v["hidden_size"], "patch_size": int(v["patch_size"]),
        },
        "text_cfg": {
            "context_length": int(t["max_position_embeddings"]), "vocab_size": int(t["vocab_size"]),
            "width": int(t["hidden_size"]), "heads": int(t["num_attention_heads"]),
            "layers": int(t["num_hidden_layers"]), "mlp_ratio": t["intermediate_size"] / t["hidden_size"],
        },
    }


def _layer_key(key: str) -> tuple[str, str] | None:
    """`vision_model.encoder.layers.3.mlp.fc1.weight` -> ("visual.transformer.resblocks.3.", "mlp.fc1.weight")."""
    for tower, prefix in TOWERS.items():
        head = f"{tower}.encoder.layers."
        if key.startswith(head):
            index, _, rest = key[len(head):].partition(".")
            return f"{prefix}transformer.resblocks.{index}.", rest
    return None


def convert_state_dict(state: dict) -> dict:
    """transformers CLIPModel state dict -> open_clip CLIP state dict. A key the mapping does not
    know is kept under its own name, so that the strict load afterwards names it."""
    out, qkv = {}, {}
    for key, value in state.items():
        if key in DROPPED:
            continue
        if key in FIXED_KEYS:
            name, change = FIXED_KEYS[key]
            out[name] = value.t().contiguous() if change == "t" else value
            continue
        layer = _layer_key(key)
        if layer is None:
            out[key] = value
            continue
        block, rest = layer
        module, _, kind = rest.rpartition(".")
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((block, kind), {})[module[len("self_attn."):][0]] = value
        elif module in LAYER_KEYS:
            out[f"{block}{LAYER_KEYS[module]}.{kind}"] = value
        else:
            out[key] = value
    for (block, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise ValueError(f"{block}: the {kind} of {', '.join(p + '_proj' for p in missing)} is missing")
        out[f"{block}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if "logit_scale" in out and out["logit_scale"].ndim == 0:
        out["logit_scale"] = out["logit_scale"].reshape(())
    return out
