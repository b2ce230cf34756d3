"""CLIP on open_clip, with the token output TGA-ZSR needs.

The method needs every visual token after `ln_post` *and* the projection
(`F = [B, 1+N, D]`, CLS first). open_clip returns the pooled CLS after the
projection and the patch tokens before it, so `ImageTower` asks the visual tower for its
tokens through its public `forward_intermediates` and applies `visual.proj` to them. Nothing of open_clip is copied or patched.

Pixels enter in [0, 1] at any size: the bicubic resize and the CLIP normalisation happen
inside the model, so every attack perturbs raw pixels (the AutoAttack convention).

    from engine.model import load_clip
    model = load_clip("ViT-B-32", pretrained="openai")           # QuickGELU, as trained
    model = load_clip("tiny-vit", pretrained=None)                # random tiny test model
"""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F

from open_clip.pretrained import download_pretrained_from_hf

from engine.prompters import install_prompter
from engine.settings import ModelSettings
from engine.weights import HUB_CONFIG, load_strict, read_weights_file, read_weights_folder, weights_folder_kind

log = logging.getLogger("tga_zsr")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "models"
open_clip.add_model_config(MODEL_CONFIG_DIR)  # small test architectures, e.g. "tiny-vit"

# The original code's --arch values, and a few obvious spellings.
ARCH_ALIASES = {
    "vit_b32": "ViT-B-32", "vit-b/32": "ViT-B-32", "vit_b16": "ViT-B-16", "vit-b/16": "ViT-B-16",
    "vit_l14": "ViT-L-14", "vit-l/14": "ViT-L-14",
}
def resolve_arch(arch: str) -> str:
    """Map the original `--arch` spellings to open_clip names; accept config-file paths."""
    if arch.endswith(".json") and os.path.isfile(arch):
        name = Path(arch).stem
        open_clip.add_model_config(arch)
        return name
    return ARCH_ALIASES.get(arch.lower(), arch)


def base_arch(arch: str) -> str:
    return arch[: -len("-quickgelu")] if arch.endswith("-quickgelu") else arch


def arch_quick_gelu(arch: str) -> bool:
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"unknown architecture '{arch}'. open_clip knows: "
                         f"{', '.join(open_clip.list_models())}")
    return bool(cfg.get("quick_gelu", False))


def sequence_first(visual: nn.Module) -> None:
    """Run the tower's blocks in open_clip's sequence-first layout ([L, B, D], `batch_first=False`).

    Why: with batch-first blocks, `nn.MultiheadAttention` transposes its input to [L, B, D]
    without copying, and a linear layer on that non-contiguous tensor becomes a batched matmul
    against the weight expanded 50 times: on the CPU the QKV projection and its backward then
    take ~1.6× as long, ~10 % of every forward + backward with gradients (attacks, training).
    open_clip supports both layouts (its `forward_intermediates` makes the [L, B, D] copy
    contiguous); the weights, outputs and state dict are the same. Towers with other blocks
    are left as they are."""
    transformer = getattr(visual, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if not blocks or not all(type(b) is open_clip.transformer.ResidualAttentionBlock
                             and isinstance(b.attn, nn.MultiheadAttention) for b in blocks):
        return
    transformer.batch_first = False
    for b in blocks:
        b.attn.batch_first = False


class ImageTower(nn.Module):
    """open_clip visual tower + CLIP preprocessing; forward returns all projected tokens.

    Input: pixels in [0, 1], `[B, 3, H, W]`, any H, W. Output: `[B, 1+N, D]`, CLS first, every
    token after `ln_post` and `proj`. This is the module that is trained, copied for the frozen
    reference, and wrapped by DDP.
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        size = visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        # Visual prompt tuning (prompters.py): a pixel prompt added after the normalisation. Its
        # token prompts enter through a forward hook on the visual tower and are cut off below.
        self.prompter: nn.Module | None = None
        g = visual.grid_size
        self.num_patches = int(g[0] * g[1]) if isinstance(g, (tuple, list)) else int(g * g)
        sequence_first(visual)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:  # bicubic 224 -> 224 is the identity: skip it
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        x = self.preprocess(x)
        if self.prompter is not None:
            x = self.prompter(x)
        if cls_only:  # the pooled CLS embedding only
            return self._cls_embedding(x)
        # open_clip's public forward_intermediates: the last block's patch tokens through
        # ln_post (normalize_intermediates) and the pooled CLS after ln_post and proj, in one
        # pass through the blocks and without changing the tower's own forward.
        out = self.visual.forward_intermediates(x, indices=1, normalize_intermediates=True, output_fmt="NLC")
        # Prompt tokens appended after the patch tokens (if any) are dropped: the attention maps
        # need exactly the grid's patches.
        pooled, patches = out["image_features"], out["image_intermediates"][-1][:, :self.num_patches]
        proj = self.visual.proj
        if proj is not None:
            patches = patches @ proj
        return torch.cat([pooled[:, None, :], patches.to(pooled.dtype)], dim=1)

    def _cls_only_last_block(self) -> bool:
        """Whether the last block may be run for the CLS query alone: a plain open_clip ViT
        (CLS pooling, no attention pooler, standard pre-norm self-attention blocks)."""
        v = self.visual
        blocks = getattr(getattr(v, "transformer", None), "resblocks", None)
        if not blocks or len(blocks) < 2 or getattr(v, "attn_pool", None) is not None:
            return False
        last = blocks[-1]
        return (getattr(v, "pool_type", None) == "tok" and not getattr(v, "final_ln_after_pool", False)
                and type(last) is open_clip.transformer.ResidualAttentionBlock and not hasattr(last, "ln_1_kv")
                and isinstance(last.attn, nn.MultiheadAttention)
                and not getattr(v.transformer, "grad_checkpointing", False))

    def _cls_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, D]`: open_clip's pooled, projected CLS for preprocessed pixels.

        Logits need only the CLS output, and after the last block nothing mixes tokens: so the
        last block's attention is run for the CLS query only (keys and values from every token),
        and its MLP on the CLS token only. Same maths as `visual(x)`, about 1/12 less work for
        ViT-B/32 in every attack and evaluation step. Other towers use open_clip's forward."""
        if not self._cls_only_last_block():
            return self.visual(x)
        v = self.visual
        n = len(v.transformer.resblocks)
        out = v.forward_intermediates(x, indices=[n - 2], stop_early=True, intermediates_only=True,
                                      output_fmt="NLC", output_extra_tokens=True)
        tokens = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)
        last = v.transformer.resblocks[-1]
        if last.attn.batch_first:
            h = last.ln_1(tokens)                                  # [B, L, D]
            attended = last.attn(h[:, :1], h, h, need_weights=False)[0][:, 0]
        else:  # sequence-first blocks (see sequence_first): [L, B, D], as in the full forward
            h = last.ln_1(tokens.transpose(0, 1).contiguous())
            attended = last.attn(h[:1], h, h, need_weights=False)[0][0]
        cls = tokens[:, 0] + last.ls_1(attended)
        cls = cls + last.ls_2(last.mlp(last.ln_2(cls)))
        pooled = v.ln_post(cls)
        return pooled @ v.proj if v.proj is not None else pooled


class ClipModel(nn.Module):
    """The CLIP pieces every method uses: image tokens, normalised text features, logits."""

    def __init__(self, clip: nn.Module, arch: str, pretrained: str | None, quick_gelu: bool,
                 model_cfg: dict | None = None):
        super().__init__()
        self.clip = clip
        self.image_tower = ImageTower(clip.visual)
        self.arch = arch
        self.pretrained = pretrained
        self.quick_gelu = quick_gelu
        # open_clip's model config (what an export writes into open_clip_config.json)
        self.model_cfg = copy.deepcopy(model_cfg if model_cfg is not None else open_clip.get_model_config(arch))
        known = open_clip.get_model_config(arch) is not None
        context = ((self.model_cfg or {}).get("text_cfg") or {}).get("context_length", 77)
        self.tokenizer = open_clip.get_tokenizer(arch) if known else open_clip.SimpleTokenizer(context_length=context)
        # The text tower and logit_scale are never stepped; TIMA re-enables text.
        for name, p in clip.named_parameters():
            if not name.startswith("visual."):
                p.requires_grad_(False)

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def prompter(self) -> nn.Module | None:
        """The visual prompter (VPT) applied inside the image tower, or None."""
        return self.image_tower.prompter

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    @property
    def grid_size(self) -> int:
        g = self.visual.grid_size
        return g[0] if isinstance(g, (tuple, list)) else g

    weights_file: str | None = None  # the file the weights came from, when a folder or hub id named it

    # DistributedDataParallel around image_tower during multi-GPU training (distributed.py),
    # set with object.__setattr__ so that it is not a submodule (state_dict keys unchanged).
    ddp_tower = None

    def _trains_through_ddp(self) -> bool:
        """Only forwards that will be back-propagated into the weights go through DDP: the PGD
        attack (parameter grads off) and evaluation (eval mode, no grad) use the plain tower."""
        return (self.ddp_tower is not None and torch.is_grad_enabled() and self.image_tower.training
                and any(p.requires_grad for p in self.image_tower.parameters()))

    def trainable_tower(self) -> nn.Module:
        """The module a forward that will be back-propagated into the weights goes through: the DDP
        wrapper during multi-GPU training (its weight gradients are all-reduced), else the tower."""
        return self.ddp_tower if self._trains_through_ddp() else self.image_tower

    def image_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, 1+N, D]`: CLS then patch tokens, after ln_post and the projection."""
        if self._trains_through_ddp():
            return self.ddp_tower(x)
        return self.image_tower(x)

    def encode_text(self, prompts: list[str], normalize: bool = True, chunk: int = 1000) -> torch.Tensor:
        """Prompts -> `[C, D]` text features (L2-normalised unless `normalize=False`)."""
        device = self.clip.logit_scale.device
        feats = []
        for i in range(0, len(prompts), chunk):
            tokens = self.tokenizer(prompts[i:i + chunk]).to(device)
            feats.append(self.clip.encode_text(tokens, normalize=False))
        feats = torch.cat(feats)
        return F.normalize(feats, dim=-1) if normalize else feats

    def logits_from_tokens(self, tokens: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        cls = F.normalize(tokens[:, 0], dim=-1)
        return self.logit_scale * cls @ text_features.t().to(cls.dtype)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, D]` CLS embedding (unnormalised) = `image_tokens(x)[:, 0]`, without projecting the
        patch tokens: the cheaper path for attacks and evaluation, which only need logits."""
        tower = self.ddp_tower if self._trains_through_ddp() else self.image_tower
        return tower(x, cls_only=True)

    def logits(self, x: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """`exp(logit_scale) · norm(CLS) · text_featuresᵀ` for pixels x in [0, 1]."""
        cls = F.normalize(self.image_features(x), dim=-1)
        return self.logit_scale * cls @ text_features.t().to(cls.dtype)

    def frozen_image_tower(self) -> ImageTower:
        """A frozen copy of the visual tower only (the text tower stays shared)."""
        tower = copy.deepcopy(self.image_tower).eval()
        tower.requires_grad_(False)
        return tower


def resolve_hf_hub(model_id: str, cache_dir: str | None = None) -> Path:
    """The local folder of `hf-hub:org/name`: the Hugging Face cache's snapshot when it is there
    (no network needed), else downloaded through open_clip's own hub functions."""
    try:
        from huggingface_hub import snapshot_download  # open_clip's hub dependency
        return Path(snapshot_download(model_id, local_files_only=True, cache_dir=cache_dir))
    except Exception as cached_error:  # noqa: BLE001  (not in the cache: try the network)
        try:
            config = download_pretrained_from_hf(model_id, filename=HUB_CONFIG, cache_dir=cache_dir)
            download_pretrained_from_hf(model_id, cache_dir=cache_dir)  # the weights (safetensors first)
            return Path(config).parent
        except Exception as e:  # noqa: BLE001
            raise SystemExit(
                f"hf-hub:{model_id} is not in the local Hugging Face cache ({type(cached_error).__name__}) and could "
                f"not be downloaded ({type(e).__name__}: {e}). On an offline machine, run "
                f"`huggingface-cli download {model_id}` where there is a network and copy the cache "
                f"(~/.cache/huggingface/hub or $HF_HUB_CACHE), or pass the downloaded folder itself") from e


def _signature(cfg: dict) -> tuple:
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    return (cfg.get("embed_dim"), v.get("image_size"), v.get("layers"), v.get("width"), v.get("patch_size"),
            v.get("head_width", 64), float(v.get("mlp_ratio", 4.0)), t.get("context_length", 77), t.get("width"),
            t.get("heads", 8), t.get("layers"), float(t.get("mlp_ratio", 4.0)), bool(cfg.get("custom_text", False)))


def arch_of_config(cfg: dict, fallback: str) -> str:
    """The open_clip name whose config builds the same network (QuickGELU aside), else `fallback`."""
    sig = _signature(cfg)
    names = [n for n in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336") if n in open_clip.list_models()]
    for name in names + [n for n in open_clip.list_models() if not n.endswith("-quickgelu")]:
        known = open_clip.get_model_config(name)
        if known and "timm_model_name" not in known.get("vision_cfg", {}) and _signature(known) == sig:
            return name
    return fallback


def clip_from_config(cfg: dict, quick_gelu: bool) -> nn.Module:
    """An open_clip CLIP (random weights) from a model config, as open_clip's factory builds it."""
    cfg = copy.deepcopy(cfg)
    cfg["quick_gelu"] = quick_gelu
    if "multimodal_cfg" in cfg or "timm_model_name" in cfg.get("vision_cfg", {}):
        raise ValueError("only ViT CLIP models (open_clip's CLIP / CustomTextCLIP) are supported")
    cls = open_clip.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.CLIP
    return cls(**cfg)


def _load_folder(pretrained: str, quick_gelu: bool | None) -> ClipModel:
    """A whole CLIP from an open_clip hub folder, `hf-hub:org/name` or a transformers folder."""
    origin = pretrained[len("hf-hub:"):] if pretrained.startswith("hf-hub:") else None
    folder = resolve_hf_hub(origin) if origin else Path(pretrained)
    state, info = read_weights_folder(folder, origin)
    if quick_gelu is not None and quick_gelu != info["quick_gelu"]:
        raise ValueError(f"activation mismatch: {pretrained} was trained with "
                         f"{'QuickGELU' if info['quick_gelu'] else 'GELU'} ({info['quick_gelu_why']})")
    clip = clip_from_config(info["model_cfg"], info["quick_gelu"])
    transient = {n for n, _ in clip.named_buffers()} - set(clip.state_dict())
    try:
        load_strict(clip, {k: v for k, v in state.items() if k not in transient},
                    f"{pretrained} ({info['format']})", "CLIP")
    except SystemExit as e:  # a library call: ValueError, as for every other bad input here
        raise ValueError(str(e)) from None
    arch = arch_of_config(info["model_cfg"], Path(origin or folder).name)
    log.info(f"{pretrained}: {info['format']}, {arch}, "
             f"{'QuickGELU' if info['quick_gelu'] else 'GELU'} ({info['quick_gelu_why']})")
    model = ClipModel(clip.float(), arch, pretrained, info["quick_gelu"], model_cfg=info["model_cfg"])
    model.weights_file = info["weights_file"]
    return model


def is_weights_folder(pretrained) -> bool:
    p = str(pretrained or "")
    return p.startswith("hf-hub:") or (os.path.isdir(p) and weights_folder_kind(p) is not None)


def load_clip(arch: str = "ViT-B-32", pretrained: str | None = "openai", device="cpu",
              quick_gelu: bool | None = None) -> ClipModel:
    """Build CLIP with open_clip and load its weights.

    `pretrained`: an open_clip tag ("openai", "laion2b_s34b_b79k", ...), a local file (OpenAI
    TorchScript `.pt`, open_clip checkpoint, plain OpenAI-format state dict), an open_clip hub
    folder, `hf-hub:org/name`, a transformers CLIPModel folder, or None (random). A folder brings
    its own architecture: `arch` is then ignored.
    OpenAI weights are always built with QuickGELU, the activation they were trained with:
    plain open_clip "ViT-B-32" + OpenAI weights silently uses GELU and loses accuracy.
    `quick_gelu` forces the activation; asking for GELU with OpenAI weights is an error.
    """
    if is_weights_folder(pretrained):
        return _load_folder(str(pretrained), quick_gelu).to(device)
    if pretrained and os.path.isdir(str(pretrained)):
        read_weights_folder(pretrained)  # says what a weights folder must hold
    arch = resolve_arch(arch)
    want_qg = arch_quick_gelu(arch)
    state, info, tag = None, {"openai": False, "quick_gelu": None}, None
    if pretrained in (None, "", "none", "None"):
        pretrained = None
    elif os.path.isfile(str(pretrained)):
        state, info = read_weights_file(str(pretrained))
    else:
        tag = pretrained
        cfg = open_clip.get_pretrained_cfg(base_arch(arch), tag) or open_clip.get_pretrained_cfg(arch, tag)
        if not cfg:
            raise ValueError(f"'{tag}' is neither a local file nor an open_clip pretrained tag of {arch}; "
                             f"tags: {open_clip.list_pretrained_tags_by_model(base_arch(arch))}")
        info = {"openai": tag == "openai", "quick_gelu": cfg.get("quick_gelu", False)}

    trained_qg = True if info["openai"] else info.get("quick_gelu")
    if quick_gelu is not None and trained_qg is not None and quick_gelu != trained_qg:
        raise ValueError(
            f"activation mismatch: the weights in {pretrained} were trained with "
            f"{'QuickGELU' if trained_qg else 'GELU'} but quick_gelu={quick_gelu} was requested. "
            f"Use '{base_arch(arch)}-quickgelu' (or drop quick_gelu) for OpenAI weights.")
    use_qg = quick_gelu if quick_gelu is not None else (trained_qg if trained_qg is not None else want_qg)
    if not use_qg and want_qg:
        raise ValueError(f"{arch} is a QuickGELU architecture but GELU was requested")

    if tag is not None:
        try:
            clip = open_clip.create_model(base_arch(arch), pretrained=tag, force_quick_gelu=use_qg)
        except Exception as e:  # offline machines: say what to do instead
            raise RuntimeError(
                f"could not load open_clip weights '{tag}' for {arch} ({type(e).__name__}: {e}). "
                f"On an offline machine download the weights elsewhere and pass the file: "
                f"--pretrained /path/to/ViT-B-32.pt") from e
    else:
        # open_clip warns "No pretrained weights loaded for model ... Model initialized randomly." for
        # pretrained=None. With a weights file the weights are loaded right below, and that warning reads
        # as a failure: drop this one message while the model is built and say what was loaded instead.
        # With --pretrained none the model does stay random: the warning is true and stays.
        def not_random_init(record: logging.LogRecord) -> bool:
            return "initialized randomly" not in str(record.msg)
        # open_clip logs through the root logger (logging.warning); other versions may use their own
        quiet = [logging.getLogger(n) for n in ("", "open_clip", "open_clip.factory")] if state is not None else []
        for logger in quiet:
            logger.addFilter(not_random_init)
        try:
            clip = open_clip.create_model(base_arch(arch), pretrained=None, force_quick_gelu=use_qg)
        finally:
            for logger in quiet:
                logger.removeFilter(not_random_init)
        if state is not None:
            # Non-persistent buffers (open_clip's text attn_mask) appear in TorchScript state dicts.
            transient = {n for n, _ in clip.named_buffers()} - set(clip.state_dict())
            state = {k: v for k, v in state.items() if k not in transient}
            try:
                load_strict(clip, state, str(pretrained), f"CLIP ({arch})")
            except SystemExit as e:  # a library call: ValueError, as for every other bad input here
                raise ValueError(str(e)) from None
            kind = "OpenAI CLIP weights" if info["openai"] else "open_clip weights"
            log.info(f"loaded weights from {pretrained} ({kind}, QuickGELU={use_qg})")
    clip = clip.float()
    model = ClipModel(clip, base_arch(arch), pretrained, use_qg)
    return model.to(device)


def build_model(m: ModelSettings, device) -> ClipModel:
    """The model a run starts from (`--arch`, `--pretrained`), with an actionable error. Visual prompts
    (`--adaptation_method VPT`) are installed separately (`install_prompts`): the frozen copy of the
    original tower some methods need is taken before them."""
    pretrained = None if str(m.pretrained).lower() in ("none", "") else m.pretrained
    if is_weights_folder(pretrained) and resolve_arch(str(m.arch)) != "ViT-B-32":
        log.info(f"--pretrained {pretrained} brings its own architecture: --arch {m.arch} is not used")
    try:
        model = load_clip(m.arch, pretrained, device=device)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # wrong arch / activation / file: say so
        raise SystemExit(f"--arch {m.arch} --pretrained {m.pretrained}: {e}") from e
    log.info(f"model {model.arch} (QuickGELU={model.quick_gelu}) weights={pretrained}")
    return model


def install_prompts(model: ClipModel, m: ModelSettings) -> None:
    """`--adaptation_method VPT`: the visual prompts (engine/prompters.py), which freeze the visual tower.
    Before training, and before a checkpoint with prompts is loaded."""
    if m.adaptation_method == "VPT" and model.prompter is None:
        install_prompter(model, m.pixel_prompt, m.prompt_size, m.add_prompt_size)
