"""Comp-TGA (the TGA-ZSR repository's later variant): TGA-ZSR's losses on the complementary map
`A(F, T[y]) ⊙ (1 − A(F, T_neg[y]))`, T_neg from the negative prompts "This is not a photo of a {}";
both maps are min-maxed and upsampled separately. Its row uses Alpha 0.10, Beta 0.07
(configs/comp_tga.yaml). The original re-seeds the RNG on every call, so its PGD random start is
the same noise at every step; here the start is drawn fresh at every step, as for every method.

    python tga_zsr.py --Method Comp-TGA
"""
from __future__ import annotations

import torch

from methods import register
from methods.tga_zsr import TGAZSR, tga_zsr_loss

NEGATIVE_TEMPLATE = "This is not a photo of a {}"


def negative_prompts(prompts: list, classnames: list | None = None) -> list:
    """"This is a photo of a {}" -> "This is not a photo of a {}", class by class."""
    out = []
    for i, p in enumerate(prompts):
        if "This is a photo of" in p:
            out.append(p.replace("This is a photo of", "This is not a photo of", 1))
        elif classnames:
            out.append(NEGATIVE_TEMPLATE.format(classnames[i]))
        else:
            raise ValueError(f"cannot negate the prompt '{p}': pass the class names")
    return out


@register
class CompTGA(TGAZSR):
    """Comp-TGA: TGA-ZSR with the complementary map A(T[y]) ⊙ (1 − A(T_neg[y]))."""
    name, label, aliases, order = "comp_tga", "Comp-TGA", ("Comp-TGA", "Comp_TGA", "CompTGA"), 95

    def __init__(self, setup, **options):
        super().__init__(setup, **options)
        with torch.no_grad():  # the text tower is frozen: the negative prompts are encoded once
            self.negative_text = self.model.encode_text(negative_prompts(setup.prompts, setup.classnames))

    def step(self, x, y, idx=None):
        x_adv = self.attack(self.model, x, y, self.text)
        return tga_zsr_loss(self.model, self.frozen, x, x_adv, y, self.text, self.alpha, self.beta, self.distance,
                            negative_text_features=self.negative_text)
