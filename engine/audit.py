"""The protocol audit's evaluations (docs/audit.md): one reference setting, and for each knob the same
setting with that one thing changed, each evaluated by the evaluator (`evaluate_run`) on the same
images with every image's outcome kept, into one results.jsonl, so that a rerun skips what is done;
and the number of images that fits a time budget. The statistics, checks and table are
reports/audit.py; audit.py wires the two.

A knob's rows are its values other than the reference's (a value that gives the reference's exact
settings is the reference). The sanity checks need two rows no knob has: a large ε (`LARGE_EPS`, with a
step size large enough for the steps to cross that ball) and random noise (the random start alone:
PGD, one step of size 0).

    rows, notes = plan(e, KNOBS, device, precision, classes)
    results = run_rows(rows, model, out_dir, checkpoint, device, precision, method, label)
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

import datasets
from attacks import AA_TARGETS, AA_VERSIONS, MIN_CLASSES, attack_list
from engine.evaluate import evaluate_dataset, evaluate_run, load_test_data, class_features, row_settings
from engine.settings import EvalSettings

log = logging.getLogger("tga_zsr")

KNOBS = ("precision", "steps", "step_size", "restarts", "attack", "eps", "templates", "transform")
PRECISIONS = ("fp32", "amp", "bf16")
STEPS = (10, 20, 100)
RESTARTS = (1, 5)
# attack name -> (--attack, --aa_version); APGD-CE and APGD-T are AutoAttack's (pyautoattack)
ATTACKS = {"pgd": ("pgd", None), "cw": ("cw", None), "apgd-ce": ("autoattack", "apgd-ce"),
           "apgd-t": ("autoattack", "apgd-t")}
ATTACK_LABELS = {"pgd": "PGD-CE", "cw": "CW", "apgd-ce": "APGD-CE", "apgd-t": "APGD-T"}
EPSILONS = (1.0, 2.0, 4.0)
LARGE_EPS = 16.0          # the check "robust accuracy reaches ~0 at a large ε" (1/255 units)
LARGE_STEP_FACTOR = 2.5   # its step size is at least 2.5·ε / steps (Madry et al. 2018), whatever the reference's
TEMPLATES = ("single", "ensemble")
PREPROCESSING = ("resize", "crop")
# Gradient steps per image of one run of each AutoAttack attack (pyautoattack 0.2.0, version 'custom'):
# APGD-CE and APGD-DLR 100 iterations × 5 restarts, the targeted ones 100 per target class, Square
# 5000 queries of a forward (about a third of a step). An upper bound: AutoAttack attacks only the images
# still robust.
AA_STEPS = {"apgd-ce": 500, "apgd-dlr": 500, "apgd-t": 100, "fab-t": 100, "square": 5000 / 3}
AA_PER_TARGET = ("apgd-t", "fab-t")
CALIBRATION_STEPS = 3     # PGD steps of the timing run behind --budget


@dataclass(frozen=True)
class Row:
    """One evaluation of the audit: `knob` (a KNOBS name, "reference" or "check") set to `value`."""
    key: str              # "reference", "steps=10", "attack=cw", "check=large_eps", ...
    knob: str
    value: str            # as the table prints it
    eval: EvalSettings    # one ε; its testdata: the sets this row runs on
    attack: str | None = None  # the ATTACKS name of a row that is one of them (the worst case is over these)


def precision_supported(precision: str, device: torch.device) -> str | None:
    """None if the device runs attacks in `precision`, else why not."""
    if precision == "amp" and device.type != "cuda":
        return "amp (fp16 autocast) is fp32 off CUDA in this project (engine/device.py resolve_precision)"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "bf16: this GPU does not support it"
    if precision == "bf16" and device.type == "cpu":
        try:
            native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        except (AttributeError, RuntimeError):
            native = False
        if not native:
            return "bf16: this CPU has no native bf16 (emulated: many times slower)"
    return None


def attack_name(e: EvalSettings) -> str | None:
    """The ATTACKS name of `e`'s attack, if it is one of them (a single attack)."""
    names = attack_list(e.attack)
    if len(names) != 1:
        return None
    version = e.aa_version if names[0] == "autoattack" else None
    return next((n for n, (a, v) in ATTACKS.items() if (a, v) == (names[0], version)), None)


def describe(e: EvalSettings, settings: dict) -> str:
    """A setting in one line (`settings`: its results rows' settings): attack, ε, step, restarts,
    attack precision, prompts, images."""
    a = attack_name(e)
    auto = attack_list(e.attack) == ["autoattack"]
    name = ATTACK_LABELS[a] if a else (f"AutoAttack {e.aa_version}" if auto else settings["attack"])
    parts = [name + ("" if auto else f"-{settings['steps']}"), f"ε {settings['eps']:g}/255"]
    if not auto:
        parts += [f"step {settings['step_size']:g}/255",
                  f"{settings['restarts']} restart" + ("s" if settings["restarts"] > 1 else "")]
    parts += [f"attacks in {settings['attack_precision']}", f"{settings['templates']} template",
              f"{settings['transform']} images"]
    return ", ".join(parts)


def plan(e: EvalSettings, knobs, device, precision: str, classes: dict[str, int]) -> tuple[list[Row], list[str]]:
    """The rows of the audit of `e` (its first ε) over `knobs`, and a note for each row left out.
    `classes`: each test set's class count (APGD-T needs 4)."""
    ref = replace(e, test_eps=[e.test_eps[0]])
    eps = ref.test_eps[0]

    def settings_of(v: EvalSettings) -> dict:
        return row_settings(v, v.test_eps[0], "", device, precision)

    rows = [Row("reference", "reference", describe(ref, settings_of(ref)), ref, attack_name(ref))]
    notes = []
    if len(e.test_eps) > 1:
        notes.append(f"--test_eps {' '.join(f'{v:g}' for v in e.test_eps)}: the reference is the first, ε {eps:g}/255")

    taken = {json.dumps(settings_of(ref), sort_keys=True): "reference"}

    def add(knob: str, key: str, value: str, variant: EvalSettings, attack: str | None = None) -> None:
        same = taken.get(json.dumps(settings_of(variant), sort_keys=True))
        if same == "reference" and attack is not None:
            return  # the reference is this attack: it is in the worst case as itself
        if same is not None:
            if same != "reference":
                notes.append(f"{knob} {value}: the same settings as {same}")
            return
        taken[json.dumps(settings_of(variant), sort_keys=True)] = key
        rows.append(Row(key, knob, value, variant, attack))

    if "precision" in knobs:
        for p in PRECISIONS:
            why = precision_supported(p, device)
            if why:
                notes.append(f"precision {p}: skipped, {why}")
            else:
                add("precision", f"precision={p}", p, replace(ref, attack_precision=p))
    if "steps" in knobs:
        for k in STEPS:
            add("steps", f"steps={k}", f"{k} steps", replace(ref, test_numsteps=k))
    if "step_size" in knobs:
        for v, text in ((1.0, "1/255"), (eps / 4, f"ε/4 = {eps / 4:g}/255")):
            add("step_size", f"step_size={v:g}", f"step {text}", replace(ref, test_stepsize=v))
    if "restarts" in knobs:
        for r in RESTARTS:
            add("restarts", f"restarts={r}", f"{r} restart" + ("s" if r > 1 else ""), replace(ref, restarts=r))
    if "attack" in knobs:
        for name, (attack, version) in ATTACKS.items():
            sets = [d for d in ref.testdata if version != "apgd-t" or classes[d] >= MIN_CLASSES["apgd-t"]]
            if len(sets) < len(ref.testdata):
                notes.append(f"attack {ATTACK_LABELS[name]}: left out on {', '.join(sorted(set(ref.testdata) - set(sets)))}"
                             f" (it needs {MIN_CLASSES['apgd-t']} classes)")
            if sets:
                add("attack", f"attack={name}", ATTACK_LABELS[name],
                    replace(ref, attack=attack, aa_version=version or ref.aa_version, testdata=sets), name)
        add("check", "check=noise", "random noise (the random start alone: PGD, 1 step of 0)",
            replace(ref, attack="pgd", test_numsteps=1, test_stepsize=0.0, restarts=1))
    if "eps" in knobs:
        for v in EPSILONS:
            add("eps", f"eps={v:g}", f"ε = {v:g}/255", replace(ref, test_eps=[v]))
        # the steps must be able to cross the large ball: at least Madry et al.'s step of 2.5·ε / steps
        step = max(ref.test_stepsize, LARGE_STEP_FACTOR * LARGE_EPS / max(1, ref.test_numsteps))
        add("check", "check=large_eps", f"ε = {LARGE_EPS:g}/255" + (f", step {step:g}/255" if step != ref.test_stepsize
                                                                   else ""),
            replace(ref, test_eps=[LARGE_EPS], test_stepsize=step))
    if "templates" in knobs:
        for t in TEMPLATES:
            add("templates", f"templates={t}", f"template {t}", replace(ref, templates=t))
    if "transform" in knobs:
        for t in PREPROCESSING:
            add("transform", f"transform={t}", f"{t} images", replace(ref, transform=t))
    for knob in knobs:
        if not any(r.knob == knob for r in rows) and not any(n.startswith(knob) for n in notes):
            notes.append(f"{knob}: every value it takes here is the reference's, no row")
    return rows, notes


def steps_per_image(e: EvalSettings, classes: int) -> float:
    """Gradient steps per image of `e`'s attacks (AutoAttack's: an upper bound), plus the clean forward."""
    total = 1.0
    for a in attack_list(e.attack):
        if a == "autoattack":
            for atk in AA_VERSIONS[e.aa_version][1]:
                targets = max(1, min(AA_TARGETS, classes - 1)) if atk in AA_PER_TARGET else 1
                total += AA_STEPS[atk] * targets
        else:
            total += e.test_numsteps * e.restarts
    return total


def seconds_per_step(model, e: EvalSettings, name: str, device, precision: str, attack_precision: str,
                     n: int) -> float:
    """Seconds per image and gradient step of the evaluator on `name`, at a batch of min(n, batch size)
    images (a timing run of CALIBRATION_STEPS PGD steps; the batch's size sets the throughput)."""
    size = model.image_tower.image_size[0]
    batch = min(n, e.test_batch_size)
    data = load_test_data(replace(e, n_samples=batch), name, e.transform, size)
    text = class_features(model, data, "single")
    settings = {**row_settings(e, e.test_eps[0], "", device, precision), "attack": "pgd",
                "steps": CALIBRATION_STEPS, "step_size": e.test_stepsize, "attack_precision": attack_precision,
                "restarts": 1}
    t0 = time.perf_counter()
    evaluate_dataset(model, data, text, settings, device, precision, batch, 0, show_progress=False)
    return (time.perf_counter() - t0) / (len(data) * (CALIBRATION_STEPS + 1))


def attack_precision_of(r: Row, device, precision: str) -> str:
    return row_settings(r.eval, r.eval.test_eps[0], "", device, precision)["attack_precision"]


def images_for_budget(seconds: float, rows: list[Row], sizes: dict[str, int], classes: dict[str, int],
                      per_step: dict[str, float], wanted: int, device, precision: str) -> int:
    """The images per test set (`--n_samples`) that let every row finish in `seconds`: at most
    `wanted` (0: every image), at least one per class (a class-balanced subset needs as many).
    `per_step`: seconds per image and step at each attack precision of the rows."""
    cost = 0.0  # seconds per image of every set, all rows together
    for r in rows:
        rate = per_step[attack_precision_of(r, device, precision)]
        cost += sum(steps_per_image(r.eval, classes[d]) * rate for d in r.eval.testdata)
    most = wanted or max(sizes.values())
    n = int(seconds / cost) if cost > 0 else most
    return max(max(classes.values()), min(n, most))


def run_rows(rows: list[Row], model, out_dir: Path, checkpoint: str, device, precision: str, method: str,
             label: str, classes: dict[str, int], images: dict[str, int], stopped: str | None = None,
             partial: dict | None = None) -> dict[str, list[dict]]:
    """Each row's results rows (one per test set), evaluated into `out_dir/results.jsonl` by the evaluator,
    done ones read back. `images`: how many each set evaluates; `stopped` and `partial` the evaluator's
    marks (an unfinished training's weights, a test set short of its release). The bar counts an image's gradient steps
    (an upper bound for AutoAttack's): its ETA is the whole audit's; each row's own bar shows images/s."""
    def cost(r: Row) -> int:
        return round(sum(steps_per_image(r.eval, classes[d]) * images[d] for d in r.eval.testdata))

    bar = tqdm(total=sum(cost(r) for r in rows), unit="step", unit_scale=True, desc="audit", dynamic_ncols=True)
    out = {}
    for i, r in enumerate(rows, 1):
        bar.set_postfix_str(f"row {i}/{len(rows)}: {r.knob} {r.value}"[:60])
        out[r.key] = evaluate_run(r.eval, model, out_dir, checkpoint, device, precision, method, label,
                                  stopped=stopped, partial=partial, per_sample=True)
        bar.update(cost(r))
    bar.close()
    return out


def class_counts(e: EvalSettings) -> tuple[dict[str, int], dict[str, int]]:
    """(classes, images) of each test set of `e`, canonical names."""
    classes, sizes = {}, {}
    for name in e.testdata:
        data = datasets.get_dataset(datasets.canonical_name(name), e.root, "test")
        classes[data.name], sizes[data.name] = len(data.classnames), len(data)
    return classes, sizes
