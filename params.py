"""Command-line flags of tga_zsr.py, with the original code's names and defaults (SPEC §8).

Defaults are layered: parser defaults < `configs/<method>.yaml` of the chosen `--Method` <
the resumed run's `args.yaml` < the protocol (`--protocol NAME`: configs/protocols/NAME.yaml) <
the file given with `-c/--config` < the mini learning rate
(`--mini_lr`) < flags on the command line (the CLI always wins). ε and step sizes are in 1/255
units, as floats. Each method adds its own flags (methods.py `flags`): this file never changes
for a new method.

    python tga_zsr.py -c configs/synthetic.yaml
    python tga_zsr.py --Method TGA-ZSR --Alpha 0.08 --Beta 0.05
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from attacks import AA_VERSIONS, attack_list
from datasets import TEST_DATASETS
from protocols import load_protocol, protocol_names
from methods import DEFAULT_METHOD_NAME, MINI_LR_FACTOR, canonical_method, get_method, method_flags

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# Flags that describe this invocation, not the run: never taken from a run's args.yaml.
PER_INVOCATION = {"resume", "eval_only", "table", "max_steps", "config", "device", "gpu", "no_eval", "dist_timeout",
                  "compile", "save_adv", "leaderboard", "export", "format", "export_dir"}
# Keys of older args.yaml / config files under their current names (the flags keep both spellings).
RENAMED_KEYS = {"method": "pixel_prompt", "VPbaseline": "train_on_clean"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("TGA-ZSR: text-guided attention for zero-shot robustness", add_help=True)
    p.add_argument("-c", "--config", default=None, help="YAML file of defaults (the CLI wins)")

    g = p.add_argument_group("Method")
    g.add_argument("--Method", default=None, help=f"method of the registry (default {DEFAULT_METHOD_NAME}; TGA-ZSR, "
                                                  "TeCoA, FARE, ...); its own flags are in the groups below")
    g.add_argument("--train_on_clean", "--VPbaseline", dest="train_on_clean", action="store_true",
                   help="train on clean images instead of PGD images (the original's --VPbaseline)")
    g.add_argument("--mini_lr", action="store_true",
                   help=f"the method's mini-benchmark learning rate (its paper rate × {MINI_LR_FACTOR}, unless "
                        "the method sets its own); --learning_rate on the command line still wins")

    g = p.add_argument_group("Model")
    g.add_argument("--arch", default="vit_b32", help="vit_b32 or any open_clip model name / config json")
    g.add_argument("--pretrained", default="openai", help="open_clip tag, local weights file, or 'none'")
    g.add_argument("--image_size", type=int, default=224, help="input size of the datasets' transforms")
    g.add_argument("--last_num_ft", type=int, default=0, help="train only the last N parameter tensors (0: all)")
    g.add_argument("--adaptation_method", default="FT", choices=["FT", "VPT"], help="fine-tune, or prompt-tune")
    g.add_argument("--pixel_prompt", "--method", dest="pixel_prompt", default="null_patch",
                   choices=["padding", "random_patch", "fixed_patch", "null_patch"],
                   help="pixel prompt of VPT (the original's --method)")
    g.add_argument("--prompt_size", type=int, default=30, help="pixel prompt width (VPT)")
    g.add_argument("--add_prompt_size", type=int, default=0, help="number of learnable prompt tokens (VPT)")

    g = p.add_argument_group("Data")
    g.add_argument("--dataset", default="tinyImageNet", help="training dataset")
    g.add_argument("--root", default="./data", help="folder that holds the datasets")
    g.add_argument("--testdata", nargs="+", default=list(TEST_DATASETS), help="zero-shot test datasets")
    g.add_argument("--n_samples", type=int, default=0, help="seeded class-balanced test subset size (0: all)")
    g.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loader workers")

    g = p.add_argument_group("Optimizer and schedule")
    g.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    g.add_argument("--learning_rate", type=float, default=1e-4)
    g.add_argument("--batch_size", type=int, default=128,
                   help="global batch: split over the torchrun processes and --accum_steps micro-batches")
    g.add_argument("--accum_steps", type=int, default=1,
                   help="gradient accumulation: micro-batches per optimiser step (same maths, less memory)")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--max_steps", type=int, default=0, help="stop after this many steps (0: whole schedule)")
    g.add_argument("--warmup", type=int, default=1000)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight_decay", type=float, default=0.0)

    g = p.add_argument_group("Attack (ε and step sizes in 1/255 units)")
    g.add_argument("--train_eps", type=float, default=1.0)
    g.add_argument("--train_numsteps", type=int, default=2)
    g.add_argument("--train_stepsize", type=float, default=1.0)
    g.add_argument("--test_eps", type=float, nargs="+", default=[1.0], help="one or more budgets, each evaluated")
    g.add_argument("--test_numsteps", type=int, default=100)
    g.add_argument("--test_stepsize", type=float, default=1.0)
    g.add_argument("--train_momentum", type=float, default=0.0,
                   help="training attack: momentum on the sign step, v = sign(μ·v + sign(g)) (FARE: 0.9; 0: plain PGD)")
    g.add_argument("--attack", default="pgd", type=_attacks, metavar="pgd,cw,autoattack",
                   help="evaluation attack, or a comma list: robust = survives every one (each one's accuracy is kept)")
    g.add_argument("--norm", default="l_inf", choices=["l_inf", "l_2"])
    g.add_argument("--test_batch_size", type=int, default=256)

    g = p.add_argument_group("Evaluation protocol (SPEC §10)")
    g.add_argument("--protocol", default=None, choices=protocol_names(),
                   help="flag values of a published protocol (configs/protocols/NAME.yaml); the CLI still wins")
    g.add_argument("--attack_precision", default=None, choices=["amp", "fp32", "bf16"],
                   help="autocast of the attacks (default: --precision); the predictions use --precision")
    g.add_argument("--aa_version", default="aa-papers", choices=list(AA_VERSIONS),
                   help="AutoAttack: aa-papers = APGD-CE + APGD-DLR (TeCoA/TGA-ZSR), standard = APGD-CE, APGD-T, "
                        "FAB-T, Square, apgd-ce-t = RobustVLM's")
    g.add_argument("--transform", default="tga_zsr", choices=["tga_zsr", "robustvlm"],
                   help="images: each dataset's SPEC §5 transform, or RobustVLM's (native resolution, resize in model)")
    g.add_argument("--batch_stride", type=int, default=1,
                   help="evaluate every K-th batch of --test_batch_size images only (TeCoA's validation: 20)")
    g.add_argument("--save_adv", type=int, default=0, metavar="N",
                   help="save the first N adversarial examples of each dataset to <run>/adv/")

    groups = {}
    for cls, (names, kwargs) in method_flags():
        if cls not in groups:
            groups[cls] = p.add_argument_group(f"{cls.label} (--Method {cls.name})", cls.__doc__.split("\n")[0])
        groups[cls].add_argument(*names, **kwargs)

    g = p.add_argument_group("Run")
    g.add_argument("--output_dir", default="./checkpoints", help="runs land in <output_dir>/<run name>")
    g.add_argument("--name", default=None, help="run folder name (default: from method and hyper-parameters)")
    g.add_argument("--resume", default=None, help="run folder or checkpoint file to continue / evaluate")
    g.add_argument("--eval_only", action="store_true", help="evaluate --resume or --pretrained, no training")
    g.add_argument("--table", nargs="+", default=None, metavar="RUN", help="print the challenge table of runs")
    g.add_argument("--leaderboard", nargs="+", default=None, metavar="DIR",
                   help="rank the model cards (model_card.json) found in these folders")
    g.add_argument("--export", default=None, metavar="RUN", help="write a run's model as a full open_clip CLIP")
    g.add_argument("--format", default="open_clip", choices=["open_clip", "hf_hub"],
                   help="--export: one open_clip .pt file, or a hub folder (open_clip_config.json + safetensors)")
    g.add_argument("--export_dir", default=None, help="--export: where to write (default: <run>/export)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--gpu", type=int, default=None, help="original flag: same as --device cuda:N")
    g.add_argument("--precision", default="amp", choices=["amp", "fp32", "bf16"],
                   help="amp = fp16 autocast + GradScaler on CUDA (the original), fp32 on CPU")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the visual towers (trained and frozen); checkpoints are unchanged")
    g.add_argument("--print_freq", type=int, default=50)
    g.add_argument("--save_freq", type=int, default=50, help="checkpoint every N steps (0: only per epoch)")
    g.add_argument("--tensorboard", action="store_true", help="log scalars to <run>/tb")
    g.add_argument("--no_eval", action="store_true", help="skip the evaluation after training")
    g.add_argument("--dist_timeout", type=float, default=30.0,
                   help="minutes a torchrun process waits in a collective before the run fails")
    return p


def _attacks(text: str) -> str:
    try:
        return ",".join(attack_list(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def load_yaml(path: str | Path) -> dict:
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise SystemExit(f"config {path} must be a mapping of flag: value")
    return {RENAMED_KEYS.get(k, k): v for k, v in cfg.items()}


def method_config_path(method: str) -> Path | None:
    path = CONFIG_DIR / f"{canonical_method(method)}.yaml"
    return path if path.exists() else None


def run_args_of(resume: str | None) -> dict:
    """The args.yaml of the run being resumed (a run folder, or a file inside one), if any."""
    if not resume:
        return {}
    p = Path(resume)
    f = (p if p.is_dir() else p.parent) / "args.yaml"
    if not f.is_file():
        return {}
    return {k: v for k, v in load_yaml(f).items() if k not in PER_INVOCATION}


def mini_learning_rate(method: str) -> float:
    """The mini benchmark's rate of a method: its own `mini_lr`, else its configs/<name>.yaml rate ×
    MINI_LR_FACTOR, rounded to 12 significant digits (1e-5 × 100 is 0.001, not 0.0010000000000000002)."""
    cls = get_method(method)
    if cls.mini_lr is not None:
        return cls.mini_lr
    path = method_config_path(method)
    paper_lr = load_yaml(path).get("learning_rate") if path else None
    if paper_lr is None:
        raise SystemExit(f"no mini learning rate for method '{method}': set `mini_lr` in its class (methods.py) "
                         f"or `learning_rate` in configs/{cls.name}.yaml")
    return float(f"{float(paper_lr) * MINI_LR_FACTOR:.12g}")


def parse_args(argv=None) -> argparse.Namespace:
    """Parse with layered defaults (see the module docstring)."""
    parser = get_args_parser()
    pre = argparse.ArgumentParser(add_help=False)
    for name in ("-c", "--config"), ("--Method",), ("--resume",), ("--protocol",):
        pre.add_argument(*name, default=None)
    pre.add_argument("--mini_lr", action="store_true")
    known, _ = pre.parse_known_args(argv)
    user_cfg = load_yaml(known.config) if known.config else {}
    resumed = run_args_of(known.resume)
    method = known.Method or user_cfg.get("Method") or resumed.get("Method") or DEFAULT_METHOD_NAME
    defaults = {}
    mpath = method_config_path(method)
    if mpath is not None:
        defaults.update(load_yaml(mpath))
    defaults.update(resumed)
    protocol = known.protocol or user_cfg.get("protocol") or resumed.get("protocol")
    if protocol:
        defaults.update(load_protocol(protocol))
    defaults.update(user_cfg)
    if known.mini_lr or defaults.get("mini_lr"):
        defaults["learning_rate"] = mini_learning_rate(method)
    if not (known.Method or user_cfg.get("Method") or resumed.get("Method")):
        defaults.pop("Method", None)  # None says "not given": an evaluation then names itself after its weights
    valid = {a.dest for a in parser._actions}
    unknown = sorted(set(defaults) - valid)
    if unknown:
        raise SystemExit(f"unknown keys in config: {unknown}. Valid keys are the flag names, e.g. learning_rate")
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    if args.gpu is not None:
        args.device = f"cuda:{args.gpu}"
    return args
