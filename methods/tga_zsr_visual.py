"""The "Vision-based" row (paper Table 5): TGA-ZSR's losses on Grad-CAM maps instead of text-guided ones.

Same dataflow as `tga_zsr_loss`: the adversarial forward gives both the CE logits and A_adv;
A_ori comes from the frozen tower on clean images, A_cl from the trained tower on clean images.
The maps are full size (attention.GradCAM), so the distances are the explicit ones. In the
original code the map is computed in numpy and carries no gradient, so this row trains CE only;
we keep that by default and offer `--differentiable_cam` for what the paper describes.

Each image's Grad-CAM target is the top-scoring of the batch's label prompts (the original's
argmax over `T[y]`): a choice among the whole batch. When the global batch is split over processes
or micro-batches the candidates are the labels of the whole global batch (gathered), so the targets,
and the maps, are those of the batch in one piece. The trained tower's forwards go through its DDP
wrapper in multi-GPU training (`model.trainable_tower()`): their weight gradients are all-reduced.

    python tga_zsr.py --Method TGA-ZSR --atten_methods visual
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attention import GradCAM, map_distance_explicit
from methods import flag, register
from methods.tga_zsr import TGAZSR


def gradcam_tga_loss(model, frozen_model, cam_model, cam_frozen, x, x_adv, y, text_features, alpha, beta,
                     distance="l2", differentiable=False, candidates=None):
    """`CE + alpha · d(A_adv, A_ori) + beta · d(A_cl, A_ori)` on Grad-CAM maps; unless
    `differentiable`, the maps carry no gradient and only the CE trains (the original's behaviour).
    `candidates`: the labels whose prompts are the Grad-CAM targets (default y: the batch's own)."""
    out_size = model.image_tower.image_size[0]
    s = model.logit_scale
    t = text_features[y if candidates is None else candidates]
    trained = model.trainable_tower()
    if alpha == 0 and beta == 0:
        tok_adv = model.image_tokens(x_adv)
        a_adv = None
    else:
        a_adv, tok_adv = cam_model.maps(model.image_tower, x_adv, s, t, out_size, differentiable, through=trained)
    ce = F.cross_entropy(model.logits_from_tokens(tok_adv, text_features).float(), y)
    zero = ce.new_zeros(())
    if a_adv is None:
        return {"loss": ce, "ce": ce, "ar": zero, "amc": zero}
    a_ori, _ = cam_frozen.maps(frozen_model, x, s, t, out_size, differentiable=False)
    a_ori = a_ori.detach()
    ar = map_distance_explicit(a_adv, a_ori, distance, out_size) if alpha != 0 else zero
    amc = zero
    if beta != 0:
        a_cl, _ = cam_model.maps(model.image_tower, x, s, t, out_size, differentiable, through=trained)
        amc = map_distance_explicit(a_cl, a_ori, distance, out_size)
    return {"loss": ce + alpha * ar + beta * amc, "ce": ce, "ar": ar, "amc": amc}


@register
class TGAZSRVisual(TGAZSR):
    """The "Vision-based" row: TGA-ZSR's losses on Grad-CAM maps."""
    name, label, order = "tga_zsr_visual", "Vision-based", 80
    aliases = ("Vision-based", "TGA-ZSR-visual", "visual")
    flags = TGAZSR.flags + (
        flag("--differentiable_cam", action="store_true",
             help="visual variant: build the Grad-CAM map with create_graph so L_AR/L_AMC train "
                  "(the paper's intent; a deviation from the original, whose map carries no gradient)"),)
    run_name = TGAZSR.run_name + (("differentiable_cam", "dcam"),)

    def __init__(self, setup, differentiable_cam, **options):
        super().__init__(setup, **options)
        self.differentiable = differentiable_cam
        # One hook per tower for the whole run (the original leaks a hook per call).
        self.cams = (GradCAM(self.model.image_tower), GradCAM(self.frozen))
        self.candidates = None  # the global batch's labels when it is split (begin_batch)

    def begin_batch(self, chunks, split):
        super().begin_batch(chunks, split)
        # the labels of the whole global batch: every image's Grad-CAM target is chosen among them
        self.candidates = None if split.whole else split.gather(torch.cat([y for _, y, _ in chunks]))

    def step(self, x, y, idx=None):
        x_adv = self.attack(self.model, x, y, self.text)
        cam_model, cam_frozen = self.cams
        return gradcam_tga_loss(self.model, self.frozen, cam_model, cam_frozen, x, x_adv, y, self.text,
                                self.alpha, self.beta, self.distance, differentiable=self.differentiable,
                                candidates=self.candidates)
