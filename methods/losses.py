"""Training losses. Each is a plain function of tensors and models; `methods.py` wires them
to attacks and configs.

TGA-ZSR (SPEC §1): `L = CE + Alpha · L_AR + Beta · L_AMC`, where
`L_AR  = d(A(f_θ(x_adv), T[y]), A(f_θ₀(x), T[y]))`  (Attention Refinement, paper Eq. 6) and
`L_AMC = d(A(f_θ(x),     T[y]), A(f_θ₀(x), T[y]))`  (Attention-based Model Constraint, Eq. 7).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attention import patch_attention, map_distance, map_distance_explicit, upsample_map


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
            return patch_attention(tokens, t)

        def dist(a, b):
            return map_distance(a, b, distance, out_size)
    else:
        t_neg = negative_text_features[y]

        def amap(tokens):  # both maps min-maxed and upsampled separately, then combined
            pos = upsample_map(patch_attention(tokens, t), out_size)
            neg = upsample_map(patch_attention(tokens, t_neg), out_size)
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


# --- baselines (SPEC §2–§4) -------------------------------------------------------------------

def in_batch_contrastive_loss(image_features, class_text, logit_scale):
    """FT-Clean / FT-Adv (SPEC §4): symmetric CE between B images and the B prompts of their labels.

    `L = s · norm(f) · T[y]ᵀ` (`[B, B]`), `½[CE(L, arange B) + CE(Lᵀ, arange B)]`. Two images of the
    same class are still each other's negatives, as in the original.
    """
    f = F.normalize(image_features.float(), dim=-1)
    logits = logit_scale * f @ class_text.float().t()
    target = torch.arange(f.shape[0], device=f.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def ft_loss(model, x_train, y, text_features):
    """FT-Clean (x_train = x) / FT-Adv (x_train = x_adv)."""
    tokens = model.image_tokens(x_train)
    loss = in_batch_contrastive_loss(tokens[:, 0], text_features[y], model.logit_scale)
    return {"loss": loss, "contrastive": loss}


def cosine_logits(features, text_features):
    """PMG-AFT's logits: raw cosines, temperature 1 (no ×100) [faithful]."""
    return F.normalize(features.float(), dim=-1) @ text_features.float().t()


def pmg_aft_attack_objective(model, y, text_features):
    """PMG-AFT's training attack (SPEC §4): `objective(x_adv)` for `train_pgd`, the batch-mean CE of the
    same temperature-1 logits (raw cosines, no ×100) as its loss [faithful]. The original's PGD calls its
    own logit function, which re-normalises the ×100 text embedding: the scale cancels. Not the §0 CE of
    the ×100 logits: at temperature 1 the softmax is nearly uniform, so every class's gradient counts and
    the sign step points elsewhere."""
    def objective(x_adv):
        return F.cross_entropy(cosine_logits(model.image_features(x_adv), text_features), y)
    return objective


def pmg_aft_loss(model, frozen_model, x, x_adv, y, text_features):
    """PMG-AFT (SPEC §4): `CE(o_adv, y) + KL_sum(o_ori ‖ o_adv) + KL_sum(o_cl ‖ o_adv)` on raw cosines.

    Written as the original computes it: `KLDivLoss(reduction='sum')(log_softmax(o_adv),
    softmax(o_ref))` = Σ_b Σ_c p_ref (log p_ref − log p_adv), i.e. in textbook notation
    KL(p_ref ‖ p_adv) (SPEC's "KL(softmax(o_adv) ‖ softmax(o_ref))" names the arguments in the
    order of the call), summed over batch and classes (not divided by B). The clean-branch target
    p_cl keeps its gradient, as in the original; the frozen branch has none.
    """
    o_adv = cosine_logits(model.image_tokens(x_adv)[:, 0], text_features)
    with torch.no_grad():
        o_ori = cosine_logits(_tokens(frozen_model, x_adv)[:, 0], text_features)
    o_cl = cosine_logits(model.image_tokens(x)[:, 0], text_features)
    ce = F.cross_entropy(o_adv, y)
    log_p_adv = F.log_softmax(o_adv, dim=1)
    kl_ori = F.kl_div(log_p_adv, F.softmax(o_ori, dim=1), reduction="sum")
    kl_cl = F.kl_div(log_p_adv, F.softmax(o_cl, dim=1), reduction="sum")
    return {"loss": ce + kl_ori + kl_cl, "ce": ce, "kl_ori": kl_ori, "kl_clean": kl_cl}


def fare_embedding_loss(embedding, reference):
    """FARE (SPEC §4): `mean_b ‖φ_θ(x_adv) − φ_θ₀(x)‖₂²` on unnormalised CLS embeddings (after proj)."""
    return (embedding.float() - reference.float()).pow(2).sum(dim=1).mean()


def gradcam_tga_loss(model, frozen_model, cam_model, cam_frozen, x, x_adv, y, text_features, alpha, beta,
                     distance="l2", differentiable=False):
    """TGA-ZSR with Grad-CAM maps (SPEC §2, the "Vision-based" row).

    Same dataflow as `tga_zsr_loss`: the adversarial forward gives both the CE logits and A_adv;
    A_ori from the frozen tower on clean images; A_cl from the trained tower on clean images.
    The maps are full size, so the distances are the explicit ones (`map_distance_explicit`).
    Unless `differentiable`, the maps carry no gradient and only the CE trains [faithful].
    """
    out_size = model.image_tower.image_size[0]
    s = model.logit_scale
    t = text_features[y]
    if alpha == 0 and beta == 0:
        tok_adv = model.image_tokens(x_adv)
        a_adv = None
    else:
        a_adv, tok_adv = cam_model.maps(model.image_tower, x_adv, s, t, out_size, differentiable)
    ce = F.cross_entropy(model.logits_from_tokens(tok_adv, text_features).float(), y)
    zero = ce.new_zeros(())
    if a_adv is None:
        return {"loss": ce, "ce": ce, "ar": zero, "amc": zero}
    a_ori, _ = cam_frozen.maps(frozen_model, x, s, t, out_size, differentiable=False)
    a_ori = a_ori.detach()
    ar = map_distance_explicit(a_adv, a_ori, distance, out_size) if alpha != 0 else zero
    amc = zero
    if beta != 0:
        a_cl, _ = cam_model.maps(model.image_tower, x, s, t, out_size, differentiable)
        amc = map_distance_explicit(a_cl, a_ori, distance, out_size)
    return {"loss": ce + alpha * ar + beta * amc, "ce": ce, "ar": ar, "amc": amc}


def hyperspherical_energy(text_features):
    """TIMA's MHE term: `mean_{j≠k} 1 / (1 + ‖t_j − t_k‖²)` over the normalised class text features."""
    t = F.normalize(text_features.float(), dim=-1)
    c = t.shape[0]
    d2 = (2 - 2 * t @ t.t()).clamp_min(0)            # ‖t_j − t_k‖² of unit vectors
    off = ~torch.eye(c, dtype=torch.bool, device=t.device)
    return (1.0 / (1.0 + d2))[off].mean()


def text_distance_margins(text_features, y, margin):
    """TIMA's text-distance-based adaptive margin `[B, C]`: `m · (1 − ‖t_y − t_j‖ / 2)` for j ≠ y, 0 at y.

    ‖t_y − t_j‖ ∈ [0, 2] for unit vectors, so a class whose text is close to the label's gets a
    margin near m and an opposite one gets 0. Computed on detached text features.
    """
    t = F.normalize(text_features.detach().float(), dim=-1)
    dist = (2 - 2 * t[y] @ t.t()).clamp_min(0).sqrt()   # [B, C]
    m = margin * (1 - dist / 2)
    return m.masked_fill(F.one_hot(y, t.shape[0]).bool(), 0.0)


def distill_kl(student_logits, teacher_logits):
    """KL(softmax(teacher) ‖ softmax(student)), mean over the batch."""
    return F.kl_div(F.log_softmax(student_logits.float(), dim=1), F.softmax(teacher_logits.float(), dim=1),
                    reduction="batchmean")


def tima_loss(model, frozen_model, x, x_adv, y, text_now, text_orig, weights: dict):
    """TIMA (SPEC §4, from the paper; every weight is a named config value, see configs/tima.yaml).

    Text side (Image-Aware Text tuning), gradient into the text tower only:
      `mhe_w · L_MHE(T_θ) + text_kd_w · KL(softmax(s·I₀·T₀ᵀ) ‖ softmax(s·I₀·T_θᵀ))`,
      with I₀ the frozen pre-trained image embeddings of the clean batch (fixed supervision).
    Image side (Text-Aware Image tuning), gradient into the visual tower only (T detached):
      `CE(s·cos(f_θ(x_adv), T) + s·M, y)` with M the text-distance adaptive margins on non-target
      logits, plus `image_kd_w · KL(softmax(s·I₀·T₀ᵀ) ‖ softmax(s·norm f_θ(x_adv)·Tᵀ))`.
    """
    s = model.logit_scale
    t_det = text_now.detach()
    with torch.no_grad():
        i0 = F.normalize(_tokens(frozen_model, x)[:, 0].float(), dim=-1)
        teacher = s * i0 @ text_orig.float().t()
    # text side
    mhe = hyperspherical_energy(text_now)
    text_kd = distill_kl(s * i0 @ F.normalize(text_now.float(), dim=-1).t(), teacher)
    # image side
    logits_adv = model.logits_from_tokens(model.image_tokens(x_adv), t_det).float()
    margins = text_distance_margins(t_det, y, weights["margin"])
    ce = F.cross_entropy(logits_adv + s * margins, y)
    image_kd = distill_kl(logits_adv, teacher)
    loss = (ce + weights["image_kd"] * image_kd) + (weights["mhe"] * mhe + weights["text_kd"] * text_kd)
    return {"loss": loss, "ce_margin": ce, "image_kd": image_kd, "mhe": mhe, "text_kd": text_kd}
