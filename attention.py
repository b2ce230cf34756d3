"""Text-guided attention maps (TGA-ZSR, paper Sec. 3, Eq. 6–8) and the distances between them.

The map of an image is the similarity of each patch token with the text feature of the
image's class, min-maxed per image and upsampled bilinearly to the input size. The
Attention Refinement loss (Alpha, paper Eq. 6) and the Attention-based Model Constraint
(Beta, Eq. 7) are distances between such maps.

Upsampling is linear, so the L2 and cosine distances between two upsampled maps are exact
quadratic forms of the small maps (`UpsampledMapGeometry`): the 224×224 maps never need to be
built during training. `tests/test_attention.py` proves the equality.

The Grad-CAM maps of the "Vision-based" row (paper Table 5, `--atten_methods visual`) live here too
(`GradCAM`): the other kind of attention map the same losses compare.

    python -m pytest tests/test_attention.py -q
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

DISTANCES = ("l2", "cos", "l1")
# A torch.compile'd tower traces the Grad-CAM hook and its probe correctly on torch 2.14 (tested); on
# the floor release, 2.3, the compiled step loses the gradient into the hooked layer's own weights.
# Before 2.14 the Grad-CAM forwards of a compiled tower therefore run eagerly (the attacks stay compiled).
COMPILED_HOOKS_OK = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 14)


def fp32(device: torch.device):
    """Autocast off: the maps and their distances in fp32 under any autocast (fp16 on CUDA, bf16 on
    the CPU). Casting the inputs with `.float()` is not enough: autocast re-casts the inputs of
    `bmm` / `@` to half precision, and the 8-bit mantissa of bf16 moves a min-maxed map by ~7e-3."""
    return torch.autocast(device_type=device.type, enabled=False)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """fp32, or x itself if it is already fp32 or fp64 (the tests' exact references are fp64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def patch_attention(tokens: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """The g×g map before upsampling (steps 1–4 of docs/methods.md): `[B, 1+N, D]` tokens, `[B, D]` class text
    features -> `[B, 1, g, g]`.

    Step 1 normalises over dim=1, the *token* axis: each of the D channels is divided by its
    L2 norm across the 1+N tokens (CLS included), not each token by its own norm. This is what
    the original code does, and it changes the map (a channel that is large everywhere is
    damped), so we keep it [faithful]. Computed in fp32 even under autocast (`fp32`).
    """
    with fp32(tokens.device):
        tokens = tokens.float()
        t = text_features.float()
        f = tokens / tokens.norm(dim=1, keepdim=True)  # dim=1: across tokens, per channel
        s = torch.bmm(f[:, 1:, :], t[:, :, None]).squeeze(-1)  # [B, N]
    lo = s.min(dim=1, keepdim=True).values
    hi = s.max(dim=1, keepdim=True).values
    span = hi - lo
    # A tiny epsilon only where the map is constant; elsewhere the plain min-max.
    span = torch.where(span == 0, torch.full_like(span, 1e-12), span)
    s = (s - lo) / span
    n = s.shape[1]
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"{n} patch tokens do not form a square grid")
    return s.view(-1, 1, g, g)  # patches row-major, as the ViT lays them out


def upsample_map(grid: torch.Tensor, out_size: int) -> torch.Tensor:
    """Step 5 of the map: bilinear, align_corners=False, no antialias (fp32 under autocast)."""
    with fp32(grid.device):
        return F.interpolate(_wide(grid), size=(out_size, out_size), mode="bilinear", align_corners=False)


def text_guided_attention(tokens: torch.Tensor, text_features: torch.Tensor, out_size: int) -> torch.Tensor:
    """The full map (steps 1–5 of docs/methods.md): `[B, 1, out_size, out_size]` in [0, 1].

    `tokens`: `[B, 1+N, D]` from `ClipModel.image_tokens` (CLS first, after ln_post and proj).
    `text_features`: `[B, D]`, the normalised text feature of each image's class, without the
    ×100 logit scale. The normalisation of step 1 runs over dim=1 of the token tensor, i.e. each
    channel across the tokens: see `patch_attention` for why that axis.
    """
    return upsample_map(patch_attention(tokens, text_features), out_size)


def _linear_upsample_matrix(n: int, out: int, device, dtype=torch.float64) -> torch.Tensor:
    """`[out, n]` matrix U with U @ v = 1-D linear upsampling of v (align_corners=False)."""
    eye = torch.eye(n, dtype=dtype, device=device)[:, None, :]  # n signals of length n
    return F.interpolate(eye, size=out, mode="linear", align_corners=False)[:, 0, :].t()


class UpsampledMapGeometry:
    """Exact inner products of bilinearly upsampled g×g maps, computed on the g×g maps.

    Bilinear upsampling without antialias is separable: `up(M) = U M Uᵀ` with U the `[S, g]`
    1-D linear interpolation matrix. Hence `<up(A), up(B)> = Σ (G A G) ⊙ B` with `G = UᵀU`
    (`[g, g]`), which costs O(g³) instead of O(S²).
    """

    _cache: dict = {}

    def __init__(self, g: int, out_size: int, device, dtype=torch.float32):
        key = (g, out_size, str(device), dtype)
        if key not in self._cache:
            u = _linear_upsample_matrix(g, out_size, device)
            self._cache[key] = (u.t() @ u).to(dtype)
        self.gram = self._cache[key]

    def inner(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """`[B, 1, g, g]` x2 -> `[B]`: the inner product of the upsampled maps (fp32 under autocast)."""
        g = self.gram
        with fp32(a.device):
            return ((g @ a[:, 0].to(g.dtype) @ g) * b[:, 0].to(g.dtype)).sum(dim=(1, 2))


def _safe_sqrt(q: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 at 0, like torch.norm's backward for a zero vector.

    At the first training step the trained and frozen towers are identical, so the AMC
    difference is exactly zero; a plain sqrt would give an infinite gradient there.
    """
    q = q.clamp_min(0)
    pos = q > 0
    return torch.where(pos, torch.where(pos, q, torch.ones_like(q)).sqrt(), torch.zeros_like(q))


def map_distance(a: torch.Tensor, b: torch.Tensor, metric: str, out_size: int) -> torch.Tensor:
    """Distance between the upsampled versions of two `[B, 1, g, g]` maps (the distances of L_AR and L_AMC, Eq. 6–7).

    l2:  mean_b ‖up(a) − up(b)‖₂ over the out_size² values (plain, unsquared).
    cos: mean_b (1 − cos(up(a), up(b))), eps 1e-8 on each norm, as torch's cosine_similarity.
    l1:  mean |up(a) − up(b)| over all B·out_size² elements.
    l2 and cos use the exact Gram shortcut; l1 is not a quadratic form and is computed explicitly.
    Computed in fp32 (at least) even under autocast.
    """
    a, b = _wide(a), _wide(b)
    if metric == "l1":
        return (upsample_map(a, out_size) - upsample_map(b, out_size)).abs().mean()
    geo = UpsampledMapGeometry(a.shape[-1], out_size, a.device, a.dtype)
    if metric == "l2":
        d = a - b
        return _safe_sqrt(geo.inner(d, d)).mean()
    if metric == "cos":
        na = _safe_sqrt(geo.inner(a, a)).clamp_min(1e-8)
        nb = _safe_sqrt(geo.inner(b, b)).clamp_min(1e-8)
        return (1 - geo.inner(a, b) / (na * nb)).mean()
    raise ValueError(f"unknown distance '{metric}', choose from {DISTANCES}")


def map_distance_explicit(a: torch.Tensor, b: torch.Tensor, metric: str, out_size: int) -> torch.Tensor:
    """The straightforward computation on materialised upsampled maps (reference for tests; Comp-TGA
    and Grad-CAM train with it). Computed in fp32 even under autocast."""
    # Comp-TGA and Grad-CAM pass maps that are already full size: no identity resize for them.
    if a.shape[-1] != out_size:
        a, b = upsample_map(a, out_size), upsample_map(b, out_size)
    with fp32(a.device):
        ua, ub = _wide(a).flatten(1), _wide(b).flatten(1)
        if metric == "l2":
            return (ua - ub).norm(p=2, dim=1).mean()
        if metric == "cos":
            return (1 - F.cosine_similarity(ua, ub, dim=1, eps=1e-8)).mean()
        if metric == "l1":
            return (ua - ub).abs().mean()
    raise ValueError(f"unknown distance '{metric}', choose from {DISTANCES}")


# --- Grad-CAM (the Vision-based row, paper Table 5) -------------------------------------------------------
# For an image tower and the class text features T:
# 1. forward; a hook records the output of `visual.transformer.resblocks[-1].ln_1`, and the 49 patch
#    tokens of it are laid out as `act = [B, width, 7, 7]`;
# 2. scores `S = s · norm(F[:, 0]) · T[y]ᵀ` (`[B, B]`), target of row b = `argmax_j S[b, j]` (not
#    the diagonal: the original picks the top-scoring column);
# 3. `grad = ∂ Σ_b S[b, target_b] / ∂ act` (taken with `torch.autograd.grad`, so no model parameter
#    receives a `.grad`);
# 4. `w = mean_hw(grad)`, `cam = ReLU(Σ_c w_c · act_c)`, bilinear resize to the input size, then per
#    image `(cam − min) / max(cam − min)`.
#
# The original computes the map in numpy, so it carries no gradient and the row trains CE only
# [faithful, the default]. `differentiable=True` builds the map with `create_graph=True` (what the
# paper describes; a deviation, `--differentiable_cam`).
#
# The hook is registered once, when `GradCAM` is built, and records only inside `capture()`;
# `remove()` takes it off. The gradient is taken through a zero "probe" added to the activation,
# which keeps the computation differentiable inside a torch.compile'd tower (see `maps`). (The original registers a new hook on every call and leaks them.)
#
#     cam = GradCAM(model.image_tower)
#     maps, tokens = cam.maps(model.image_tower, x, model.logit_scale, T[y])


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
        self._probe = None
        self._handle = self.layer.register_forward_hook(self._record)

    def _record(self, module, inputs, output):
        if not self._recording:
            return None
        if output.shape != self._probe.shape:
            raise RuntimeError(f"Grad-CAM: target layer output {tuple(output.shape)}, expected "
                               f"{tuple(self._probe.shape)} (tokens of the tower and its prompts)")
        output = output + self._probe.to(output.dtype)  # + 0: the same values, see `maps`
        self._activation = output
        return output

    def _make_probe(self, tower, x: torch.Tensor) -> torch.Tensor:
        """Zeros of the target layer's output shape (class token, patches, prompt tokens)."""
        visual = getattr(tower, "visual", tower)
        token_prompter = getattr(getattr(tower, "prompter", None), "token_prompter", None)
        tokens = visual.positional_embedding.shape[0] + (token_prompter.num_tokens if token_prompter else 0)
        width = self.layer.normalized_shape[-1]
        shape = (x.shape[0], tokens, width) if self.batch_first else (tokens, x.shape[0], width)
        probe = torch.zeros(shape, device=x.device, requires_grad=True)
        if x.shape[0] > 1:  # a compiled tower takes any batch size (device.compile_module): so does the probe
            torch._dynamo.maybe_mark_dynamic(probe, 0 if self.batch_first else 1)
        return probe

    @contextlib.contextmanager
    def capture(self, tower, x: torch.Tensor):
        self._recording, self._activation, self._probe = True, None, self._make_probe(tower, x)
        try:
            yield
        finally:
            self._recording = False

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def maps(self, tower, x: torch.Tensor, logit_scale, class_text: torch.Tensor, out_size: int | None = None,
             differentiable: bool = False, through=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Grad-CAM maps `[B, 1, H, W]` of `tower` on x, and the tokens of that same forward.

        `class_text`: `[C, D]` normalised text features of the candidate targets: the labels of the
        batch (T[y], C = B, the original's), or of the whole global batch when it is split over
        processes and micro-batches. The map is detached unless `differentiable`. The tokens keep
        their graph (if any), so the caller can reuse this forward for its CE loss. `through`: the
        module the forward goes through, when not `tower` itself (its DDP wrapper in multi-GPU
        training, so that the weight gradients of this forward are all-reduced).
        """
        if self._handle is None:
            raise RuntimeError("GradCAM hook was removed")
        # A differentiable map needs the second derivative of attention: the fused SDPA kernels
        # (flash / memory-efficient, CPU and CUDA) have none, the math kernel is plain autograd ops.
        kernel = sdpa_kernel(SDPBackend.MATH) if differentiable else contextlib.nullcontext()
        target = through if through is not None else tower
        compiled = getattr(target, "_compiled_call_impl", None) is not None
        forward = target.forward if compiled and not COMPILED_HOOKS_OK else target   # .forward: eager
        with torch.enable_grad(), self.capture(tower, x), kernel:
            tokens = forward(x)
        act, probe = self._activation, self._probe
        self._activation = self._probe = None  # no reference kept between calls
        if act is None:
            # torch.compile does not guard its graphs on module hooks: a tower compiled (or a graph
            # cached) before this hook was registered never calls it. Build GradCAM before compiling.
            raise RuntimeError("Grad-CAM: the target layer's hook did not run (a torch.compile'd tower compiled "
                               "before the GradCAM was built ignores its hook; build it first)")
        cls = F.normalize(tokens[:, 0].float(), dim=-1)
        scores = logit_scale * cls @ class_text.float().t()                    # [B, C]
        target = scores.detach().argmax(dim=1)                                # row-wise argmax
        selected = scores.gather(1, target[:, None]).sum()
        # The gradient with respect to the activation is taken as the gradient with respect to a
        # zero tensor added to it (same values): the probe is made here, outside the tower, so it
        # is an input of a torch.compile'd tower too. The activation itself would be a second
        # output of the compiled graph with no autograd path to the tokens ("appears to not have
        # been used in the graph"); the frozen tower's activation would have no graph at all.
        (grad,) = torch.autograd.grad(selected, probe, retain_graph=True, create_graph=differentiable)
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
