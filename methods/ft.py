"""FT-Clean and FT-Adv.: the whole visual tower fine-tuned with CLIP's own in-batch contrastive loss,
on clean images (FT-Clean) or on PGD images (FT-Adv., the shared training attack).

`L = s · norm(f) · T[y]ᵀ` (`[B, B]`), `loss = ½[CE(L, arange B) + CE(Lᵀ, arange B)]`: two images of
the same class are still each other's negatives, as in the original code.

    python tga_zsr.py --Method FT-Adv
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods import Method, register


def in_batch_contrastive_loss(image_features, class_text, logit_scale):
    """Symmetric CE between the B images and the B prompts of their labels."""
    f = F.normalize(image_features.float(), dim=-1)
    logits = logit_scale * f @ class_text.float().t()
    target = torch.arange(f.shape[0], device=f.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def ft_loss(model, x_train, y, text_features):
    """FT-Clean (x_train = x) / FT-Adv (x_train = x_adv)."""
    tokens = model.image_tokens(x_train)
    loss = in_batch_contrastive_loss(tokens[:, 0], text_features[y], model.logit_scale)
    return {"loss": loss, "contrastive": loss}


@register
class FTClean(Method):
    """FT-Clean: in-batch contrastive CE on clean images."""
    name, label, aliases, order = "ft_clean", "FT-Clean", ("FT-Clean", "FT_Clean", "FTClean"), 20

    def step(self, x, y, idx=None):
        return ft_loss(self.model, x, y, self.text)


@register
class FTAdv(Method):
    """FT-Adv.: in-batch contrastive CE on PGD images."""
    name, label, order = "ft_adv", "FT-Adv.", 30
    aliases = ("FT-Adv", "FT-Standard", "FT_Standard", "FT-Adv.", "FTAdv")

    def step(self, x, y, idx=None):
        return ft_loss(self.model, self.attack(self.model, x, y, self.text), y, self.text)
