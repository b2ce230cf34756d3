"""TIMA (Ma et al., "Text-Image Mutual Awareness"): no public code; our reading of the paper, with
every choice it leaves open a named flag whose default and reason are in configs/tima.yaml.

Text side: Minimum Hyperspherical Energy over the class text embeddings,
`L_MHE = mean_{j≠k} 1 / (1 + ‖t_j − t_k‖²)`, plus a distillation that keeps the tuned text close to
the original on fixed pre-trained image embeddings. Image side: adversarial fine-tuning with a
text-distance-based adaptive margin on the non-target logits plus a distillation to the pre-trained
model's predictions. The one method whose text tower trains.

    python tga_zsr.py --Method TIMA
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods import Method, flag, register
from methods.tga_zsr import _tokens


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
    """TIMA, from the paper (every weight is a named config value, see configs/tima.yaml).

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


TIMA_TEXT_PARAMS = ("all", "last_block", "projection")


def tima_text_parameters(model, which: str) -> dict:
    """The text-tower parameters TIMA tunes (names relative to model.clip)."""
    named = {n: p for n, p in model.clip.named_parameters() if not n.startswith("visual.") and n != "logit_scale"}
    if which == "all":
        return named
    keep = ("text_projection", "ln_final.")
    if which == "last_block":
        keep += (f"transformer.resblocks.{len(model.clip.transformer.resblocks) - 1}.",)
    return {n: p for n, p in named.items() if n.startswith(keep)}


@register
class TIMA(Method):
    """TIMA (no public code: every open choice is a flag, see configs/tima.yaml)."""
    name, label, aliases, order, needs_frozen, trains = "tima", "TIMA", ("TIMA",), 110, True, "visual+text"
    flags = (
        # Text side (Image-Aware Text tuning): MHE pushes the class text features apart; the text KD keeps
        # the tuned text's predictions on fixed pre-trained image embeddings close to the original's.
        # Equal weights: the two terms are O(1) each (MHE ≈ 0.3–0.5 for CLIP's class prompts, KD starts at 0).
        flag("--tima_mhe_weight", type=float, default=1.0, help="weight of the text MHE term"),
        flag("--tima_text_kd_weight", type=float, default=1.0,
             help="weight of the text distillation (tuned vs original text, on pre-trained image embeddings)"),
        # Image side (Text-Aware Image tuning): distillation of the adversarial predictions to the
        # pre-trained model's clean predictions (KL).
        flag("--tima_image_kd_weight", type=float, default=1.0,
             help="weight of the image distillation to the pre-trained model's predictions"),
        # Margin on each non-target logit: m·(1 − ‖t_y − t_j‖/2) in cosine units (×100 on the logits), so
        # semantically close classes get the largest margin; 0.02 = at most 2 logits, the size of typical
        # zero-shot logit gaps at ×100.
        flag("--tima_margin", type=float, default=0.02,
             help="largest adaptive margin, in cosine units (×logit scale on the logits)"),
        # The last block + ln_final + text_projection: enough to move the class embeddings; keeps the
        # backward through the text tower (recomputed every step) short and the rest of CLIP's language
        # knowledge intact.
        flag("--tima_text_params", default="last_block", choices=list(TIMA_TEXT_PARAMS),
             help="text-tower parameters TIMA tunes (all, last_block, projection)"),
    )
    run_name = (("tima_margin", "m"), ("tima_text_params", ""))

    def __init__(self, setup, tima_mhe_weight, tima_text_kd_weight, tima_image_kd_weight, tima_margin,
                 tima_text_params):
        super().__init__(setup)
        self.weights = {"mhe": tima_mhe_weight, "text_kd": tima_text_kd_weight,
                        "image_kd": tima_image_kd_weight, "margin": tima_margin}
        # TIMA trains part of the text tower: the one method where T is not constant.
        self.text_params = tima_text_parameters(self.model, tima_text_params)
        self.tokens = self.model.tokenizer(setup.prompts).to(self.text.device)  # token ids, once per run
        self.text_orig = self.text.detach().clone()                            # the pre-trained T₀

    def trainable_extra(self) -> dict:
        return self.text_params

    def step(self, x, y, idx=None):
        text_now = F.normalize(self.model.clip.encode_text(self.tokens, normalize=False).float(), dim=-1)
        x_adv = self.attack(self.model, x, y, text_now.detach())
        return tima_loss(self.model, self.frozen, x, x_adv, y, text_now, self.text_orig, self.weights)
