"""The runs behind the paper's tables: resolved once, shared between tables, never computed twice.

A table row with a seed becomes the `tga_zsr.py` flags of one training run:
`[-c config] <protocol flags> <table flags> --Method m <row flags> --seed s <extra>` (paper_tables.py
reads the declarations). A run is identified by its *resolved* training settings (params.parse_args,
then every flag that can change the trained weights and is not at its default; not the evaluation,
paths or logging flags):
T7's "+ L_AR + L_AMC" row and T1's TGA-ZSR seed 0 resolve to the same settings, hence to one run
folder `<out>/<readable name>_<hash>`. An evaluation is one dataset under one attack setting of a
run; it is done when the run's results.jsonl holds it with exactly the settings tga_zsr.py would
write (evaluate.eval_settings, results.find_done). Training is done when last.pt says so (or has
reached `--max_steps`). CLIP-like rows train nothing and are evaluated from their weights.

Cost estimate of what remains, in "unit-images": one forward of the visual tower on one image.
A training image costs 2K + 7 units with a frozen reference tower, else 2K + 3 (bench.py's floor,
K = attack steps); a tested image 2·steps + 2 (AutoAttack: 2 attacks × 100 iterations × 2 + 2, a
lower bound: its restarts come on top). Hours = unit-images × FLOPs of a forward (bench.py's
FlopCounterMode count for the architecture) / a FLOP rate: the rate this device reached in earlier
runs of the same architecture (history.jsonl images/s, results.jsonl seconds), and the rate of the
paper's RTX 3090 (TGA-ZSR: 885 s per epoch of 100 000 images at 11 units each, from the paper's text).

Per table (`table_costs`): its runs, the wall clock of what remains on 1 and on N GPUs (independent runs
go one per GPU, so N GPUs take the longest queue of a longest-first assignment, never less than the longest
run), at a stated speed (`--img_per_s`: TGA-ZSR training images/s of one GPU, e.g. from `bash main.sh
doctor`), else the speed measured in earlier runs under the output folder, else the paper's RTX 3090; and
the disk its checkpoints (last.pt: the visual tower and its optimiser state, fp32) and its results and
logs take.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

import datasets
from engine.checkpoint import CHECKPOINT_NAME, pretrained_id
from engine.model import load_clip
from datasets.catalog import INFO, expected_count
from datasets.world import SUITE as WORLD_SUITE
from engine.device import forward_flops, resolve_device, resolve_precision
from engine.settings import Settings, flags_with_role, parse_args, parser_defaults
from methods import DEFAULT_METHOD_NAME, get_method
from engine.results import GROUP_KEYS, find_done, read_jsonl, read_results, setting
from engine.run_folder import run_name

ROOT = Path(__file__).resolve().parents[1]
PAPER_3090 = {"epoch_s": 885.0, "images": 100_000, "units": 11, "arch": "vit_b32"}  # the paper's text, TGA-ZSR K = 2


def flags_to_argv(flags: dict) -> list[str]:
    """{"Alpha": 0.1, "testdata": [a, b], "differentiable_cam": True} -> ["--Alpha", "0.1", ...]."""
    argv = []
    for k, v in (flags or {}).items():
        if isinstance(v, bool):
            argv += [f"--{k}"] if v else []
        elif isinstance(v, (list, tuple)):
            argv += [f"--{k}", *[str(x) for x in v]]
        else:
            argv += [f"--{k}", str(v)]
    return argv


@dataclass
class Evaluation:
    key: tuple                 # the GROUP_KEYS values of its results rows
    argv: list                 # the run's flags + the evaluation's (tga_zsr.py), datasets added when run
    settings: Settings         # their parsed form
    datasets: list             # canonical names, in the order first asked for
    title: str


@dataclass
class Run:
    key: str
    name: str
    argv: list
    settings: Settings
    method: str
    trains: bool
    rows: list = field(default_factory=list)        # (table id, row label, seed) it serves
    evals: dict = field(default_factory=dict)       # Evaluation.key -> Evaluation

    @property
    def tables(self) -> list[str]:
        return list(dict.fromkeys(t for t, _, _ in self.rows))


def _parse(argv: list, where: str) -> Settings:
    try:
        return Settings.from_args(parse_args(argv))
    except SystemExit as e:  # argparse already printed the flag's problem
        raise SystemExit(f"{where}: its flags do not parse ({e}): {' '.join(argv)}")


def trains(s: Settings) -> bool:
    return s.method.cls.trains != "nothing" and s.train.epochs > 0


def identity(values: dict) -> dict:
    """The settings that name a run: every flag that can change the trained weights (the `model` and
    `train` roles) whose value is not the parser's default (a flag added to the project later, at a
    default that keeps the old behaviour, leaves every existing run's identity, hence its folder,
    unchanged); for a run that trains nothing, its weights (the model flags, seed and precision)."""
    cls = get_method(values["Method"] or DEFAULT_METHOD_NAME, values["atten_methods"])
    trains_weights = cls.trains != "nothing" and values["epochs"] > 0
    keys = flags_with_role("model", "train") if trains_weights else ["Method", *flags_with_role("model"), "seed",
                                                                      "precision"]
    settings = {k: values[k] for k in sorted(keys) if k in values}
    settings["Method"] = cls.name
    defaults = parser_defaults()
    return {k: v for k, v in settings.items() if k == "Method" or k not in defaults or v != defaults[k]}


def make_run(argv: list, where: str, default_dataset: str | None) -> Run:
    s = _parse(argv, where)
    settings = identity(s.values)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    if trains(s):
        name = run_name(s) + ("" if s.train.dataset == default_dataset else f"_{s.train.dataset}")
    else:
        m = s.model
        name = f"{s.method.name}_{Path(str(m.arch)).stem}_{Path(str(m.pretrained)).stem}_seed{s.train.seed}"
    return Run(key, f"{name}_{key[:8]}", argv, s, s.method.name, trains(s))


def add_evaluation(run: Run, eval_argv: list, where: str) -> tuple[Evaluation, list[str]]:
    """The run's evaluation under these attack flags (one per attack setting: datasets asked for by
    several tables are merged), and the canonical datasets this call asked for."""
    s = _parse(run.argv + eval_argv, where)
    key = tuple(eval_setting(s, "", "")[k] for k in GROUP_KEYS)
    names = [datasets.canonical_name(d) for d in s.eval.testdata]
    ev = run.evals.get(key)
    if ev is None:
        ev = run.evals[key] = Evaluation(key, run.argv + eval_argv, s, [], "")
    ev.datasets += [d for d in names if d not in ev.datasets]
    return ev, names


# --- status on disk ------------------------------------------------------------------------------------
def training_state(run: Run, out: Path) -> tuple[str, int]:
    """("done" | "partial" | "todo" | "none", optimiser step): from last.pt, memory-mapped."""
    if not run.trains:
        return "none", 0
    last = out / run.name / CHECKPOINT_NAME
    if not last.is_file():
        return "todo", 0
    ckpt = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    step, meta = int(ckpt.get("step", 0)), ckpt.get("meta", {})
    max_steps = run.settings.train.max_steps
    if meta.get("finished") or (max_steps and step >= max_steps):
        return "done", step
    return "partial", step


def checkpoint_desc(run: Run, step: int) -> str:
    """What tga_zsr.py writes as `checkpoint` in the results of this run's weights."""
    return f"{CHECKPOINT_NAME}@step{step}" if run.trains else pretrained_id(run.settings.model.pretrained)


def eval_setting(s: Settings, checkpoint: str, precision: str) -> dict:
    """What tga_zsr.py records as the settings of the first ε of `s` (results.find_done compares them)."""
    return s.eval.setting(s.eval.test_eps[0], checkpoint, precision)


def device_type(device: str | None, remote_gpus: bool) -> str:
    return "cuda" if remote_gpus else resolve_device(device or "auto").type


def eval_status(run: Run, ev: Evaluation, out: Path, dev_type: str, state=None) -> tuple[list, list]:
    """(datasets done, datasets to do) of one evaluation of a run."""
    state = state or training_state(run, out)
    if run.trains and state[0] != "done":
        return [], list(ev.datasets)
    precision = resolve_precision(ev.settings.run.precision, torch.device(dev_type))
    settings = eval_setting(ev.settings, checkpoint_desc(run, state[1]), precision)
    rows = read_results(out / run.name)
    done = [d for d in ev.datasets if find_done(rows, d, settings) is not None]
    return done, [d for d in ev.datasets if d not in done]


def results_of(run: Run, ev: Evaluation, out: Path, dev_type: str) -> dict:
    """{dataset: (robust, clean, marks)} of what is in the run's results.jsonl for this evaluation's attack
    settings (the attack precision this device resolves to) and seed (the latest row of each
    dataset), whatever has finished; `marks` says what a number is not: {"stopped": ['stopped at step N
    of M']} (a training stopped before its schedule), {"partial": ['EuroSAT partial (30 / 27 000)']}."""
    precision = resolve_precision(ev.settings.run.precision, torch.device(dev_type))
    settings = eval_setting(ev.settings, "", precision)
    key = tuple(settings[k] for k in GROUP_KEYS)
    got = {}
    for r in read_results(out / run.name):
        if tuple(setting(r, k) for k in GROUP_KEYS) == key and r.get("seed") == run.settings.train.seed:
            marks = {"stopped": [r["stopped"]] if r.get("stopped") else [],
                     "partial": [f"{r['dataset']} {r['partial']}"] if r.get("partial") else []}
            got[r["dataset"]] = (r.get("robust_acc"), r.get("clean_acc"), {k: v for k, v in marks.items() if v})
    return got


# --- what is missing ------------------------------------------------------------------------------------
def missing_data(needs: dict, root_of) -> list[str]:
    """`needs`: {(dataset, split)}; the check of each, first line and its fix, for those that fail or that
    hold fewer images than their release (refused by tga_zsr.py without --allow_partial)."""
    problems = []
    for name, split in needs:
        try:
            info = datasets.check_dataset(name, root_of(name), split, decode=0)
            if info["partial"]:
                problems.append(f"{name} ({split}): {info['partial']} in {info['path']}: refused without "
                                f"--allow_partial (after --), marked partial everywhere with it")
        except datasets.DatasetError as e:
            lines = str(e).splitlines()
            fix = next((x.strip() for x in lines if x.strip().startswith("how to fix")), "")
            problems.append(f"{name} ({split}): {lines[0]}" + (f" — {fix}" if fix else ""))
    return problems


# --- cost estimate -------------------------------------------------------------------------------------
def train_units(s: Settings) -> int:
    if not trains(s):
        return 0
    a = s.attack
    k = 0 if (s.train_on_clean or a.steps == 0 or a.eps == 0) else a.steps
    return 2 * k + (7 if s.method.cls.needs_frozen else 3)


def eval_units(attack: str, steps: int, eps) -> int:
    if attack == "autoattack":
        return 2 * 100 * 2 + 2
    return 2 * (steps if eps else 0) + 2


def set_size(name: str, split: str, root) -> int | None:
    """Images of a split without reading it when the catalog or the world knows; else counted."""
    if name in WORLD_SUITE:
        return WORLD_SUITE[name]["n"]
    n = expected_count(name, split) if name in INFO else None
    if n is None:
        try:
            n = len(datasets.get_dataset(name, root, split))
        except (datasets.DatasetError, ValueError):
            return None
    return n


def train_image_steps(t) -> int | None:
    n = set_size(datasets.canonical_name(t.dataset), "train", t.root)
    if n is None:
        return None
    steps = math.ceil(n / t.batch_size) * t.epochs
    return (min(steps, t.max_steps) if t.max_steps else steps) * t.batch_size


_FACTS: dict = {}


def model_facts(arch: str) -> dict:
    """What the estimates need of an architecture, from one build with random weights: the FLOPs of one
    forward of the visual tower on one image (torch's FlopCounterMode), the bytes of its state dict and of
    each of its parameters (in registration order: --last_num_ft trains the last N)."""
    if arch not in _FACTS:
        torch.manual_seed(0)
        logging.disable(logging.WARNING)  # open_clip's "initialized randomly": random weights are the point here
        try:
            model = load_clip(arch, None)
        finally:
            logging.disable(logging.NOTSET)
        _FACTS[arch] = {
            "flops": float(forward_flops(model, torch.rand(1, 3, *model.image_tower.image_size))),
            "state_bytes": sum(t.numel() * t.element_size() for t in model.visual.state_dict().values()),
            "param_bytes": [p.numel() * p.element_size() for p in model.visual.parameters()]}
    return _FACTS[arch]


def flops_per_image(arch: str) -> float:
    """FLOPs of one forward of the visual tower on one image (random weights; torch's FlopCounterMode)."""
    return model_facts(arch)["flops"]


def measured_rates(out: Path, arch: str) -> dict:
    """Unit-images per second that earlier runs in `out` (same architecture) reached: training
    (history.jsonl images/s × the method's units) and evaluation (results.jsonl)."""
    train, test, devices = [], [], set()
    for args_file in sorted(out.glob("*/args.yaml")):
        run_dir = args_file.parent
        try:
            s = _parse(["-c", str(args_file)], str(args_file))
        except SystemExit:
            continue
        if str(s.model.arch) != str(arch):
            continue
        env = run_dir / "environment.json"
        if env.is_file():
            gpus = json.loads(env.read_text()).get("gpus") or ["cpu"]
            devices.add(gpus[0])
        units = train_units(s)
        train += [row["img_per_s"] * units for row in read_jsonl(run_dir / "history.jsonl")
                  if units and row.get("img_per_s")]
        for r in read_results(run_dir):
            if r.get("seconds"):
                test.append(r["n"] * eval_units(r.get("attack"), r.get("steps") or 0, r.get("eps") or 0)
                            / r["seconds"])
    return {"train": statistics.median(train) if train else None, "test": statistics.median(test) if test else None,
            "n_train": len(train), "n_test": len(test), "devices": sorted(devices)}


def paper_3090_rate() -> float:
    """FLOP/s of the paper's TGA-ZSR training on its RTX 3090 (the paper's text: 885 s per epoch)."""
    p = PAPER_3090
    return p["images"] * p["units"] * flops_per_image(p["arch"]) / p["epoch_s"]


def estimate(runs: dict, st: dict, out: Path) -> list[str]:
    """Hours of what remains: on this device (rates of earlier runs in the output folder), and on
    the paper's RTX 3090 (its TGA-ZSR epoch time scaled by FLOPs)."""
    per_arch: dict = {}
    unknown = 0
    for key, run in runs.items():
        arch = str(run.settings.model.arch)
        acc = per_arch.setdefault(arch, {"train": 0.0, "test": 0.0})
        if st["runs"][key]["train"][0] in ("todo", "partial"):
            steps = train_image_steps(run.settings.train)
            if steps is None:
                unknown += 1
            else:
                acc["train"] += steps * train_units(run.settings)
        for ek, ev in run.evals.items():
            for d in st["runs"][key]["evals"][ek][1]:
                n = set_size(d, "test", run.settings.train.root)
                e = ev.settings.eval
                n = min(n, e.n_samples) if n and e.n_samples else n
                acc["test"] += (n or 0) * eval_units(e.attack, e.test_numsteps, e.test_eps)
    lines, paper_rate = [], None
    for arch, acc in per_arch.items():
        if not acc["train"] and not acc["test"]:
            continue
        flops = flops_per_image(arch)
        paper_rate = paper_rate or paper_3090_rate()
        total = (acc["train"] + acc["test"]) * flops
        lines.append(f"  {arch}: {acc['train']:.3g} training + {acc['test']:.3g} test unit-images "
                     f"({flops / 1e9:.3g} GFLOP each): RTX 3090 at the paper's speed ≈ {total / paper_rate / 3600:.3g} GPU-h")
        rates = measured_rates(out, arch)
        if rates["train"] or rates["test"]:
            tr, te = rates["train"] or rates["test"], rates["test"] or rates["train"]
            hours = (acc["train"] / tr + acc["test"] / te) / 3600
            lines.append(f"    this device ({', '.join(rates['devices']) or '?'}; measured in {rates['n_train']} training "
                         f"log rows and {rates['n_test']} evaluations under {out}) ≈ {hours:.3g} h")
        else:
            lines.append(f"    this device: no run of {arch} measured yet under {out}")
    if unknown:
        lines.append(f"  ({unknown} training run(s) left out: training set size unknown until its data is present)")
    return lines or ["  nothing remains"]


# --- cost per table: wall clock and disk -------------------------------------------------------------
# Bytes of what a run writes besides last.pt, measured on the runs of this project (a tiny-vit synthetic
# run and the mini world): a results.jsonl row (~570 B), a history.jsonl row (~175 B), and the fixed files
# (args.yaml, environment.json, log.txt, model_card.json, the loss curve's PNG and PDF: ~0.15 MB).
RESULT_ROW_BYTES, HISTORY_ROW_BYTES, RUN_FILES_BYTES = 600, 180, 150_000


def checkpoint_bytes(s: Settings) -> int:
    """Bytes of a training run's last.pt: the visual tower's state dict (saved whatever is trained) and the
    optimiser's state of the tensors it steps (SGD with momentum: one buffer each; AdamW: two), fp32.
    Visual prompts and TIMA's text-tower tensors (small, or a part of the text tower) are not counted."""
    if not trains(s):
        return 0
    facts = model_facts(str(s.model.arch))
    stepped = facts["param_bytes"] if s.model.adaptation_method != "VPT" else []
    if s.train.last_num_ft:
        stepped = stepped[-s.train.last_num_ft:]
    slots = 2 if s.train.optimizer == "adamw" else (1 if s.train.momentum > 0 else 0)
    return facts["state_bytes"] + slots * sum(stepped)


def run_disk_bytes(run: Run) -> tuple[int, int]:
    """(checkpoint bytes, results and logs bytes) of a run once everything it serves is done."""
    rows = sum(len(ev.datasets) * len(ev.settings.eval.test_eps) for ev in run.evals.values())
    t = run.settings.train
    images = train_image_steps(t) if run.trains else 0
    history = math.ceil((images or 0) / t.batch_size / max(1, t.print_freq))
    return checkpoint_bytes(run.settings), rows * RESULT_ROW_BYTES + history * HISTORY_ROW_BYTES + RUN_FILES_BYTES


def unit_rates(arch: str, out: Path, img_per_s: float | None,
               paper_speed: bool = True) -> tuple[float | None, float | None, str]:
    """(training, test) unit-images per second of one GPU and where they come from: stated, measured
    under `out`, else the paper's RTX 3090 scaled by FLOPs (`paper_speed`; the mini world runs on CPUs,
    where a GPU's speed says nothing: (None, None, why) instead)."""
    if img_per_s:
        rate = img_per_s * PAPER_3090["units"]  # TGA-ZSR's training image: 2K + 7 = 11 units
        return rate, rate, f"stated: {img_per_s:g} TGA-ZSR training images/s per GPU (--img_per_s)"
    m = measured_rates(out, arch)
    if m["train"] or m["test"]:
        return (m["train"] or m["test"], m["test"] or m["train"],
                f"measured in {m['n_train']} training log rows and {m['n_test']} evaluations under {out}")
    if not paper_speed:
        return None, None, f"no run of {arch} measured under {out} yet, and no --img_per_s"
    rate = paper_3090_rate() / flops_per_image(arch)
    return rate, rate, "the paper's RTX 3090 (885 s per TGA-ZSR epoch), scaled by FLOPs"


def run_remaining_units(run: Run, state: dict) -> tuple[float | None, float]:
    """(training, test) unit-images of what remains of a run (training None: set size unknown)."""
    train = 0.0
    if state["train"][0] in ("todo", "partial"):
        steps = train_image_steps(run.settings.train)
        train = None if steps is None else steps * train_units(run.settings)
    test = 0.0
    for ek, ev in run.evals.items():
        e = ev.settings.eval
        for d in state["evals"][ek][1]:
            n = set_size(d, "test", run.settings.train.root)
            n = min(n, e.n_samples) if n and e.n_samples else n
            test += (n or 0) * eval_units(e.attack, e.test_numsteps, e.test_eps) * len(e.test_eps)
    return train, test


def longest_first(hours: list[float], workers: int) -> float:
    """Wall clock of independent jobs on `workers` machines, each job to the least-loaded machine, longest
    first (what --gpus does with a queue of runs, up to the order): never below the longest job."""
    loads = [0.0] * max(1, workers)
    for h in sorted(hours, reverse=True):
        loads[loads.index(min(loads))] += h
    return max(loads)


def _duration(hours: float) -> str:
    return f"{hours:.3g} h" if hours >= 1 else f"{hours * 60:.3g} min" if hours * 60 >= 1 else f"{hours * 3600:.3g} s"


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e8 else f"{n / 1e6:.3g} MB"


def table_costs(runs: dict, st: dict, tables: list[str], out: Path, gpus: int, img_per_s: float | None = None,
                unit: str = "GPU", paper_speed: bool = True) -> list[str]:
    """Per table: its runs, the wall clock of what remains on 1 and on `gpus` GPUs (or CPU jobs: `unit`),
    and the disk its checkpoints and results take when done (a run shared by two tables counts in both)."""
    lines = []
    for tid in tables:
        mine = [(k, r) for k, r in runs.items() if tid in r.tables]
        if not mine:
            continue
        hours, unknown, todo, sources, no_speed = [], 0, 0, set(), set()
        ckpt = files = 0
        for key, run in mine:
            train, test = run_remaining_units(run, st["runs"][key])
            tr, te, source = unit_rates(str(run.settings.model.arch), out, img_per_s, paper_speed)
            if train is None:
                unknown += 1
                train = 0.0
            if train or test:
                todo += 1
                if tr is None:
                    no_speed.add(source)
                else:
                    sources.add(source)
                    hours.append((train / tr + test / te) / 3600)
            c, f = run_disk_bytes(run)
            ckpt, files = ckpt + c, files + f
        trained = sum(1 for _, r in mine if r.trains)
        lines.append(f"  {tid}: {len(mine)} runs ({trained} trained, {len(mine) - trained} evaluated from their "
                     f"weights), {todo} with work left")
        if hours:
            lines.append(f"    wall clock of what remains: {_duration(sum(hours))} on 1 {unit}, "
                         f"{_duration(longest_first(hours, gpus))} on {gpus} {unit}s (one run per {unit}; the longest "
                         f"run: {_duration(max(hours))}); speed: {'; '.join(sorted(sources))}")
        if no_speed:
            lines.append(f"    wall clock: not known ({'; '.join(sorted(no_speed))}): run one of them first, "
                         f"or state the speed")
        if unknown:
            lines.append(f"    ({unknown} training run(s) not counted: the training set's size is unknown until "
                         f"its data is present)")
        lines.append(f"    disk when done: {_gb(ckpt + files)} = checkpoints {_gb(ckpt)} ({trained} x last.pt) + "
                     f"results and logs {_gb(files)}")
    return lines
