"""The challenge table (SPEC §5–6) from runs' results.jsonl: per-dataset robust and clean top-1,
their unweighted means, and Average = (robust + clean) / 2, one row per run.

Rows are labelled with the method of the results (the paper's spelling: CLIP, TeCoA, TGA-ZSR,
...), plus the run name when two runs share a method. Datasets come in the order of the 16 test
sets of SPEC §5 (others after them); a run without a dataset that another run has shows "–"
there, and its means (over the datasets it has) are marked with *. Results evaluated with
different attack settings (attack, norm, ε, steps, step size, subset size) go into separate
tables, each titled with its settings. Prints Markdown; writes a CSV (default:
`<first run>/table.csv`). No torch import: it runs instantly.

    python make_table.py checkpoints/tecoa_run checkpoints/tga_zsr_run
    python tga_zsr.py --table checkpoints/tecoa_run checkpoints/tga_zsr_run
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from params import ALL_TEST_SETS
from results import read_results, results_path

# The paper table's row names for the registry's method names.
METHOD_LABELS = {
    "clip": "CLIP", "ft_clean": "FT-Clean", "ft_adv": "FT-Adv.", "tecoa": "TeCoA", "tecoa_vpt": "TeCoA w/ Prompting",
    "pmg_aft": "PMG-AFT", "fare": "FARE", "tima": "TIMA", "tga_zsr_visual": "Vision-based", "tga_zsr": "TGA-ZSR",
    "comp_tga": "Comp-TGA",
}
GROUP_KEYS = ("attack", "norm", "eps", "steps", "step_size", "n_samples")
MISSING = "–"


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def group_title(key: tuple, precisions: list[str]) -> str:
    attack, norm, eps, steps, step_size, n_samples = key
    if attack == "autoattack":
        name = "AutoAttack (APGD-CE + APGD-DLR)"
    else:
        name = f"{str(attack).upper()}-{_num(steps)}"
    parts = [name, f"ε = {_num(eps)}/255"]
    if attack != "autoattack" and step_size is not None:
        parts.append(f"step {_num(step_size)}/255")
    parts.append(str(norm))
    if n_samples:
        parts.append(f"{n_samples} samples per dataset")
    if precisions:
        parts.append("/".join(precisions))
    return ", ".join(parts)


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


# The mini world's sets in their suite order (datasets/world.py SUITE; not imported: no torch here).
WORLD_ORDER = ["world_heldout", "world_shape", "world_colour", "world_texture", "world_size", "world_background",
               "world_position"]


def dataset_order(names: set[str]) -> list[str]:
    known = [d for d in ALL_TEST_SETS + WORLD_ORDER if d in names]
    return known + sorted(names - set(known))


def build_tables(runs: list[tuple[str, list[dict]]]) -> list[dict]:
    """One table per settings group: {title, key, datasets, rows[{label, method, run, cells, means...}]}."""
    groups: dict[tuple, dict[str, dict[str, dict]]] = {}
    for run_name, rows in runs:
        for r in rows:
            key = tuple(r.get(k) for k in GROUP_KEYS)
            # later lines win: a re-evaluation replaces the earlier number of that dataset
            groups.setdefault(key, {}).setdefault(run_name, {})[r["dataset"]] = r
    tables = []
    for key, per_run in groups.items():
        datasets = dataset_order({d for by_ds in per_run.values() for d in by_ds})
        precisions = sorted({str(r.get("precision")) for by_ds in per_run.values() for r in by_ds.values()
                             if r.get("precision")})
        ordered_runs = [name for name, _ in runs if name in per_run]
        methods = {name: next(iter(per_run[name].values())).get("method") or name for name in ordered_runs}
        table_rows = []
        for name in ordered_runs:
            by_ds = per_run[name]
            method = methods[name]
            label = METHOD_LABELS.get(method, method)
            if sum(1 for m in methods.values() if m == method) > 1:
                label = f"{label} ({name})"
            have = [d for d in datasets if d in by_ds]
            robust = sum(by_ds[d]["robust_acc"] for d in have) / len(have)
            clean = sum(by_ds[d]["clean_acc"] for d in have) / len(have)
            table_rows.append({"label": label, "method": method, "run": name,
                               "cells": {d: (by_ds[d]["robust_acc"], by_ds[d]["clean_acc"]) for d in have},
                               "robust": robust, "clean": clean, "average": (robust + clean) / 2,
                               "complete": len(have) == len(datasets), "n_datasets": len(have)})
        tables.append({"key": key, "title": group_title(key, precisions), "datasets": datasets,
                       "precision": "/".join(precisions), "rows": table_rows})
    return tables


def to_markdown(tables: list[dict]) -> str:
    blocks = []
    for t in tables:
        header = ["Method"] + [f"{d} {kind}" for d in t["datasets"] for kind in ("Robust", "Clean")]
        header += ["Robust", "Clean", "Average"]
        lines = [f"### {t['title']}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        flagged = False
        for row in t["rows"]:
            cells = [row["label"]]
            for d in t["datasets"]:
                if d in row["cells"]:
                    cells += [f"{row['cells'][d][0]:.2f}", f"{row['cells'][d][1]:.2f}"]
                else:
                    cells += [MISSING, MISSING]
            mark = "" if row["complete"] else "*"
            flagged |= not row["complete"]
            cells += [f"{row['robust']:.2f}{mark}", f"{row['clean']:.2f}{mark}", f"{row['average']:.2f}{mark}"]
            lines.append("| " + " | ".join(cells) + " |")
        if flagged:
            lines += ["", f"\\* mean over the datasets that run has, not all {len(t['datasets'])}."]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def write_csv(tables: list[dict], path: str | Path) -> None:
    datasets = dataset_order({d for t in tables for d in t["datasets"]})
    fields = list(GROUP_KEYS) + ["precision", "method", "label", "run"]
    fields += [f"{d}_{kind}" for d in datasets for kind in ("robust", "clean")]
    fields += ["mean_robust", "mean_clean", "average", "n_datasets", "complete"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        for t in tables:
            for row in t["rows"]:
                rec = dict(zip(GROUP_KEYS, t["key"]))
                rec.update(precision=t["precision"], method=row["method"], label=row["label"], run=row["run"],
                           mean_robust=f"{row['robust']:.2f}", mean_clean=f"{row['clean']:.2f}",
                           average=f"{row['average']:.2f}", n_datasets=row["n_datasets"], complete=row["complete"])
                for d, (rob, cl) in row["cells"].items():
                    rec[f"{d}_robust"], rec[f"{d}_clean"] = f"{rob:.2f}", f"{cl:.2f}"
                w.writerow(rec)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("make_table: the challenge table of evaluated runs")
    p.add_argument("runs", nargs="+", help="run folders (or their results.jsonl files)")
    p.add_argument("--out", default=None, help="CSV path (default: <first run>/table.csv)")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    tables = build_tables(load_runs(args.runs))
    print(to_markdown(tables), end="")
    out = Path(args.out) if args.out else results_path(args.runs[0]).parent / "table.csv"
    write_csv(tables, out)
    print(f"CSV written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
