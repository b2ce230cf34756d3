"""A model as something to share: its description for the model card, and its export as a full
CLIP that plain open_clip loads (docs/evaluation.md).

`python report.py export RUN` writes `<RUN>/export/<run>.pt` (`{'state_dict', 'model_card',
'meta'}`): `open_clip.create_model(ARCH, pretrained=FILE)` loads it (ARCH with `-quickgelu` for
OpenAI-derived weights; the command prints the exact call). `--format hf_hub` writes a hub folder
(`open_clip_config.json` with `quick_gelu`, `open_clip_model.safetensors`, `model_card.json`,
`README.md`) that `open_clip.create_model("local-dir:FOLDER")` loads and `huggingface-cli upload`
publishes. Both carry the run's model card. Visual prompts (VPT runs) have no place in a plain
open_clip model: such runs are refused.

    python report.py export checkpoints/RUN --format hf_hub
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import open_clip
import torch
import yaml

from engine.checkpoint import file_digest, load_file, resolve_checkpoint
from engine.weights import load_visual_weights
from engine.model import CLIP_MEAN, CLIP_STD, build_model, install_prompts
from reports.model_card import CARD_NAME, build_card
from engine.settings import Settings, parse_args

log = logging.getLogger("tga_zsr")
FORMATS = ("open_clip", "hf_hub")


def weights_file(pretrained, model, resume_ckpt) -> Path | None:
    """The file whose bytes are the evaluated weights (for the card's sha256), if there is one."""
    if resume_ckpt is not None:
        return Path(resume_ckpt)
    if getattr(model, "weights_file", None):
        return Path(model.weights_file)
    p = Path(str(pretrained))
    return p if p.is_file() else None


def model_description(values: dict, model, resume_ckpt, method: str, label: str, run_dir: Path) -> dict:
    """The card's `model` block: what was evaluated, where it came from, how it was trained
    (`values`: the flags of the evaluation)."""
    pretrained = values["pretrained"]
    path = weights_file(pretrained, model, resume_ckpt)
    desc = {"name": f"{label} ({Path(run_dir).name})", "label": label, "method": method,
            "source": str(resume_ckpt) if resume_ckpt is not None else str(pretrained),
            "base_weights": str(pretrained), "arch": model.arch, "quick_gelu": model.quick_gelu,
            "weights_file": str(path) if path else None, "weights_sha256": file_digest(path, 64) if path else None}
    run_args = Path(run_dir) / "args.yaml"
    if resume_ckpt is not None and Path(resume_ckpt).parent == Path(run_dir) and run_args.is_file():
        desc["training"] = {"method": method, "args": yaml.safe_load(run_args.read_text())}
    return desc


def open_clip_arch(model) -> str:
    """The open_clip name that builds this model with its activation (`…-quickgelu` when needed)."""
    if model.quick_gelu and f"{model.arch}-quickgelu" in open_clip.list_models():
        return f"{model.arch}-quickgelu"
    return model.arch


def export_run(run: str, fmt: str = "open_clip", out_dir: str | None = None) -> Path:
    """Write the model of `run` (folder or checkpoint) in `fmt`; returns the file or folder written."""
    if fmt not in FORMATS:
        raise SystemExit(f"--format {fmt}: choose from {', '.join(FORMATS)}")
    ckpt = resolve_checkpoint(run)
    run_dir = ckpt.parent
    s = Settings.from_args(parse_args(["--resume", str(run), "--eval_only", "--device", "cpu"]))
    model = build_model(s.model, torch.device("cpu"))
    install_prompts(model, s.model)
    obj = load_file(ckpt)
    load_visual_weights(model, ckpt, obj)
    if model.prompter is not None:
        raise SystemExit(f"{run} has visual prompts (--adaptation_method VPT): a plain open_clip CLIP has no place "
                         f"for them, so an export would be a different model")
    card_path = run_dir / CARD_NAME
    card = (json.loads(card_path.read_text()) if card_path.is_file() else
            build_card([], model_description(s.values, model, ckpt, s.values["Method"] or "?", s.values["Method"] or "?",
                                             run_dir)))
    cfg = dict(model.model_cfg or {})
    cfg["quick_gelu"] = bool(model.quick_gelu)
    state = {k: v.detach().float().contiguous() for k, v in model.clip.state_dict().items()}
    out = Path(out_dir) if out_dir else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    arch = open_clip_arch(model)
    if fmt == "open_clip":
        path = out / f"{run_dir.name}.pt"
        meta = {"arch": model.arch, "quick_gelu": bool(model.quick_gelu), "openai": False}
        torch.save({"state_dict": state, "meta": meta, "model_card": json.dumps(card)}, path)
        how = (f"open_clip.create_model('{arch}', pretrained='{path}')" if open_clip.get_model_config(arch) else
               f"open_clip.create_model('<name of this config>', pretrained='{path}') after "
               f"open_clip.add_model_config(<its json>)")
    else:
        from safetensors.torch import save_file  # optional dependency, installed with open_clip
        path = out
        size = model.image_tower.image_size[0]
        config = {"model_cfg": cfg, "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD),
                                                       "interpolation": "bicubic", "resize_mode": "shortest",
                                                       "size": size}}
        (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, str(out / "open_clip_model.safetensors"), metadata={"format": "pt"})
        (out / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
        (out / "README.md").write_text(readme(card, arch))
        how = f"open_clip.create_model('local-dir:{out}')"
    log.info(f"exported {run_dir.name} ({fmt}) -> {path}\n  load it with: {how}")
    print(f"{path}\n{how}")
    return path


def readme(card: dict, arch: str) -> str:
    """A hub README: open_clip library tag, what the model is, and its evaluations."""
    m = card["model"]
    lines = ["---", "library_name: open_clip", "tags: [clip, adversarial-robustness, zero-shot]", "---", "",
             f"# {m.get('name')}", "", f"Architecture {m.get('arch')} ({'QuickGELU' if m.get('quick_gelu') else 'GELU'}), "
             f"method {m.get('method')}, from {m.get('base_weights')}; open_clip name `{arch}`.", "",
             "```python", "import open_clip", "model = open_clip.create_model('hf-hub:<org>/<name>')  "
             "# or 'local-dir:<this folder>'", "```", "", "| setting | robust | clean |", "|---|---|---|"]
    for e in card["evaluations"]:
        h = e["headline"]
        lines.append(f"| {', '.join(e['attacks'])} {e['threat_model']} ε {e['eps']:g}/255, attacks in "
                     f"{e['attack_precision']} | {h['robust']:.2f} | {h['clean']:.2f} |")
    lines += ["", "Full numbers and settings: `model_card.json`."]
    return "\n".join(lines) + "\n"
