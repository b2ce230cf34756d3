"""FARE (Schlarmann et al., ICML 2024): unsupervised adversarial fine-tuning of the image embedding.

`L = mean_b ‖φ_θ(x_adv) − φ_θ₀(x)‖₂²` on the unnormalised CLS embeddings (after the projection):
no text, no labels. The inner attack maximises the same loss: 10 steps of 1/255 with momentum
0.9 on the sign (`v = sign(0.9 v + sign(g))`). AdamW, trained in fp32 (configs/fare.yaml). The
original draws its random start without clipping `x + δ` to [0, 1]; we clip (every later iterate
is clipped in both).

    python tga_zsr.py --Method FARE
"""
from __future__ import annotations

import torch

from methods import Method, register


def fare_embedding_loss(embedding, reference):
    """`mean_b ‖φ_θ(x_adv) − φ_θ₀(x)‖₂²` on unnormalised CLS embeddings (after proj)."""
    return (embedding.float() - reference.float()).pow(2).sum(dim=1).mean()


@register
class FARE(Method):
    """FARE: unsupervised embedding loss; the inner attack maximises the same loss."""
    name, label, aliases, order, needs_frozen, precision = "fare", "FARE", ("FARE",), 70, True, "fp32"

    def step(self, x, y, idx=None):
        model = self.model
        with torch.no_grad():
            reference = self.frozen(x)[:, 0].float()

        def embedding_loss(xa):
            return fare_embedding_loss(model.image_tokens(xa)[:, 0], reference)

        loss = embedding_loss(self.attack(model, x, y, objective=embedding_loss))
        return {"loss": loss, "embedding_l2sq": loss}
