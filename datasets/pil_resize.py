"""PIL's bilinear Resize + CenterCrop as tensor ops on any device, bit-identical to Pillow.

Pillow resizes an 8-bit image in two separable passes, horizontal then vertical, each with
fixed-point integer weights (`PRECISION_BITS` = 22 fractional bits) and rounding + clipping to
uint8 after each pass (libImaging/Resample.c: `precompute_coeffs`, `normalize_coeffs_8bpc`,
`ImagingResampleHorizontal_8bpc`, `ImagingResampleVertical_8bpc`). The weights are computed here in
Python doubles exactly as Pillow computes them in C doubles; each pass is then one float64 matmul
whose every value is an integer below 2^31, hence exact on a CPU or a GPU, in any summation order.

Only the output pixels inside the crop are computed (each output pixel of a pass depends on its
own weights only, so cropping after the resize equals resizing only the kept rows and columns).
`tests/test_decoded_cache.py` compares against Pillow on every image it makes; the decoded cache
(datasets/decoded_cache.py) checks 1 000 of its images against Pillow when it is built.
"""
from __future__ import annotations

import torch

PRECISION_BITS = 32 - 8 - 2  # Resample.c: 8 bits of pixel, 2 bits of headroom for negative weights


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def pil_weights(in_size: int, out_size: int) -> tuple[list[int], list[list[int]]]:
    """Per output index: the first input index and the integer weights of the bilinear filter
    (Pillow's `precompute_coeffs` on the whole image, then `normalize_coeffs_8bpc`)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear filter's support is 1
    firsts, weights = [], []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)   # C's (int) truncates toward zero, as int() does
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [_bilinear((x + xmin - center + 0.5) / filterscale) for x in range(xmax)]
        total = 0.0
        for v in w:  # summed in Pillow's order
            total += v
        if total != 0.0:
            w = [v / total for v in w]
        one = 1 << PRECISION_BITS
        firsts.append(xmin)
        weights.append([int(-0.5 + v * one) if v < 0 else int(0.5 + v * one) for v in w])
    return firsts, weights


def resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(size) output for an (h, w) image: the shorter side becomes `size`."""
    short, long = (h, w) if h <= w else (w, h)
    if short == size:
        return h, w
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if h <= w else (new_long, new_short)


def pass_matrix(in_size: int, out_size: int, keep: range, device) -> torch.Tensor:
    """One pass as a float64 [in_size, len(keep)] matrix of Pillow's integer weights, for the kept outputs."""
    firsts, weights = pil_weights(in_size, out_size)
    m = torch.zeros(in_size, len(keep), dtype=torch.float64)
    for col, i in enumerate(keep):
        m[firsts[i]:firsts[i] + len(weights[i]), col] = torch.tensor(weights[i], dtype=torch.float64)
    return m.to(device)


def _one_pass(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Resample the last dimension: Σ pixel·weight + ½, >> PRECISION_BITS, clipped to [0, 255].
    In float64 every product (≤ 255·2^22) and every partial sum (< 2^31) is an integer held exactly,
    whatever order the matmul adds them in, and dividing by 2^22 then flooring is the shift."""
    acc = x @ m + (1 << (PRECISION_BITS - 1))
    return acc.div_(1 << PRECISION_BITS).floor_().clamp_(0, 255)


class PilResizeCenterCrop:
    """uint8 [B, C, h, w] -> uint8 [B, C, crop, crop], equal to PIL `Resize(size)` (bilinear) then
    `CenterCrop(crop)` image by image. Tables are built once per input size and device."""

    def __init__(self, size: int = 256, crop: int = 224):
        self.size, self.crop = size, crop
        self._tables: dict = {}

    def __repr__(self) -> str:
        return f"PilResizeCenterCrop(size={self.size}, crop={self.crop})"

    def tables(self, h: int, w: int, device):
        key = (h, w, str(device))
        if key not in self._tables:
            out_h, out_w = resized_size(h, w, self.size)
            if min(out_h, out_w) < self.crop:
                raise ValueError(f"{h}x{w} resized to {out_h}x{out_w} is smaller than the crop {self.crop}")
            top = int(round((out_h - self.crop) / 2.0))   # torchvision's CenterCrop offsets
            left = int(round((out_w - self.crop) / 2.0))
            self._tables[key] = (pass_matrix(w, out_w, range(left, left + self.crop), device),
                                 pass_matrix(h, out_h, range(top, top + self.crop), device))
        return self._tables[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"PilResizeCenterCrop takes uint8 [B, C, H, W] batches, not {x.dtype} {tuple(x.shape)}")
        horizontal, vertical = self.tables(x.shape[2], x.shape[3], x.device)
        # Pillow resizes horizontally first, rounding to uint8 in between; a pass that keeps the size
        # is skipped there, which the identity weights (one tap of 2^22) reproduce exactly here.
        rows = _one_pass(x.to(torch.float64), horizontal)                # [B, C, h, crop]
        out = _one_pass(rows.transpose(2, 3), vertical)                  # [B, C, crop, crop], transposed
        return out.transpose(2, 3).to(torch.uint8).contiguous()

