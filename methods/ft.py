"""FT-Clean and FT-Adv.: the whole visual tower fine-tuned with CLIP's own in-batch contrastive loss,
on clean images (FT-Clean) or on PGD images (FT-Adv., the shared training attack).

`L = s · norm(f) · T[y]ᵀ` (`[B, B]`), `loss = ½[CE(L, arange B) + CE(Lᵀ, arange B)]`: two images of
the same class are still each other's negatives, as in the original code.

The loss couples every image of the batch with every prompt of it, so a batch split over GPUs or
`--accum_steps` micro-batches must not compute it piece by piece (the negatives would be the
piece's, a different objective). Then the loss is computed on the whole global batch
(`GlobalContrastive`, the "gradient cache" scheme): the features of every micro-batch are computed
without a graph and gathered from every process, the loss of the global batch and its gradient
with respect to this process's features are taken once, and each micro-batch's forward is run
again with its graph and back-propagated with that gradient. One forward more per micro-batch,
the memory of one micro-batch; the update is that of the global batch in one piece (to float
rounding). In one piece (one process, no accumulation) nothing of this runs: the numbers are the
original's.

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


class GlobalContrastive:
    """The in-batch contrastive loss of a global batch split into micro-batches and processes.

    `prepare` takes this process's micro-batches (training images already made), computes their
    CLS features without a graph, gathers every process's features and labels (`split.gather`),
    and takes the loss of the global batch and its gradient `g` with respect to this process's
    features. `loss(k)` is then micro-batch k's term: its features `f` recomputed with a graph,
    `L + c·(⟨f, g⟩ − ⟨f, g⟩.detach())`, whose value is the global loss L and whose gradient is
    `c · gᵀ ∂f/∂θ`; `c = world · rank batch / micro-batch` undoes the loop's weighting of the
    micro-batch and DDP's mean over processes, so the summed update is ∂L/∂θ of the global batch."""

    def __init__(self, model, text_features, chunks: list, split):
        self.model, self.text, self.split = model, text_features, split
        self.images = [x for x, _ in chunks]
        with torch.no_grad():
            own = torch.cat([model.image_tokens(x)[:, 0].float() for x, _ in chunks])
        labels = torch.cat([y for _, y in chunks])
        features = split.gather(own).requires_grad_(True)
        with torch.enable_grad():
            self.value = in_batch_contrastive_loss(features, text_features[split.gather(labels)], model.logit_scale)
            (grad,) = torch.autograd.grad(self.value, features)
        n = own.shape[0]
        mine = grad[split.rank * n:(split.rank + 1) * n]
        self.grads = list(mine.split([x.shape[0] for x in self.images]))
        self.value = self.value.detach()
        self.next = 0

    def loss(self, x: torch.Tensor) -> dict:
        k, self.next = self.next, self.next + 1
        if k >= len(self.images) or self.images[k].shape != x.shape:
            raise RuntimeError("GlobalContrastive: step() must follow begin_batch() over the same micro-batches")
        f = self.model.image_tokens(self.images[k])[:, 0].float()
        c = self.split.world * self.split.rank_batch / x.shape[0]
        inner = (f * self.grads[k]).sum()
        loss = self.value + c * (inner - inner.detach())
        return {"loss": loss, "contrastive": self.value}


class FTMethod(Method):
    """The FT rows: the contrastive loss on `train_images(x, y)`, on the global batch when it is split."""
    global_loss: GlobalContrastive | None = None

    def train_images(self, x, y):
        return x

    def begin_batch(self, chunks, split):
        super().begin_batch(chunks, split)
        self.global_loss = None
        if not split.whole:
            made = [(self.train_images(x, y), y) for x, y, _ in chunks]
            self.global_loss = GlobalContrastive(self.model, self.text, made, split)

    def step(self, x, y, idx=None):
        if self.global_loss is not None:
            return self.global_loss.loss(x)
        return ft_loss(self.model, self.train_images(x, y), y, self.text)


@register
class FTClean(FTMethod):
    """FT-Clean: in-batch contrastive CE on clean images."""
    name, label, aliases, order = "ft_clean", "FT-Clean", ("FT-Clean", "FT_Clean", "FTClean"), 20


@register
class FTAdv(FTMethod):
    """FT-Adv.: in-batch contrastive CE on PGD images."""
    name, label, order = "ft_adv", "FT-Adv.", 30
    aliases = ("FT-Adv", "FT-Standard", "FT_Standard", "FT-Adv.", "FTAdv")

    def train_images(self, x, y):
        return self.attack(self.model, x, y, self.text)
