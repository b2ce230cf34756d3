"""The command line of tga_zsr.py, read once into small typed settings that the library takes.

Flag names and defaults are the original TGA-ZSR.py's (users copy the paper's commands), and the
defaults are the paper's protocol: TGA-ZSR's training on TinyImageNet and PGD-100 at ε = 1/255 on
the 16 test sets. ε and step sizes are in 1/255 units. Three layers, each over the one before:

1. built-in defaults: each flag's default, then the chosen method's `configs/<method>.yaml` (its
   row of the paper's table); when resuming, the run's own `args.yaml` on top;
2. YAML files you name: `--protocol NAME` (`configs/protocols/NAME.yaml`), then `-c FILE`;
3. the command line, which always wins. (`--mini_lr` puts the method's mini-world learning rate
   in place of the YAML one, unless `--learning_rate` is given.)

Every flag has a role (`ROLES`), declared where the flag is: what the model is made of (`model`),
what changes the trained weights (`train`), what only the evaluation reads (`eval`), or how this
process runs (`run`); `once` flags belong to one invocation and are never taken from a resumed
run's args.yaml. The lists other modules need (a run's identity, the checks of a resumed run) are
derived from these roles. Each method declares its own flags (methods/): this file never changes
for a new method. `--help` shows every flag's default (`DefaultsShown`, those of the layers above:
`--Method TeCoA --help` shows TeCoA's rate); no abbreviation is taken (`--test_step` is not
`--test_stepsize`), by the first, layered parse neither.

    args = parse_args(["--Method", "TGA-ZSR", "--Alpha", "0.1"])   # the namespace, written to args.yaml
    s = Settings.from_args(args)                                    # what the library takes
"""
from __future__ import annotations

import argparse
import functools
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from attacks import AA_VERSIONS, PGDSettings, attack_list
from engine.weights import HF_CONFIG, HF_WEIGHTS, HUB_CONFIG, HUB_WEIGHTS, weights_folder_kind
from datasets import TEST_DATASETS, DatasetError, canonical_name, default_workers
from methods import DEFAULT_METHOD_NAME, MINI_LR_FACTOR, canonical_method, get_method, method_flags

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PROTOCOL_DIR = CONFIG_DIR / "protocols"
ROLES = ("model", "train", "eval", "run")
# Keys of older args.yaml / config files under their current names (the flags keep both spellings).
RENAMED_KEYS = {"method": "pixel_prompt", "VPbaseline": "train_on_clean"}


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` with each flag's default after its help (argparse's own formatter), except where there is
    no value to show: None (the help says what happens then) and False (a switch that is off)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


# Path flags whose `~` is expanded (a YAML config or a quoted argument reaches us unexpanded by the shell).
PATH_FLAGS = ("pretrained", "root", "resume", "output_dir", "decoded_cache")


def add(group, *names, role: str, once: bool = False, **kwargs) -> argparse.Action:
    """`group.add_argument` with the flag's role (see the module docstring)."""
    if role not in ROLES:
        raise ValueError(f"{names[0]}: role {role!r} is not one of {ROLES}")
    action = group.add_argument(*names, **kwargs)
    action.role, action.once = role, once
    return action


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("tga_zsr.py", description="TGA-ZSR: adversarial fine-tuning of CLIP with "
                                "text-guided attention, and every baseline; then zero-shot evaluation",
                                formatter_class=DefaultsShown, allow_abbrev=False)
    add(p, "-c", "--config", role="run", once=True, default=None,
        help="YAML file of flag values (over the method's configs/<method>.yaml; the command line wins)")

    g = p.add_argument_group("Method")
    add(g, "--Method", role="train", default=None,
        help=f"method of the registry (default {DEFAULT_METHOD_NAME}; TGA-ZSR, TeCoA, FARE, ...; methods/); its own "
             "flags are in the groups below, its paper row's settings in configs/<method>.yaml")
    add(g, "--atten_methods", role="train", default="text", choices=["text", "visual"],
        help="TGA-ZSR's attention maps: text-guided, or Grad-CAM ('visual': the Vision-based row of Table 5)")
    add(g, "--train_on_clean", "--VPbaseline", dest="train_on_clean", role="train", action="store_true",
        help="train on clean images instead of PGD images (the original's --VPbaseline)")
    add(g, "--mini_lr", role="run", action="store_true",
        help=f"the method's mini-world learning rate (its paper rate × {MINI_LR_FACTOR}, unless the method sets "
             "its own); --learning_rate on the command line still wins")

    g = p.add_argument_group("Model")
    add(g, "--arch", role="model", default="vit_b32", help="vit_b32 or any open_clip model name / config json")
    add(g, "--pretrained", role="model", default="openai",
        help="open_clip tag, local weights file, weights folder (open_clip hub or transformers CLIPModel; any "
             "path: relative, absolute, ~, a symlink), hf-hub:org/name, or 'none'")
    add(g, "--image_size", role="model", type=int, default=224, help="input size of the datasets' transforms")
    add(g, "--adaptation_method", role="model", default="FT", choices=["FT", "VPT"],
        help="fine-tune the visual tower, or train visual prompts only (TeCoA w/ prompting)")
    add(g, "--pixel_prompt", "--method", dest="pixel_prompt", role="model", default="null_patch",
        choices=["padding", "random_patch", "fixed_patch", "null_patch"],
        help="pixel prompt of VPT (the original's --method)")
    add(g, "--prompt_size", role="model", type=int, default=30, help="pixel prompt width (VPT)")
    add(g, "--add_prompt_size", role="model", type=int, default=0, help="number of learnable prompt tokens (VPT)")

    g = p.add_argument_group("Training data")
    add(g, "--dataset", role="train", default="tinyImageNet", help="training dataset")
    add(g, "--root", role="run", default="./data", help="folder that holds the datasets (datasets/README.md)")
    add(g, "--workers", role="run", type=int, default=default_workers(),
        help="data loader workers per process (by default the CPUs per torchrun process of this node, at most 8)")
    add(g, "--skip_corrupt", role="train", action="store_true",
        help="leave out images that cannot be decoded, with a warning naming each (counted in results.jsonl and "
             "the table); without it the run stops at the first one, naming it")
    add(g, "--decoded_cache", role="run", default=None, metavar="DIR",
        help="read the training set (and the test set of the same name) from uint8 arrays decoded once into DIR "
             "(built on first use: TinyImageNet train 1.2 GB), with Resize(256) + CenterCrop(224) done on the "
             "device, bit-identical to PIL's (docs: running on GPUs)")

    g = p.add_argument_group("Optimizer and schedule")
    add(g, "--optimizer", role="train", default="sgd", choices=["sgd", "adamw"], help="SGD (momentum) or AdamW")
    add(g, "--learning_rate", role="train", type=float, default=1e-4,
        help="peak learning rate (the paper: 1e-4 for TGA-ZSR, Tables 1-2; Tables 20-21 vary it; the method's "
             "configs/<method>.yaml sets its own)")
    add(g, "--batch_size", role="train", type=int, default=128,
        help="global batch: split over the torchrun processes and --accum_steps micro-batches (the paper: 128, "
             "Tables 1-2)")
    add(g, "--accum_steps", role="train", type=int, default=1,
        help="gradient accumulation: micro-batches per optimiser step (same maths, less memory)")
    add(g, "--epochs", role="train", type=int, default=10, help="epochs over the training set")
    add(g, "--max_steps", role="train", once=True, type=int, default=0,
        help="stop after this many steps (0: whole schedule); the schedule keeps its length, so the run resumes")
    add(g, "--warmup", role="train", type=int, default=1000, help="linear warm-up steps, then cosine decay")
    add(g, "--momentum", role="train", type=float, default=0.9, help="SGD momentum")
    add(g, "--weight_decay", role="train", type=float, default=0.0, help="weight decay")
    add(g, "--last_num_ft", role="train", type=int, default=0,
        help="train only the last N parameter tensors of the visual tower (0: all)")

    g = p.add_argument_group("Training attack (ε and step sizes in 1/255 units)")
    add(g, "--train_eps", role="train", type=float, default=1.0,
        help="ε of the training PGD (the paper: 1/255, Tables 1-2)")
    add(g, "--train_numsteps", role="train", type=int, default=2, help="PGD steps in training (0: clean images)")
    add(g, "--train_stepsize", role="train", type=float, default=1.0, help="step size of the training PGD")
    add(g, "--train_momentum", role="train", type=float, default=0.0,
        help="momentum on the sign step, v = sign(μ·v + sign(g)) (FARE: 0.9; 0: plain PGD)")
    add(g, "--norm", role="train", default="l_inf", choices=["l_inf", "l_2"], help="threat model, train and test")

    g = p.add_argument_group("Evaluation (ε and step sizes in 1/255 units)")
    add(g, "--testdata", role="eval", nargs="+", default=list(TEST_DATASETS),
        help="zero-shot test datasets (the default list: the paper's 16 of Tables 1-2)")
    add(g, "--n_samples", role="eval", type=int, default=0, help="seeded class-balanced test subset size (0: all)")
    add(g, "--test_eps", role="eval", type=float, nargs="+", default=[1.0],
        help="one or more budgets, each evaluated (the paper: 1/255, Tables 1-2; 1, 2 and 4/255, Table 6)")
    add(g, "--test_numsteps", role="eval", type=int, default=100,
        help="PGD / CW steps (the paper: 100, the PGD-100 of Tables 1-2)")
    add(g, "--test_stepsize", role="eval", type=float, default=1.0, help="PGD / CW step size")
    add(g, "--attack", role="eval", default="pgd", type=_attacks, metavar="pgd,cw,autoattack",
        help="evaluation attack, or a comma list: robust = survives every one (each one's accuracy is kept)")
    add(g, "--test_batch_size", role="eval", type=int, default=256, help="evaluation batch per process")
    add(g, "--protocol", role="eval", default=None, choices=protocol_names(),
        help="flag values of a published protocol (configs/protocols/NAME.yaml); the command line still wins")
    add(g, "--attack_precision", role="eval", default=None, choices=["amp", "fp32", "bf16"],
        help="autocast of the attacks (default: --precision); the predictions use --precision")
    add(g, "--aa_version", role="eval", default="aa-papers", choices=list(AA_VERSIONS),
        help="AutoAttack: aa-papers = APGD-CE + APGD-DLR (TeCoA/TGA-ZSR), standard = APGD-CE, APGD-T, FAB-T, "
             "Square, apgd-ce-t = RobustVLM's")
    add(g, "--transform", role="eval", default="tga_zsr", choices=["tga_zsr", "robustvlm", "resize", "crop"],
        help="images: each dataset's transform in the paper's code, RobustVLM's (native resolution, resize "
             "in the model), or one for every set: resize the whole image to a square / resize and centre-crop")
    add(g, "--restarts", role="eval", type=int, default=1,
        help="PGD / CW random restarts: an image is robust only if it survives every one (each its own start)")
    add(g, "--templates", role="eval", default="single", choices=["single", "ensemble"],
        help="class prompts: each dataset's one template, or the mean text feature over a template ensemble "
             "(datasets/templates.py)")
    add(g, "--batch_stride", role="eval", type=int, default=1,
        help="evaluate every K-th batch of --test_batch_size images only (TeCoA's validation: 20)")
    add(g, "--save_adv", role="eval", once=True, type=int, default=0, metavar="N",
        help="save the first N adversarial examples of each dataset to <run>/adv/")
    add(g, "--allow_partial", role="run", once=True, action="store_true",
        help="train / evaluate on a dataset with fewer images than its official release (refused otherwise, "
             "before any work); every result row, table and model card then says 'partial (found / expected)'")

    groups = {}
    for cls, (names, kwargs) in method_flags():
        if cls not in groups:
            groups[cls] = p.add_argument_group(f"{cls.label} (--Method {cls.name})", cls.__doc__.split("\n")[0])
        add(groups[cls], *names, role="train", **kwargs)

    g = p.add_argument_group("Run")
    add(g, "--output_dir", role="run", default="./checkpoints", help="runs land in <output_dir>/<run name>")
    add(g, "--name", role="run", default=None, help="run folder name (default: from method and hyper-parameters)")
    add(g, "--resume", role="run", once=True, default=None, help="run folder or checkpoint file to continue / evaluate")
    add(g, "--eval_only", role="run", once=True, action="store_true",
        help="evaluate --resume or --pretrained, no training")
    add(g, "--no_eval", role="run", once=True, action="store_true", help="skip the evaluation after training")
    add(g, "--seed", role="train", type=int, default=0, help="seed of the model, the data order and the attacks")
    add(g, "--device", role="run", once=True, default="auto", help="auto, cpu, cuda, cuda:N")
    add(g, "--gpu", role="run", once=True, type=int, default=None, help="original flag: same as --device cuda:N")
    add(g, "--precision", role="train", default="amp", choices=["amp", "fp32", "bf16"],
        help="amp = fp16 autocast + GradScaler on CUDA (the original), fp32 on the CPU")
    add(g, "--compile", role="run", once=True, action="store_true",
        help="torch.compile the visual towers (trained and frozen; batch dimension dynamic, recompiles logged); "
             "checkpoints are unchanged")
    add(g, "--tf32", role="train", action="store_true",
        help="fp32 matmuls on TF32 tensor cores (CUDA; trades precision for speed: the FARE row trains in fp32); "
             "off by default as in the original; recorded in results as precision '+tf32'")
    add(g, "--print_freq", role="run", type=int, default=50, help="log the training losses every N steps")
    add(g, "--save_freq", role="run", type=int, default=0,
        help="also checkpoint every N steps (0: at each epoch end only; a ViT-B/32 checkpoint is 0.7 GB, "
             "the original's 50 wrote ~110 GB per run)")
    add(g, "--tensorboard", role="run", action="store_true", help="log scalars to <run>/tb")
    add(g, "--dist_timeout", role="run", once=True, type=float, default=30.0,
        help="minutes a torchrun process waits in a collective before the run fails")
    return p


def _attacks(text: str) -> str:
    try:
        return ",".join(attack_list(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


@functools.lru_cache(maxsize=1)
def _actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in get_args_parser()._actions if hasattr(a, "role")}


def flags_with_role(*roles: str) -> list[str]:
    """The flags (destinations) of these roles, in the parser's order."""
    return [d for d, a in _actions().items() if a.role in roles]


def per_invocation() -> set[str]:
    """Flags that describe this invocation, not the run: never taken from a run's args.yaml."""
    return {d for d, a in _actions().items() if a.once}


def parser_defaults() -> dict:
    return {d: a.default for d, a in _actions().items()}


# --- YAML layers -------------------------------------------------------------------------------------
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


def load_config(path: str | Path, _seen: tuple = ()) -> dict:
    """A `-c` file's values; a `config: OTHER.yaml` key in it (relative to the file) is read first, so
    a file can state only what differs from the one it builds on (configs/smoke.yaml on mini.yaml)."""
    path = Path(path)
    if path.resolve() in _seen:
        raise SystemExit(f"config {path}: `config:` chain loops back to itself ({' -> '.join(map(str, _seen))})")
    cfg = load_yaml(path)
    base = cfg.pop("config", None)
    if not base:
        return cfg
    return {**load_config(path.parent / base, _seen + (path.resolve(),)), **cfg}


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
    once = per_invocation()
    return {k: v for k, v in load_yaml(run_args_file(resume)).items() if k not in once}


def protocol_names() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def load_protocol(name: str) -> dict:
    """The evaluation flags of a protocol: the built-in evaluation defaults (the paper's protocol),
    then `configs/protocols/NAME.yaml`; SystemExit naming the known ones for an unknown name."""
    path = PROTOCOL_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"--protocol {name}: unknown protocol; known: {', '.join(protocol_names())} "
                         f"(one YAML each in {PROTOCOL_DIR})")
    once = per_invocation()
    values = {k: v for k, v in parser_defaults().items() if k in flags_with_role("eval") and k not in once}
    values.update(load_yaml(path))
    values["protocol"] = name
    return values


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        a, b = (list(v) if isinstance(v, (list, tuple)) else [v] for v in (a, b))
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def protocol_label(values: dict) -> str | None:
    """`NAME`, or `NAME (modified: flag=value, ...)` when `values` depart from the protocol's, so that a
    number is never attributed to a protocol it did not follow."""
    name = values.get("protocol")
    if not name:
        return None
    changed = [f"{k}={values[k]}" for k, v in load_protocol(name).items()
               if k != "protocol" and k in values and not _same(values[k], v)]
    return f"{name} (modified: {', '.join(changed)})" if changed else name


def mini_learning_rate(method: str) -> float:
    """The mini world's rate of a method: its own `mini_lr`, else its configs/<name>.yaml rate ×
    MINI_LR_FACTOR, rounded to 12 significant digits (1e-5 × 100 is 0.001, not 0.0010000000000000002)."""
    cls = get_method(method)
    if cls.mini_lr is not None:
        return cls.mini_lr
    path = method_config_path(method)
    paper_lr = load_yaml(path).get("learning_rate") if path else None
    if paper_lr is None:
        paper_lr = parser_defaults()["learning_rate"]
    return float(f"{float(paper_lr) * MINI_LR_FACTOR:.12g}")


def parse_args(argv=None) -> argparse.Namespace:
    """Parse with the layered defaults of the module docstring."""
    parser = get_args_parser()
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # `--conf` is refused below, not read here
    for name in ("-c", "--config"), ("--Method",), ("--resume",), ("--protocol",):
        pre.add_argument(*name, default=None)
    pre.add_argument("--mini_lr", action="store_true")
    known, _ = pre.parse_known_args(argv)
    user_cfg = check_config(load_config(known.config), parser, known.config) if known.config else {}
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
    values = vars(args)  # the namespace's own dict: what is set here is set on args
    for flag in PATH_FLAGS:
        if isinstance(values[flag], str) and values[flag].startswith("~"):
            values[flag] = os.path.expanduser(values[flag])
    if args.gpu is not None:
        args.device = f"cuda:{args.gpu}"
    return args


# Flags whose values have a floor: (flags, smallest value, what the message says).
LIMITS = (
    (("train_eps", "test_eps", "train_stepsize", "test_stepsize"), 0, "must be 0 or more (1/255 units)"),
    (("train_numsteps", "test_numsteps"), 0, "must be 0 or more PGD steps"),
    (("learning_rate", "momentum", "weight_decay", "train_momentum"), 0, "must be 0 or more"),
    (("batch_size", "test_batch_size", "accum_steps", "print_freq", "image_size", "restarts"), 1, "must be 1 or more"),
    (("epochs", "max_steps", "warmup", "n_samples", "workers", "save_freq", "last_num_ft", "prompt_size",
      "add_prompt_size"), 0, "must be 0 or more"),
)


def validate(args, world: int = 1) -> None:
    """Refuse settings that cannot make sense before anything is written or loaded: one message
    listing every bad flag and what it takes, dataset names with a did-you-mean."""
    problems = []
    values = vars(args)
    for flags, floor, what in LIMITS:
        for flag in flags:
            value = values.get(flag)
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
    weights = os.path.expanduser(str(args.pretrained))
    looks_like_a_path = os.sep in weights or weights.endswith((".pt", ".pth", ".tar", ".bin", ".safetensors"))
    if os.path.isdir(weights) and weights_folder_kind(weights) is None:
        problems.append(f"--pretrained {weights}: a folder, but neither an open_clip hub folder ({HUB_CONFIG} + "
                        f"{' or '.join(HUB_WEIGHTS)}) nor a transformers CLIPModel folder ({HF_CONFIG} + "
                        f"{' or '.join(HF_WEIGHTS)})")
    elif looks_like_a_path and not weights.startswith("hf-hub:") and not os.path.exists(weights):
        problems.append(f"--pretrained {weights}: no such file or folder (give a weights file, a weights folder, "
                        f"an open_clip tag such as openai, or none)")
    cls = get_method(args.Method or DEFAULT_METHOD_NAME, args.atten_methods)
    if cls.trains == "prompts" and args.adaptation_method != "VPT" and not args.eval_only:
        problems.append(f"--Method {cls.name} trains visual prompts: it needs --adaptation_method VPT "
                        f"(configs/{cls.name}.yaml sets it)")
    if problems:
        raise SystemExit("invalid settings (nothing was written):\n  " + "\n  ".join(problems))


# --- the settings the library takes ------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSettings:
    """What the model is built from."""
    arch: str
    pretrained: str
    image_size: int
    adaptation_method: str
    pixel_prompt: str
    prompt_size: int
    add_prompt_size: int


@dataclass(frozen=True)
class MethodChoice:
    """The method class and the values of its own flags (its `__init__` keywords)."""
    cls: type
    options: dict
    named: bool  # --Method was given (a CLI flag, a config, the resumed run), not defaulted

    @property
    def name(self) -> str:
        return self.cls.name


@dataclass(frozen=True)
class TrainSettings:
    """The training loop's settings."""
    dataset: str
    root: object                 # a folder, or {dataset: folder, "default": folder}
    optimizer: str
    learning_rate: float
    momentum: float
    weight_decay: float
    batch_size: int              # the global batch
    accum_steps: int
    epochs: int
    max_steps: int
    warmup: int
    last_num_ft: int
    seed: int
    workers: int
    print_freq: int
    save_freq: int
    skip_corrupt: bool
    decoded_cache: str | None
    tensorboard: bool


@dataclass(frozen=True)
class EvalSettings:
    """The evaluation's settings; `setting()` gives the values a results.jsonl row is keyed by."""
    testdata: list
    root: object
    attack: str                  # one attack or a comma list
    norm: str
    test_eps: list               # 1/255 units
    test_numsteps: int
    test_stepsize: float
    test_batch_size: int
    attack_precision: str | None
    aa_version: str
    transform: str
    batch_stride: int
    n_samples: int
    seed: int
    workers: int
    save_adv: int
    skip_corrupt: bool
    decoded_cache: str | None
    dataset: str                 # the training set (its test split may come from the decoded cache)
    pretrained: str
    protocol: str | None = None  # the protocol label: NAME or NAME (modified: ...)
    restarts: int = 1            # PGD / CW random restarts
    templates: str = "single"    # class prompts: "single" or "ensemble"

    def setting(self, eps: float, checkpoint: str, precision: str, attack_precision: str | None = None) -> dict:
        """The settings of one evaluation (ε and step size in 1/255 units): what a results row records
        and what finds it done again."""
        attacks = attack_list(self.attack)
        steps, step_size = self.test_numsteps, self.test_stepsize
        if attacks == ["autoattack"]:  # APGD: 100 iterations, adaptive step size (the library's values)
            steps, step_size = 100, None
        stride = self.batch_stride or 1
        restarts = None if attacks == ["autoattack"] else self.restarts  # APGD restarts are the library's
        return {"attack": ",".join(attacks), "norm": self.norm, "eps": eps, "steps": steps, "step_size": step_size,
                "precision": precision, "attack_precision": attack_precision or precision,
                "aa_version": (self.aa_version or "aa-papers") if "autoattack" in attacks else None,
                "protocol": self.protocol, "transform": self.transform or "tga_zsr",
                "batch_stride": f"{stride}x{self.test_batch_size}" if stride > 1 else None,
                "restarts": restarts, "templates": self.templates,
                "n_samples": self.n_samples, "seed": self.seed, "checkpoint": checkpoint}


@dataclass(frozen=True)
class RunSettings:
    """How this process runs."""
    output_dir: str
    name: str | None
    resume: str | None
    eval_only: bool
    no_eval: bool
    device: str
    precision: str
    compile: bool
    tf32: bool
    dist_timeout: float
    allow_partial: bool


def _pick(cls, values: dict, **extra):
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.name not in extra}, **extra)


@dataclass(frozen=True)
class Settings:
    """Everything a run of tga_zsr.py needs, bound once from the parsed flags."""
    model: ModelSettings
    method: MethodChoice
    attack: PGDSettings           # the training attack, in pixel units
    train_on_clean: bool
    train: TrainSettings
    eval: EvalSettings
    run: RunSettings
    values: dict = field(default_factory=dict)  # every flag's value: args.yaml, the checkpoint, the model card

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        v = dict(vars(args))
        method = get_method(v["Method"] or DEFAULT_METHOD_NAME, v["atten_methods"])
        options = {name: v[name] for name in method.option_names()}
        attack = PGDSettings(v["train_eps"] / 255.0, v["train_stepsize"] / 255.0, int(v["train_numsteps"]),
                             v["norm"], v["train_momentum"])
        test_eps = v["test_eps"] if isinstance(v["test_eps"], (list, tuple)) else [v["test_eps"]]
        return cls(model=_pick(ModelSettings, v), method=MethodChoice(method, options, bool(v["Method"])),
                   attack=attack, train_on_clean=v["train_on_clean"], train=_pick(TrainSettings, v),
                   eval=_pick(EvalSettings, v, test_eps=[float(e) for e in test_eps], protocol=protocol_label(v)),
                   run=_pick(RunSettings, v), values=v)
