"""Template ensembles (`--templates ensemble`): several prompts per class, whose normalised text
features are averaged into one class feature (CLIP's prompt ensembling, Radford et al. 2021, §3.1.4).
The single template of each set stays the paper's (docs/evaluation.md); this is the alternative
the protocol audit compares it with (docs/audit.md).

* world sets: the set's own template behind each of the four caption prefixes the tiny CLIP was
  pre-trained with (`world_render.PREFIXES`: "a photo of", "this is a photo of", ...); words it
  never saw would only add untrained token embeddings;
* PCAM: its two fixed prompts name no class to put into a template: the ensemble is those prompts;
* every other set: CLIP's 80 ImageNet templates (open_clip's `OPENAI_IMAGENET_TEMPLATES`, what CLIP and
  CLIP_benchmark use for ImageNet) on the class names, lower-cased with `_ - /` as spaces.

    from datasets import get_dataset, ensemble_prompts
    per_class = ensemble_prompts(get_dataset("world_shape"))   # [C][K] prompts
"""
from __future__ import annotations

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from datasets.registry import ZeroShotData, clean_name
from datasets.world import PREFIXES, SUITE

FIXED_PROMPTS = ("PCAM",)  # sets whose prompts are whole sentences, not a template of the class name


def world_templates(template: str) -> list[str]:
    """`template` behind each pre-training prefix: "a photo of a {}." -> ["a photo of a {}.",
    "this is a photo of a {}.", "a picture of a {}.", "an image of a {}."]."""
    low = template.lower()
    head = next((p for p in sorted(PREFIXES, key=len, reverse=True) if low.startswith(p)), None)
    if head is None:
        raise ValueError(f"world template {template!r} starts with none of the caption prefixes {PREFIXES}")
    rest = template[len(head):]
    return [p + rest for p in PREFIXES]


def ensemble_prompts(data: ZeroShotData) -> list[list[str]]:
    """The prompts of each class, in label order, for the template ensemble of `data`'s set."""
    if data.name in SUITE:
        return [[t.format(c) for t in world_templates(SUITE[data.name]["template"])] for c in data.classnames]
    if data.name in FIXED_PROMPTS:
        return [[p] for p in data.prompts]
    return [[t(clean_name(c)) for t in OPENAI_IMAGENET_TEMPLATES] for c in data.classnames]
