"""Visual prompt tuning for TeCoA w/ prompting (`--adaptation_method VPT`).

CLIP stays frozen; only prompts are trained. Two kinds, combinable:

* pixel prompts (`--method`, `--prompt_size p`), added to the *normalised* image:
  `padding` a learnable border of width p, `random_patch` / `fixed_patch` a learnable p×p square
  at a random / the top-left position, `null_patch` nothing;
* token prompts (`--add_prompt_size N`): N learnable tokens of the visual width appended after the
  patch tokens, before `ln_pre`. As in TeCoA's code [faithful]: drawn from `randn` (std 1, not a
  width-scaled init), plus a positional embedding that is zero and never trained (a buffer).

The token prompts go in through a forward hook on `visual.patch_dropout` — the module open_clip's
VisionTransformer runs right after adding the positional embedding and right before `ln_pre` — so
open_clip is neither copied nor patched. `ImageTower` applies the pixel prompt after its
normalisation and drops the appended tokens from its output, so every caller (training, the
attacks, evaluation) sees prompted images and the usual `[B, 1+N_patches, D]` tokens.

    prompter = install_prompter(model, method="padding", prompt_size=30, add_prompt_size=100)
    python tga_zsr.py --Method tecoa_vpt --add_prompt_size 100 --method padding --prompt_size 30
"""
from __future__ import annotations

import torch
import torch.nn as nn

PIXEL_PROMPTS = ("padding", "random_patch", "fixed_patch", "null_patch")


class PixelPrompter(nn.Module):
    """A learnable additive pixel prompt on the normalised image (identity for `null_patch`)."""

    def __init__(self, kind: str, prompt_size: int, image_size: int):
        super().__init__()
        if kind not in PIXEL_PROMPTS:
            raise ValueError(f"unknown pixel prompt '{kind}', choose from {PIXEL_PROMPTS}")
        self.kind, self.size, self.image_size = kind, int(prompt_size), int(image_size)
        p, s = self.size, self.image_size
        if kind == "padding":
            if 2 * p >= s:
                raise ValueError(f"--prompt_size {p} leaves no image inside a {s}×{s} border")
            # Four strips: top/bottom are p×s, left/right fill the rows between them. Normal init,
            # as in the visual-prompting code TeCoA builds on.
            self.top = nn.Parameter(torch.randn(1, 3, p, s))
            self.bottom = nn.Parameter(torch.randn(1, 3, p, s))
            self.left = nn.Parameter(torch.randn(1, 3, s - 2 * p, p))
            self.right = nn.Parameter(torch.randn(1, 3, s - 2 * p, p))
        elif kind in ("random_patch", "fixed_patch"):
            if p > s or (kind == "random_patch" and p == s):
                raise ValueError(f"--prompt_size {p} leaves no room for a {kind} in a {s}×{s} image")
            self.patch = nn.Parameter(torch.randn(1, 3, p, p))

    def prompt(self, like: torch.Tensor) -> torch.Tensor | None:
        """The `[1, 3, s, s]` additive prompt, or None for null_patch."""
        p, s = self.size, self.image_size
        if self.kind == "null_patch":
            return None
        if self.kind == "padding":
            inner = torch.zeros(1, 3, s - 2 * p, s - 2 * p, device=like.device, dtype=self.top.dtype)
            middle = torch.cat([self.left, inner, self.right], dim=3)
            return torch.cat([self.top, middle, self.bottom], dim=2)
        canvas = torch.zeros(1, 3, s, s, device=like.device, dtype=self.patch.dtype)
        if self.kind == "fixed_patch":
            r = c = 0
        else:  # a new random position on every forward (global RNG), as the original does: its
            # `np.random.choice(s - p)` excludes s - p, so the last row / column is never covered [faithful]
            r, c = (int(v) for v in torch.randint(0, s - p, (2,)))
        canvas[:, :, r:r + p, c:c + p] = self.patch
        return canvas

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prompt = self.prompt(x)
        return x if prompt is None else x + prompt.to(x.dtype)


class TokenPrompter(nn.Module):
    """N learnable tokens + their own positional embedding (zeros, never trained), appended before ln_pre.

    As TeCoA's token prompter [faithful]: the tokens are `randn` (std 1, not open_clip's width^-0.5);
    the positional embedding starts at zero and stays zero, since the original's optimiser steps only
    the pixel and token prompters. A trainable one would receive the tokens' gradient and double
    every step. It is therefore a non-persistent buffer: not a parameter, not in the state dict.
    Older checkpoints that hold it as a trained parameter still load, with the same output: it is
    folded into the tokens (only their sum enters the model), see `_fold_positional_embedding`.
    """

    def __init__(self, num_tokens: int, width: int, init_scale: float = 1.0):
        super().__init__()
        self.tokens = nn.Parameter(init_scale * torch.randn(num_tokens, width))
        self.register_buffer("positional_embedding", torch.zeros(num_tokens, width), persistent=False)
        self.register_load_state_dict_pre_hook(self._fold_positional_embedding)
        self._handle = None

    @staticmethod
    def _fold_positional_embedding(module, state_dict, prefix, *args):
        """An older checkpoint's trained `positional_embedding` is added to its tokens (exact: the
        model only ever sees `tokens + positional_embedding`, and ours is zero)."""
        old = state_dict.pop(prefix + "positional_embedding", None)
        if old is not None and prefix + "tokens" in state_dict:
            state_dict[prefix + "tokens"] = state_dict[prefix + "tokens"] + old.to(state_dict[prefix + "tokens"])

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0]

    def _append(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        extra = (self.tokens + self.positional_embedding).to(output.dtype)
        return torch.cat([output, extra.expand(output.shape[0], -1, -1)], dim=1)

    def attach(self, visual: nn.Module) -> None:
        """Register the hook once on `visual.patch_dropout` (runs right before ln_pre)."""
        if self._handle is not None:
            raise RuntimeError("token prompts are already attached")
        self._handle = visual.patch_dropout.register_forward_hook(self._append)

    def detach_hook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class VisualPrompter(nn.Module):
    """Pixel + token prompts; the module `ImageTower` calls after normalising the pixels."""

    def __init__(self, pixel: PixelPrompter, tokens: TokenPrompter | None):
        super().__init__()
        self.pixel = pixel
        self.token_prompter = tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixel(x)


def install_prompter(model, method: str = "null_patch", prompt_size: int = 30,
                     add_prompt_size: int = 0) -> VisualPrompter:
    """Attach a VisualPrompter to `model` (a ClipModel): pixel prompt in the image tower, token
    prompts through the hook. Freezes the whole visual tower. Undo with `remove_prompter`."""
    if model.prompter is not None:
        raise RuntimeError("the model already has a prompter")
    tower = model.image_tower
    visual = model.visual
    width = visual.class_embedding.shape[-1]
    tokens = TokenPrompter(add_prompt_size, width) if add_prompt_size > 0 else None
    prompter = VisualPrompter(PixelPrompter(method, prompt_size, tower.image_size[0]), tokens)
    device = visual.class_embedding.device
    prompter.to(device)
    if tokens is not None:
        tokens.attach(visual)
    tower.prompter = prompter
    visual.requires_grad_(False)
    return prompter


def remove_prompter(model) -> None:
    """Remove the prompter and its hook: the model is the plain CLIP again."""
    prompter = model.prompter
    if prompter is None:
        return
    if prompter.token_prompter is not None:
        prompter.token_prompter.detach_hook()
    model.image_tower.prompter = None
