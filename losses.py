"""Training losses. Each is a plain function of tensors and models; `methods.py` wires them
to attacks and configs.

TGA-ZSR (SPEC §1): `L = CE + Alpha · L_AR + Beta · L_AMC`, where
`L_AR  = d(A(f_θ(x_adv), T[y]), A(f_θ₀(x), T[y]))`  (Attention Refinement, paper Eq. 6) and
`L_AMC = d(A(f_θ(x),     T[y]), A(f_θ₀(x), T[y]))`  (Attention-based Model Constraint, Eq. 7).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attention import attention_grid, map_distance, map_distance_explicit, upsample_map


def _tokens(model, x):
    """Tokens from a ClipModel, an ImageTower or any callable returning `[B, 1+N, D]`."""
    fn = getattr(model, "image_tokens", model)
    return fn(x)


def tga_zsr_loss(model, frozen_model, x, x_adv, y, text_features, alpha, beta, distance="l2",
                 frozen_maps=None, negative_text_features=None):
    """SPEC §1 with the minimal dataflow: one forward per image set, T computed once by the caller.

    Returns `{loss, ce, ar, amc}`; `ar` and `amc` unweighted. A term whose weight is 0 is not
    computed (reported as 0): Alpha = Beta = 0 is exactly TeCoA's CE and costs one forward.
    `frozen_maps`: precomputed `[B, 1, g, g]` frozen clean maps (--cache_frozen_maps).
    `negative_text_features`: Comp-TGA (SPEC §3), `A ⊙ (1 − A_neg)` on the upsampled maps.
    """
    if alpha == 0 and beta == 0:  # TeCoA: logits only, no token projection needed
        ce = F.cross_entropy(model.logits(x_adv, text_features).float(), y)
        zero = ce.new_zeros(())
        return {"loss": ce, "ce": ce, "ar": zero, "amc": zero}

    out_size = model.image_tower.image_size[0]
    if beta != 0:
        # One forward of the trained tower on [x_adv; x]: the same per-sample results as two
        # forwards, with better use of the hardware (one larger batch, one backward).
        tok_adv, tok_cl = model.image_tokens(torch.cat([x_adv, x])).split(x.shape[0])
    else:
        tok_adv, tok_cl = model.image_tokens(x_adv), None
    ce = F.cross_entropy(model.logits_from_tokens(tok_adv, text_features).float(), y)
    zero = ce.new_zeros(())

    t = text_features[y]
    if negative_text_features is None:
        def amap(tokens):
            return attention_grid(tokens, t)

        def dist(a, b):
            return map_distance(a, b, distance, out_size)
    else:
        t_neg = negative_text_features[y]

        def amap(tokens):  # both maps min-maxed and upsampled separately, then combined
            pos = upsample_map(attention_grid(tokens, t), out_size)
            neg = upsample_map(attention_grid(tokens, t_neg), out_size)
            return pos * (1 - neg)

        def dist(a, b):  # full-size maps: the explicit distance (nothing to upsample)
            return map_distance_explicit(a, b, distance, out_size)

    if frozen_maps is not None:
        a_ori = frozen_maps
    else:
        with torch.no_grad():
            a_ori = amap(_tokens(frozen_model, x))
    ar = dist(amap(tok_adv), a_ori) if alpha != 0 else zero
    amc = dist(amap(tok_cl), a_ori) if beta != 0 else zero
    loss = ce + alpha * ar + beta * amc
    return {"loss": loss, "ce": ce, "ar": ar, "amc": amc}
