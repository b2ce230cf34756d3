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
import math
import os
from pathlib import Path

import yaml

from attacks import AA_VERSIONS, attack_list
from datasets import TEST_DATASETS, DatasetError, canonical_name, default_workers
from engine.protocols import load_protocol, protocol_names
from methods import DEFAULT_METHOD_NAME, MINI_LR_FACTOR, canonical_method, get_method, method_flags

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
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
    g.add_argument("--workers", type=int, default=default_workers(),
                   help="data loader workers per process (default: the CPUs per torchrun process of this node, at most 8)")
    g.add_argument("--skip_corrupt", action="store_true",
                   help="leave out images that cannot be decoded, with a warning naming each (counted in "
                        "results.jsonl and the table); without it the run stops at the first one, naming it")
    g.add_argument("--decoded_cache", default=None, metavar="DIR",
                   help="read the training set (and the test set of the same name) from uint8 arrays decoded "
                        "once into DIR (built on first use: TinyImageNet train 1.2 GB), with Resize(256) + "
                        "CenterCrop(224) done on the device, bit-identical to PIL's: the loader is never the "
                        "bottleneck on a GPU (README \"Running on GPUs\")")

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
                   help="torch.compile the visual towers (trained and frozen; batch dimension dynamic, "
                        "recompiles logged); checkpoints are unchanged")
    g.add_argument("--tf32", action="store_true",
                   help="fp32 matmuls on TF32 tensor cores (CUDA; trades precision for speed: the FARE row trains "
                        "in fp32); off by default as in the original; recorded in results as precision '+tf32'")
    g.add_argument("--print_freq", type=int, default=50)
    g.add_argument("--save_freq", type=int, default=0,
                   help="also checkpoint every N steps (default 0: at each epoch end only; a ViT-B/32 "
                        "checkpoint is 0.7 GB, the original's 50 wrote ~110 GB per run)")
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
    """A config file's `flag: value` mapping; plain YAML data only (safe_load: no python tags)."""
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except OSError as e:
        raise SystemExit(f"config {path}: cannot be read ({e.strerror})")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        if isinstance(e, yaml.constructor.ConstructorError):
            raise SystemExit(f"config {path}{where}: {problem}. A config holds plain data only (numbers, strings, "
                             f"true/false, lists); tags such as !!python/... are never read: remove it")
        raise SystemExit(f"config {path}{where}: YAML syntax error: {problem}. Fix the file; each line is "
                         f"`flag: value`, e.g. `learning_rate: 1.0e-4` or `testdata: [cifar10, STL10]`")
    if not isinstance(cfg, dict):
        raise SystemExit(f"config {path} must be a mapping of flag: value")
    return {RENAMED_KEYS.get(k, k): v for k, v in cfg.items()}


def check_config(cfg: dict, parser: argparse.ArgumentParser, source) -> dict:
    """The values of one config layer, checked against the flags' types before argparse sees them
    (argparse would take `epochs: [1]` or `Alpha: yes` as is). A lone string for a list flag
    becomes a one-item list. SystemExit names the file, the key and what it wants."""
    actions = {a.dest: a for a in parser._actions}
    unknown = sorted(str(k) for k in cfg if k not in actions)
    if unknown:
        raise SystemExit(f"unknown keys in config {source}: {unknown}. Valid keys are the flag names, "
                         f"e.g. learning_rate")
    out = {}
    for key, value in cfg.items():
        action = actions[key]
        many = action.nargs in ("+", "*")
        if many and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        items = value if many and isinstance(value, list) else [value]
        if value is None:
            wrong = None  # null: not given
        elif many and not isinstance(value, list):
            wrong = "a list"
        elif action.const is True or action.const is False or isinstance(action, argparse.BooleanOptionalAction):
            wrong = None if isinstance(value, bool) else "true or false"
        elif action.type in (int, float):
            wrong = next((_type_name(action.type) for v in items if not _fits(v, action.type)), None)
        else:  # strings, and `root`, which may also be a mapping {dataset: folder}
            wrong = None
        if wrong is None and action.choices and value is not None:
            bad = [v for v in items if (action.type(v) if action.type and isinstance(v, str) else v)
                   not in action.choices]
            wrong = f"one of {list(action.choices)}" if bad else None
        if wrong:
            raise SystemExit(f"config {source}: {key}: {value!r} is not {wrong} (--{key}); fix the value in the file")
        out[key] = value
    return out


def _fits(value, kind) -> bool:
    """Whether a YAML value can stand for an int / float flag (YAML reads `1e-4` as a string)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        try:
            kind(value)
        except ValueError:
            return False
        return True
    return isinstance(value, int) or (kind is float and isinstance(value, float))


def _type_name(kind) -> str:
    return "an integer" if kind is int else "a number"


def method_config_path(method: str) -> Path | None:
    path = CONFIG_DIR / f"{canonical_method(method)}.yaml"
    return path if path.exists() else None


def run_args_file(resume: str) -> Path:
    """Where the args.yaml of the run being resumed is (a run folder, or a file inside one)."""
    p = Path(resume)
    return (p if p.is_dir() else p.parent) / "args.yaml"


def run_args_of(resume: str | None) -> dict:
    """The args.yaml of the run being resumed, if any."""
    if not resume or not run_args_file(resume).is_file():
        return {}
    return {k: v for k, v in load_yaml(run_args_file(resume)).items() if k not in PER_INVOCATION}


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
    user_cfg = check_config(load_yaml(known.config), parser, known.config) if known.config else {}
    resumed = check_config(run_args_of(known.resume), parser, run_args_file(known.resume) if known.resume else "")
    method = known.Method or user_cfg.get("Method") or resumed.get("Method") or DEFAULT_METHOD_NAME
    defaults = {}
    mpath = method_config_path(method)
    if mpath is not None:
        defaults.update(check_config(load_yaml(mpath), parser, mpath))
    defaults.update(resumed)
    protocol = known.protocol or user_cfg.get("protocol") or resumed.get("protocol")
    if protocol:
        defaults.update(load_protocol(protocol))
    defaults.update(user_cfg)
    if known.mini_lr or defaults.get("mini_lr"):
        defaults["learning_rate"] = mini_learning_rate(method)
    if not (known.Method or user_cfg.get("Method") or resumed.get("Method")):
        defaults.pop("Method", None)  # None says "not given": an evaluation then names itself after its weights
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    if args.gpu is not None:
        args.device = f"cuda:{args.gpu}"
    return args


# Flags whose values have a floor: (flags, smallest value, what the message says).
LIMITS = (
    (("train_eps", "test_eps", "train_stepsize", "test_stepsize"), 0, "must be 0 or more (1/255 units)"),
    (("train_numsteps", "test_numsteps"), 0, "must be 0 or more PGD steps"),
    (("learning_rate", "momentum", "weight_decay", "train_momentum"), 0, "must be 0 or more"),
    (("batch_size", "test_batch_size", "accum_steps", "print_freq", "image_size"), 1, "must be 1 or more"),
    (("epochs", "max_steps", "warmup", "n_samples", "workers", "save_freq", "last_num_ft", "prompt_size",
      "add_prompt_size"), 0, "must be 0 or more"),
)


def validate(args, world: int = 1) -> None:
    """Refuse settings that cannot make sense before anything is written or loaded: one message
    listing every bad flag and what it takes, dataset names with a did-you-mean."""
    problems = []
    for flags, floor, what in LIMITS:
        for flag in flags:
            value = getattr(args, flag, None)
            for v in (value if isinstance(value, (list, tuple)) else [value]):  # --test_eps takes a list
                if v is not None and not (math.isfinite(v) and v >= floor):
                    problems.append(f"--{flag} {v:g}: {what}")
    if not args.dist_timeout > 0:
        problems.append(f"--dist_timeout {args.dist_timeout:g}: must be more than 0 minutes")
    parts = world * args.accum_steps
    if args.batch_size >= 1 and args.accum_steps >= 1 and args.batch_size % parts and not args.eval_only:
        problems.append(f"--batch_size {args.batch_size}: the global batch must split evenly over {world} "
                        f"process(es) x --accum_steps {args.accum_steps}; use a multiple of {parts}")
    names = [("dataset", args.dataset)] + ([] if args.no_eval else [("testdata", n) for n in args.testdata])
    for flag, name in names:
        try:
            canonical_name(str(name))
        except DatasetError as e:
            problems.append(f"--{flag} {name}: {e}")
    for root in (args.root.values() if isinstance(args.root, dict) else [args.root]):
        if os.path.exists(root) and not os.path.isdir(root):
            problems.append(f"--root {root}: is a file, not a folder; give the folder that holds the datasets")
    weights = str(args.pretrained)
    looks_like_a_file = os.sep in weights or weights.endswith((".pt", ".pth", ".tar", ".bin"))
    if looks_like_a_file and not weights.startswith("hf-hub:") and not os.path.isfile(weights):
        problems.append(f"--pretrained {weights}: no such file (give a weights file, an open_clip tag such as "
                        f"openai, or none)")
    if problems:
        raise SystemExit("invalid settings (nothing was written):\n  " + "\n  ".join(problems))
