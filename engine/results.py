"""Results: `<run>/results.jsonl` (one JSON line per evaluated dataset, written as each dataset
finishes) and the challenge table built from them (SPEC §5–6).

A rerun with identical settings (`SETTING_KEYS`) skips the datasets already in the file; a line
cut short by a kill is ignored (that dataset is redone) and the next line starts on a fresh line.
Every ignored line is reported with its number and the reason (not JSON, a field missing).
A row's `n` is the number of images its accuracies are over; `skipped` counts the unreadable
images left out with `--skip_corrupt`, and the table marks such cells with † and a note.

The table: per-dataset robust and clean top-1, their unweighted means, and Average =
(robust + clean) / 2, one row per run, labelled with the `label` its results carry (the paper's
spelling: CLIP, TeCoA, TGA-ZSR, ...) plus the run name when two runs share a label. Datasets come
in the order the caller gives (tga_zsr.py: the 16 test sets of SPEC §5, then the world sets);
a run without a dataset that another run has shows "–" there, and its means (over the datasets
it has) are marked with *. Results evaluated with different attack settings (`GROUP_KEYS`) go
into separate tables, each titled with its settings. Markdown on stdout, and a CSV.

Tables beside reference numbers (the paper's) are `comparison.py`.
No torch import: it runs instantly.

    from engine.results import read_results, find_done, append_result
    python tga_zsr.py --table checkpoints/tecoa_run checkpoints/tga_zsr_run
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

RESULTS_NAME = "results.jsonl"

# The attack settings that make two results comparable: one table (and one trade-off plot) each.
# `attack` is one attack or a comma list (robust = the worst case over them); `attack_precision` is
# the autocast the attacks ran under; `aa_version` AutoAttack's attacks (attacks.AA_VERSIONS);
# `protocol` the preset that set them (configs/protocols/); `transform` the images' preprocessing
# (`tga_zsr`: each dataset's SPEC §5 transform; `robustvlm`: native resolution, see evaluate.py);
# `batch_stride` "KxB": only every K-th batch of B images (TeCoA's training-time validation).
GROUP_KEYS = ("attack", "norm", "eps", "steps", "step_size", "n_samples", "attack_precision", "aa_version",
              "protocol", "transform", "batch_stride")
# Settings that must match for a stored result to count as done (the batch size is not one:
# PGD accuracies do not depend on it; see evaluate.py).
SETTING_KEYS = GROUP_KEYS + ("precision", "seed", "checkpoint")
# Rows written before a setting existed hold the value that reproduces them: an old results.jsonl
# still counts as done, and its rows sit in the same tables as new rows of the same settings.
SETTING_DEFAULTS = {
    "attack_precision": lambda r: r.get("precision"),
    "aa_version": lambda r: "aa-papers" if "autoattack" in str(r.get("attack")) else None,
    "protocol": lambda r: None, "transform": lambda r: "tga_zsr", "batch_stride": lambda r: None,
}
# A robust accuracy that rises by more than this many points when the attack runs in lower precision
# than fp32 is flagged: a weaker attack in fp16/bf16 is what gradient masking by precision looks like.
PRECISION_GAP_FLAG = 1.0
MISSING = "–"
# What a results row must hold to be counted (older or hand-edited rows without them are ignored).
REQUIRED = {"dataset": str, "clean_acc": (int, float), "robust_acc": (int, float)}


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def setting(row: dict, key: str):
    """A row's value of a setting, with the default of rows written before the setting existed."""
    if key in row:
        return row[key]
    return SETTING_DEFAULTS[key](row) if key in SETTING_DEFAULTS else None


def group_key(row: dict) -> tuple:
    return tuple(setting(row, k) for k in GROUP_KEYS)


def results_path(run_or_file: str | Path) -> Path:
    p = Path(run_or_file)
    return p / RESULTS_NAME if p.is_dir() or p.suffix != ".jsonl" else p


def _numbered_rows(path: Path, warn) -> list[tuple[int, dict]]:
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            cut = lineno == len(lines) and line.startswith("{")
            warn(f"{path} line {lineno} ignored: " + ("cut short (the process was killed while writing it)"
                                                       if cut else f"not JSON ({e.msg}: {line[:40]!r})"))
            continue
        if isinstance(row, dict):
            rows.append((lineno, row))
        else:
            warn(f"{path} line {lineno} ignored: a JSON {type(row).__name__}, not an object")
    return rows


def read_jsonl(path: str | Path, warn=warn) -> list[dict]:
    """The JSON objects of a .jsonl file (results, history); a line that is not one (cut by a kill,
    edited by hand) is skipped, and `warn` is told which line and why."""
    return [row for _, row in _numbered_rows(Path(path), warn)]


def read_results(run_or_file: str | Path, warn=warn) -> list[dict]:
    """All complete rows of a run's results.jsonl (a run folder or the file itself); a row without
    one of the REQUIRED fields is reported and left out (that dataset counts as not evaluated)."""
    path = results_path(run_or_file)
    rows = []
    for lineno, r in _numbered_rows(path, warn):
        bad = [k for k, kind in REQUIRED.items() if not isinstance(r.get(k), kind) or isinstance(r.get(k), bool)]
        if bad:
            warn(f"{path} line {lineno} ignored: no valid {', '.join(bad)} (dataset {r.get('dataset', '?')}); "
                 f"that dataset counts as not evaluated")
            continue
        rows.append(r)
    return rows


def row_label(row: dict, label_of=None) -> str:
    """The display label of a results row. Rows written before rows carried labels: `label_of(method)`
    (tga_zsr.py passes methods.method_label), else the method name."""
    if row.get("label"):
        return row["label"]
    method = row.get("method") or "?"
    return label_of(method) if label_of else method


def find_done(rows: list[dict], dataset: str, settings: dict) -> dict | None:
    """The last stored row of `dataset` evaluated with exactly `settings`, if any."""
    hit = None
    for r in rows:
        if r.get("dataset") == dataset and all(setting(r, k) == settings.get(k) for k in SETTING_KEYS):
            hit = r
    return hit


def append_result(path: str | Path, row: dict) -> None:
    """Append one row and flush it to disk; never glue it onto a half-written last line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    needs_newline = False
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            needs_newline = f.read(1) != b"\n"
    with open(path, "a") as f:
        f.write(("\n" if needs_newline else "") + json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


# --- the challenge table ------------------------------------------------------------------------------
def _num(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


AA_TITLES = {"aa-papers": "APGD-CE + APGD-DLR", "standard": "standard: APGD-CE, APGD-T, FAB-T, Square",
             "apgd-ce-t": "APGD-CE + APGD-T"}


def attack_title(attack, steps, aa_version) -> str:
    names = []
    for a in str(attack).split(","):
        if a == "autoattack":
            names.append(f"AutoAttack ({AA_TITLES.get(aa_version, aa_version or 'APGD-CE + APGD-DLR')})")
        else:
            names.append(f"{a.upper()}-{_num(steps)}")
    return names[0] if len(names) == 1 else "worst of " + " + ".join(names)


def group_title(key: tuple, precisions: list[str]) -> str:
    k = dict(zip(GROUP_KEYS, key))
    attack, step_size = k["attack"], k["step_size"]
    parts = [attack_title(attack, k["steps"], k["aa_version"]), f"ε = {_num(k['eps'])}/255"]
    if attack != "autoattack" and step_size is not None:
        parts.append(f"step {_num(step_size)}/255")
    parts.append(str(k["norm"]))
    if k["n_samples"]:
        parts.append(f"{k['n_samples']} samples per dataset")
    if k["batch_stride"]:
        parts.append(f"every {k['batch_stride'].replace('x', 'th batch of ')}")
    if precisions:
        parts.append("/".join(precisions))
    if k["attack_precision"] and precisions != [k["attack_precision"]]:
        parts.append(f"attacks in {k['attack_precision']}")
    if k["transform"] != "tga_zsr":
        parts.append(f"{k['transform']} images")
    if k["protocol"]:
        parts.append(f"protocol {k['protocol']}")
    return ", ".join(parts)


def format_table(rows: list[dict]) -> str:
    """A small per-dataset table of one run's results (the challenge table is `build_tables`)."""
    lines = ["| dataset | n | clean | robust |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r.get('n', MISSING)} | {r['clean_acc']:.2f} | {r['robust_acc']:.2f} |")
    if rows:
        mc = sum(r["clean_acc"] for r in rows) / len(rows)
        mr = sum(r["robust_acc"] for r in rows) / len(rows)
        lines.append(f"| **mean** | | {mc:.2f} | {mr:.2f} |")
    lines += [f"{r['dataset']}: {r['skipped']} unreadable image(s) skipped (--skip_corrupt); n = the "
              f"{r.get('n', MISSING)} read" for r in rows if r.get("skipped")]
    return "\n".join(lines)


def load_runs(runs: list[str]) -> list[tuple[str, list[dict]]]:
    out = []
    for run in runs:
        path = results_path(run)
        rows = read_results(path)
        if not rows:
            raise SystemExit(f"no results in {path}: evaluate the run first "
                             f"(python tga_zsr.py --eval_only --resume {run})")
        name = path.parent.name
        out.append((name, rows))
    return out


def dataset_order(names: set[str], order: list[str]) -> list[str]:
    known = [d for d in order if d in names]
    return known + sorted(names - set(known))


def build_tables(runs: list[tuple[str, list[dict]]], order: list[str] = (), label_of=None) -> list[dict]:
    """One table per settings group: {title, key, datasets, rows[{label, method, run, cells, means...}]}."""
    groups: dict[tuple, dict[str, dict[str, dict]]] = {}
    for run_name, rows in runs:
        for r in rows:
            key = group_key(r)
            # later lines win: a re-evaluation replaces the earlier number of that dataset
            groups.setdefault(key, {}).setdefault(run_name, {})[r["dataset"]] = r
    tables = []
    for key, per_run in groups.items():
        datasets = dataset_order({d for by_ds in per_run.values() for d in by_ds}, order)
        precisions = sorted({str(r.get("precision")) for by_ds in per_run.values() for r in by_ds.values()
                             if r.get("precision")})
        ordered_runs = [name for name, _ in runs if name in per_run]
        methods = {name: next(iter(per_run[name].values())).get("method") or name for name in ordered_runs}
        labels = {name: row_label(next(iter(per_run[name].values())), label_of) for name in ordered_runs}
        table_rows = []
        for name in ordered_runs:
            by_ds = per_run[name]
            method = methods[name]
            label = labels[name]
            if sum(1 for lab in labels.values() if lab == label) > 1:
                label = f"{label} ({name})"
            have = [d for d in datasets if d in by_ds]
            robust = sum(by_ds[d]["robust_acc"] for d in have) / len(have)
            clean = sum(by_ds[d]["clean_acc"] for d in have) / len(have)
            table_rows.append({"label": label, "method": method, "run": name,
                               "cells": {d: (by_ds[d]["robust_acc"], by_ds[d]["clean_acc"]) for d in have},
                               "skipped": {d: (by_ds[d]["skipped"], by_ds[d].get("n", MISSING)) for d in have
                                           if by_ds[d].get("skipped")},
                               "robust": robust, "clean": clean, "average": (robust + clean) / 2,
                               "complete": len(have) == len(datasets), "n_datasets": len(have)})
        tables.append({"key": key, "title": group_title(key, precisions), "datasets": datasets,
                       "precision": "/".join(precisions), "rows": table_rows})
    mark_precision_gaps(tables)
    return tables


def mark_precision_gaps(tables: list[dict], flag_above: float = PRECISION_GAP_FLAG) -> None:
    """For a run evaluated with the same settings once with fp32 attacks and once in fp16/bf16:
    `precision_gap` = low-precision robust − fp32 robust (mean over the datasets both have), and
    `masking` when it exceeds `flag_above` points (the lower precision weakened the attack)."""
    index = GROUP_KEYS.index("attack_precision")
    fp32 = {t["key"][:index] + t["key"][index + 1:]: t for t in tables if t["key"][index] == "fp32"}
    for t in tables:
        ref = fp32.get(t["key"][:index] + t["key"][index + 1:])
        if t["key"][index] in (None, "fp32") or ref is None:
            continue
        ref_rows = {r["run"]: r for r in ref["rows"]}
        for row in t["rows"]:
            other = ref_rows.get(row["run"])
            common = [d for d in row["cells"] if other and d in other["cells"]]
            if not common:
                continue
            gap = sum(row["cells"][d][0] - other["cells"][d][0] for d in common) / len(common)
            row["precision_gap"] = {"vs": "fp32", "points": round(gap, 2), "datasets": len(common),
                                    "masking": gap > flag_above}


def to_markdown(tables: list[dict]) -> str:
    blocks = []
    for t in tables:
        header = ["Method"] + [f"{d} {kind}" for d in t["datasets"] for kind in ("Robust", "Clean")]
        header += ["Robust", "Clean", "Average"]
        lines = [f"### {t['title']}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        flagged, notes = False, []
        for row in t["rows"]:
            cells = [row["label"]]
            for d in t["datasets"]:
                if d in row["cells"]:
                    dagger = "†" if d in row["skipped"] else ""
                    cells += [f"{row['cells'][d][0]:.2f}{dagger}", f"{row['cells'][d][1]:.2f}{dagger}"]
                else:
                    cells += [MISSING, MISSING]
            mark = "" if row["complete"] else "*"
            flagged |= not row["complete"]
            cells += [f"{row['robust']:.2f}{mark}", f"{row['clean']:.2f}{mark}", f"{row['average']:.2f}{mark}"]
            lines.append("| " + " | ".join(cells) + " |")
            notes += [f"† {row['label']}, {d}: {k} unreadable image(s) skipped (--skip_corrupt); accuracy over the "
                      f"{n} read." for d, (k, n) in row["skipped"].items()]
        if flagged:
            lines += ["", f"\\* mean over the datasets that run has, not all {len(t['datasets'])}."]
        if notes:
            lines += [""] + notes
        for row in t["rows"]:
            gap = row.get("precision_gap")
            if gap:
                verdict = (f"more than {PRECISION_GAP_FLAG:g}: possible gradient masking, trust the fp32 numbers"
                           if gap["masking"] else f"within {PRECISION_GAP_FLAG:g}")
                lines += ["", f"{row['label']}: attacks in {t['key'][GROUP_KEYS.index('attack_precision')]} give "
                          f"{gap['points']:+.2f} points of robust accuracy against fp32 attacks "
                          f"({gap['datasets']} datasets), {verdict}."]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def write_csv(tables: list[dict], path: str | Path, order: list[str] = ()) -> None:
    datasets = dataset_order({d for t in tables for d in t["datasets"]}, order)
    fields = list(GROUP_KEYS[:6]) + ["precision", "method", "label", "run"]
    fields += [f"{d}_{kind}" for d in datasets for kind in ("robust", "clean")]
    fields += ["mean_robust", "mean_clean", "average", "n_datasets", "complete", "skipped_images"]
    fields += list(GROUP_KEYS[6:]) + ["precision_gap", "possible_masking"]  # later settings after the old columns
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        for t in tables:
            for row in t["rows"]:
                rec = dict(zip(GROUP_KEYS, t["key"]))
                rec.update(precision=t["precision"], method=row["method"], label=row["label"], run=row["run"],
                           mean_robust=f"{row['robust']:.2f}", mean_clean=f"{row['clean']:.2f}",
                           average=f"{row['average']:.2f}", n_datasets=row["n_datasets"], complete=row["complete"],
                           skipped_images=sum(k for k, _ in row["skipped"].values()))
                for d, (rob, cl) in row["cells"].items():
                    rec[f"{d}_robust"], rec[f"{d}_clean"] = f"{rob:.2f}", f"{cl:.2f}"
                if row.get("precision_gap"):
                    rec["precision_gap"] = f"{row['precision_gap']['points']:.2f}"
                    rec["possible_masking"] = row["precision_gap"]["masking"]
                w.writerow(rec)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("the challenge table of evaluated runs")
    p.add_argument("runs", nargs="+", help="run folders (or their results.jsonl files)")
    p.add_argument("--out", default=None, help="CSV path (default: <first run>/table.csv)")
    return p


def table_main(argv=None, order: list[str] = (), label_of=None) -> int:
    """`tga_zsr.py --table RUN ... [--out CSV]`: print the tables, write the CSV."""
    args = get_args_parser().parse_args(argv)
    tables = build_tables(load_runs(args.runs), order, label_of)
    print(to_markdown(tables), end="")
    out = Path(args.out) if args.out else results_path(args.runs[0]).parent / "table.csv"
    write_csv(tables, out, order)
    print(f"CSV written to {out}")
    return 0
