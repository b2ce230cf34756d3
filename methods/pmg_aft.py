"""PMG-AFT (Wang et al., CVPR 2024): CE on PGD images plus two KL terms that keep the trained model's
predictions close to the frozen pre-trained model's (on x_adv) and to its own clean predictions.

`L = CE(o_adv, y) + KL_sum(p_ori ‖ p_adv) + KL_sum(p_cl ‖ p_adv)`, with `o = norm(f(·)) · Tᵀ` raw
cosines (temperature 1, no ×100) and the KLs summed over batch and classes, as the original
computes them. The inner attack ascends the CE of the same temperature-1 logits. The original
normalises images with ImageNet mean/std; we use CLIP's preprocessing, as every other method.

The sums are over the global batch however it is split: a micro-batch's KL sums are scaled by
global batch / micro-batch (`BatchSplit.sum_scale`), which the loop's weighting and DDP's mean turn
back into the global sum (on several GPUs or with --accum_steps the KL weight would otherwise
shrink by processes × micro-batches). In one piece the scale is 1 and not applied: the numbers
are the original's.

    python tga_zsr.py --Method PMG-AFT
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods import Method, register
from methods.tga_zsr import _tokens


def cosine_logits(features, text_features):
    """PMG-AFT's logits: raw cosines, temperature 1 (no ×100)."""
    return F.normalize(features.float(), dim=-1) @ text_features.float().t()


def pmg_aft_attack_objective(model, y, text_features):
    """PMG-AFT's training attack: `objective(x_adv)`, the batch-mean CE of the same temperature-1 logits
    (raw cosines) as its loss. The original's PGD calls its own logit function, which re-normalises the
    ×100 text embedding: the scale cancels. Not the CE of the ×100 logits: at temperature 1 the softmax
    is nearly uniform, so every class's gradient counts and the sign step points elsewhere."""
    def objective(x_adv):
        return F.cross_entropy(cosine_logits(model.image_features(x_adv), text_features), y)
    return objective


def pmg_aft_loss(model, frozen_model, x, x_adv, y, text_features, sum_scale: float = 1.0):
    """`CE(o_adv, y) + KL_sum(o_ori ‖ o_adv) + KL_sum(o_cl ‖ o_adv)` on raw cosines.

    Written as the original computes it: `KLDivLoss(reduction='sum')(log_softmax(o_adv),
    softmax(o_ref))` = Σ_b Σ_c p_ref (log p_ref − log p_adv), i.e. KL(p_ref ‖ p_adv) in textbook
    notation, summed over batch and classes (not divided by B). The clean-branch target p_cl keeps
    its gradient, as in the original; the frozen branch has none. `sum_scale`: global batch /
    this micro-batch, when the batch is split (module docstring).
    """
    o_adv = cosine_logits(model.image_tokens(x_adv)[:, 0], text_features)
    with torch.no_grad():
        o_ori = cosine_logits(_tokens(frozen_model, x_adv)[:, 0], text_features)
    o_cl = cosine_logits(model.image_tokens(x)[:, 0], text_features)
    ce = F.cross_entropy(o_adv, y)
    log_p_adv = F.log_softmax(o_adv, dim=1)
    kl_ori = F.kl_div(log_p_adv, F.softmax(o_ori, dim=1), reduction="sum")
    kl_cl = F.kl_div(log_p_adv, F.softmax(o_cl, dim=1), reduction="sum")
    if sum_scale != 1.0:
        kl_ori, kl_cl = kl_ori * sum_scale, kl_cl * sum_scale
    return {"loss": ce + kl_ori + kl_cl, "ce": ce, "kl_ori": kl_ori, "kl_clean": kl_cl}


@register
class PMGAFT(Method):
    """PMG-AFT: CE + KL to the frozen model on x_adv + KL to the trained model on x."""
    name, label, aliases, order, needs_frozen = "pmg_aft", "PMG-AFT", ("PMG-AFT", "PMG", "PMGAFT"), 60, True

    def step(self, x, y, idx=None):
        x_adv = self.attack(self.model, x, y, objective=pmg_aft_attack_objective(self.model, y, self.text))
        return pmg_aft_loss(self.model, self.frozen, x, x_adv, y, self.text,
                            self.batch_split(x.shape[0]).sum_scale(x.shape[0]))
