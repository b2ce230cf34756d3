"""Protocol audit: which evaluation knob moves a robust-accuracy number, for any checkpoint (docs/audit.md).

Evaluates one reference setting (the evaluation flags given; by default the paper's PGD-100 at
ε = 1/255, step 1/255, in fp32), then changes one knob at a time on the same images: the attack's
precision, its steps, step size and restarts, the attack itself (PGD-CE, CW, APGD-CE, APGD-T and the
worst case over them), ε, the prompt templates and the preprocessing. Every row is an evaluation of
engine/evaluate.py in `<out>/results.jsonl` (a rerun skips what is done); the table prints each
row's clean and robust accuracy, Δ robust against the reference with a 95 % interval from a paired
bootstrap over the same images (reports/audit.py), and the time taken, then the sanity checks for
gradient masking. Written as `<out>/audit.md`, `audit.json` and `audit_delta.png` / `.pdf`.

MODEL is anything `--pretrained` takes (with `--arch` where needed), or a run folder of this project
(evaluated as `--resume`). `<out>`: `--out`, else `<run>/audit`, else `<output_dir>/eval_<arch>_<weights>/audit`.

    python audit.py checkpoints/tiny-world-clip.pt --arch configs/models/tiny-world.json --testdata world_heldout --n_samples 48 --device cpu
    python audit.py checkpoints/RUN --knobs steps,attack,eps --budget 30
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import datasets
from engine.audit import (ATTACK_LABELS, KNOBS, attack_precision_of, class_counts, images_for_budget, plan,
                          run_rows, seconds_per_step)
from engine.checkpoint import checkpoint_id, load_file, pretrained_id, training_status
from engine.device import resolve_device, resolve_precision, seed_everything
from engine.model import build_model, install_prompts
from engine.run_folder import prepare_run_dir, setup_logging
from engine.settings import Settings, get_args_parser as evaluation_parser, parse_args, validate
from engine.weights import load_visual_weights
from methods import method_label
from reports.audit import N_BOOT, build_report, plot_deltas, to_markdown, write_json
from tga_zsr import eval_method

log = logging.getLogger("tga_zsr")
AUDIT_REFERENCE_PRECISION = "fp32"  # the reference's precision unless --precision, a protocol or a config sets one


def add_audit_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Audit")
    g.add_argument("--knobs", default=",".join(KNOBS),
                   help=f"comma list of the knobs to change, one at a time (default all: {','.join(KNOBS)})")
    g.add_argument("--budget", type=float, default=0.0, metavar="MINUTES",
                   help="scale the images per test set down (never up: --n_samples, 0 all) so that the audit's "
                        "evaluations fit this time, from a timing run of the evaluator on this device (0: no limit)")
    g.add_argument("--out", default=None, help="audit folder (default: <run>/audit or <output_dir>/eval_.../audit)")
    g.add_argument("--bootstrap", type=int, default=N_BOOT, help="resamples of the paired bootstrap")


def get_args_parser() -> argparse.ArgumentParser:
    """tga_zsr.py's flags (the evaluation flags, --arch, --resume, --device, ...), MODEL and the audit's own."""
    p = evaluation_parser()
    p.prog = "audit.py"
    p.description = __doc__.split("\n")[0]
    p.add_argument("model", nargs="?", default=None,
                   help="weights (anything --pretrained takes) or a run folder of this project (as --resume)")
    add_audit_flags(p)
    return p


def split_argv(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the audit's own flags, the flags for engine.settings.parse_args with MODEL put in place)."""
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # --know is not --knobs
    add_audit_flags(own)
    a, rest = own.parse_known_args(argv)  # no positional: every unknown token stays in `rest`, in order
    model = rest.pop(0) if rest and not rest[0].startswith("-") else None
    if model is not None:
        folder = Path(model) if Path(model).is_dir() else Path(model).parent
        rest = (["--resume", model] if (folder / "args.yaml").is_file() else ["--pretrained", model]) + rest
    given = {t.split("=", 1)[0] for t in rest}
    if not given & {"--precision", "--protocol", "-c", "--config"}:
        rest = ["--precision", AUDIT_REFERENCE_PRECISION] + rest
    return a, rest + ["--eval_only"]


def knob_list(text: str) -> list[str]:
    names = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in names if k not in KNOBS]
    if bad or not names:
        raise SystemExit(f"--knobs {text}: unknown knob(s) {bad}; choose from {','.join(KNOBS)}")
    return names


def load_model(s: Settings, ckpt: Path | None, device):
    """(model, checkpoint description, method, 'stopped at step N of M' or None) as tga_zsr.py --eval_only
    loads them."""
    seed_everything(s.train.seed)
    model = build_model(s.model, device)
    checkpoint, method, stopped = pretrained_id(s.model.pretrained), eval_method(s, None, None), None
    if ckpt is not None:
        obj = load_file(ckpt, "--resume")
        install_prompts(model, s.model)
        load_visual_weights(model, ckpt, obj)
        checkpoint, method, stopped = checkpoint_id(ckpt, obj), eval_method(s, obj, ckpt), training_status(obj)
        log.info(f"loaded {ckpt} as {checkpoint}" + (f" ({stopped})" if stopped else ""))
    return model, checkpoint, method, stopped


def budget_images(a, e, rows, out: Path, model, device, precision, classes, sizes) -> int:
    """--n_samples under --budget: the stored choice of an earlier run of the same audit (so that a rerun
    finds its rows done), else from a timing run of the evaluator at each attack precision of the rows."""
    record = out / "budget.json"
    key = {"budget_minutes": a.budget, "n_samples": e.n_samples, "testdata": e.testdata, "knobs": a.knobs,
           "device": str(device)}
    if record.is_file():
        stored = json.loads(record.read_text())
        if stored.get("key") == key:
            log.info(f"--budget {a.budget:g}: {stored['n_samples']} images per set, as chosen before ({record})")
            return stored["n_samples"]
    t0 = time.perf_counter()
    wanted = e.n_samples or max(sizes.values())
    per_step = {p: seconds_per_step(model, e, e.testdata[0], device, precision, p, wanted)
                for p in {attack_precision_of(r, device, precision) for r in rows}}
    left = a.budget * 60 - (time.perf_counter() - t0)
    n = images_for_budget(left, rows, sizes, classes, per_step, e.n_samples, device, precision)
    log.info(f"--budget {a.budget:g} min: {n} images per set (seconds per image and step: "
             + ", ".join(f"{p} {v:.2e}" for p, v in per_step.items()) + ")")
    record.write_text(json.dumps({"key": key, "n_samples": n, "seconds_per_step": per_step}, indent=1) + "\n")
    return n


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        get_args_parser().print_help()
        return 0
    a, rest = split_argv(argv)
    knobs = knob_list(a.knobs)
    args = parse_args(rest)
    validate(args)
    s = Settings.from_args(args)
    device = resolve_device(s.run.device)
    precision = resolve_precision(s.run.precision, device)
    t0 = time.perf_counter()
    run_dir, ckpt = prepare_run_dir(s)
    out = Path(a.out) if a.out else run_dir / "audit"
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    e = replace(s.eval, testdata=list(dict.fromkeys(datasets.canonical_name(d) for d in s.eval.testdata)), save_adv=0)
    try:  # every set in place and whole before the first evaluation (--allow_partial: marked so)
        partial = {name: mark for (name, _), mark in datasets.check_datasets(
            [(d, "test") for d in e.testdata], e.root, e.n_samples, s.run.allow_partial, e.skip_corrupt).items()}
    except datasets.DatasetError as err:
        raise SystemExit(f"dataset check failed before the audit:\n{err}") from None
    for name, mark in partial.items():
        log.warning(f"{name}: {mark} (--allow_partial): its results are marked so")
    model, checkpoint, method, stopped = load_model(s, ckpt, device)
    classes, sizes = class_counts(e)
    if a.budget > 0:
        rows, _ = plan(e, knobs, device, precision, classes)
        e = replace(e, n_samples=budget_images(a, e, rows, out, model, device, precision, classes, sizes))
    rows, notes = plan(e, knobs, device, precision, classes)
    images = {d: min(e.n_samples or sizes[d], sizes[d]) for d in e.testdata}
    label = method_label(method)
    log.info(f"audit of {label} ({checkpoint}): {len(rows)} evaluations of {', '.join(f'{d} ({k} images)' for d, k in images.items())} "
             f"-> {out}")
    results = run_rows(rows, model, out, checkpoint, device, precision, method, label, classes, images,
                       stopped=stopped, partial=partial)
    entries = [{"key": r.key, "knob": r.knob, "value": r.value, "attack": ATTACK_LABELS.get(r.attack),
                "results": results[r.key]} for r in rows]
    report = build_report(entries, a.bootstrap, s.train.seed)
    report.update(model=f"{label} ({checkpoint})", notes=notes, knobs=knobs, device=str(device),
                  budget_minutes=a.budget or None, wall_seconds=round(time.perf_counter() - t0, 1))
    text = to_markdown(report)
    (out / "audit.md").write_text(text)
    write_json(report, out / "audit.json")
    figures = plot_deltas(report, out)
    print(text)
    log.info(f"audit done in {report['wall_seconds']:.0f} s: {out / 'audit.md'}, {out / 'audit.json'}, "
             + ", ".join(str(f) for f in figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
