"""Grad-CAM maps for the "Vision-based" row of the TGA-ZSR table (SPEC §2, `--atten_methods visual`).

For an image tower and the class text features T:
1. forward; a hook records the output of `visual.transformer.resblocks[-1].ln_1`, and the 49 patch
   tokens of it are laid out as `act = [B, width, 7, 7]`;
2. scores `S = s · norm(F[:, 0]) · T[y]ᵀ` (`[B, B]`), target of row b = `argmax_j S[b, j]` (not
   the diagonal: the original picks the top-scoring column);
3. `grad = ∂ Σ_b S[b, target_b] / ∂ act` (taken with `torch.autograd.grad`, so no model parameter
   receives a `.grad`);
4. `w = mean_hw(grad)`, `cam = ReLU(Σ_c w_c · act_c)`, bilinear resize to the input size, then per
   image `(cam − min) / max(cam − min)`.

The original computes the map in numpy, so it carries no gradient and the row trains CE only
[faithful, the default]. `differentiable=True` builds the map with `create_graph=True` (what the
paper describes; a deviation, `--differentiable_cam`).

The hook is registered once, when `GradCAM` is built, and records only inside `capture()`;
`remove()` takes it off. (The original registers a new hook on every call and leaks them.)

    cam = GradCAM(model.image_tower)
    maps, tokens = cam.maps(model.image_tower, x, model.logit_scale, T[y])
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def target_layer(tower: nn.Module) -> nn.Module:
    """`visual.transformer.resblocks[-1].ln_1` of an ImageTower (or of a bare open_clip visual)."""
    visual = getattr(tower, "visual", tower)
    return visual.transformer.resblocks[-1].ln_1


class GradCAM:
    """Owns one forward hook on the target layer of `tower`; see the module docstring."""

    def __init__(self, tower: nn.Module):
        self.layer = target_layer(tower)
        visual = getattr(tower, "visual", tower)
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.num_patches = getattr(tower, "num_patches", None)
        self._recording = False
        self._activation = None
        self._handle = self.layer.register_forward_hook(self._record)

    def _record(self, module, inputs, output):
        if not self._recording:
            return None
        if not output.requires_grad:
            # The frozen tower: its activations need a graph to take the gradient of the score.
            output = output.detach().requires_grad_(True)
        self._activation = output
        return output

    @contextlib.contextmanager
    def capture(self):
        self._recording, self._activation = True, None
        try:
            yield
        finally:
            self._recording = False

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def maps(self, tower, x: torch.Tensor, logit_scale, class_text: torch.Tensor, out_size: int | None = None,
             differentiable: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Grad-CAM maps `[B, 1, H, W]` of `tower` on x, and the tokens of that same forward.

        `class_text`: `[B, D]` normalised text features of the images' labels (T[y]).
        The map is detached unless `differentiable`. The tokens keep their graph (if any), so the
        caller can reuse this forward for its CE loss.
        """
        if self._handle is None:
            raise RuntimeError("GradCAM hook was removed")
        # A differentiable map needs the second derivative of attention: the fused SDPA kernels
        # (flash / memory-efficient, CPU and CUDA) have none, the math kernel is plain autograd ops.
        kernel = sdpa_kernel(SDPBackend.MATH) if differentiable else contextlib.nullcontext()
        with torch.enable_grad(), self.capture(), kernel:
            tokens = tower(x)
        act = self._activation
        self._activation = None  # no reference kept between calls
        if act is None:
            raise RuntimeError("the target layer did not run")
        cls = F.normalize(tokens[:, 0].float(), dim=-1)
        scores = logit_scale * cls @ class_text.float().t()                    # [B, B]
        target = scores.detach().argmax(dim=1)                                # row-wise argmax
        selected = scores.gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(selected, act, retain_graph=True, create_graph=differentiable)
        n = self.num_patches or (act.shape[1] - 1)
        g = math.isqrt(n)
        # [B, L, C] (or [L, B, C] for sequence-first blocks) -> the patch tokens as [B, C, g, g], row-major.
        def grid(t):
            if not self.batch_first:  # sequence-first blocks ([L, B, D], clip_model.sequence_first)
                t = t.transpose(0, 1)
            return t[:, 1:1 + n].float().transpose(1, 2).reshape(t.shape[0], -1, g, g)
        a, gr = grid(act), grid(grad)
        if not differentiable:
            a, gr = a.detach(), gr.detach()
        weights = gr.mean(dim=(2, 3), keepdim=True)                           # [B, C, 1, 1]
        cam = F.relu((weights * a).sum(dim=1, keepdim=True))                  # [B, 1, g, g]
        size = out_size or x.shape[-1]
        cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)
        cam = cam - cam.amin(dim=(2, 3), keepdim=True)
        top = cam.amax(dim=(2, 3), keepdim=True)
        # The original divides by the max as is (NaN for an all-zero map); guard only that case.
        cam = cam / torch.where(top == 0, torch.ones_like(top), top)
        return cam, tokens
