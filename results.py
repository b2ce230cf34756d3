"""Results: `<run>/results.jsonl` (one JSON line per evaluated dataset, written as each dataset
finishes) and the challenge table built from them (SPEC §5–6).

A rerun with identical settings (`SETTING_KEYS`) skips the datasets already in the file; a line
cut short by a kill is ignored (that dataset is redone) and the next line starts on a fresh line.

The table: per-dataset robust and clean top-1, their unweighted means, and Average =
(robust + clean) / 2, one row per run, labelled with the `label` its results carry (the paper's
spelling: CLIP, TeCoA, TGA-ZSR, ...) plus the run name when two runs share a label. Datasets come
in the order the caller gives (tga_zsr.py: the 16 test sets of SPEC §5, then the world sets);
a run without a dataset that another run has shows "–" there, and its means (over the datasets
it has) are marked with *. Results evaluated with different attack settings (`GROUP_KEYS`) go
into separate tables, each titled with its settings. Markdown on stdout, and a CSV.

Comparison tables (the paper's tables, paper_tables.py fills them): every cell "ours (paper, Δ)",
ours the mean over seeds (± their std), "pending" where nothing is evaluated yet; Markdown, CSV and
a LaTeX `tabular` (`comparison_markdown`, `comparison_csv`, `comparison_latex`).
No torch import: it runs instantly.

    from results import read_results, find_done, append_result
    python tga_zsr.py --table checkpoints/tecoa_run checkpoints/tga_zsr_run
"""
from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

RESULTS_NAME = "results.jsonl"

# The attack settings that make two results comparable: one table (and one trade-off plot) each.
GROUP_KEYS = ("attack", "norm", "eps", "steps", "step_size", "n_samples")
# Settings that must match for a stored result to count as done (the batch size is not one:
# PGD accuracies do not depend on it; see evaluate.py).
SETTING_KEYS = GROUP_KEYS + ("precision", "seed", "checkpoint")
MISSING = "–"


def results_path(run_or_file: str | Path) -> Path:
    p = Path(run_or_file)
    return p / RESULTS_NAME if p.is_dir() or p.suffix != ".jsonl" else p


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a .jsonl file (results, history); a line cut by a kill is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: that dataset is simply redone
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_results(run_or_file: str | Path) -> list[dict]:
    """All complete rows of a run's results.jsonl (a run folder or the file itself)."""
    return [r for r in read_jsonl(results_path(run_or_file)) if "dataset" in r]


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
        if r.get("dataset") == dataset and all(r.get(k) == settings.get(k) for k in SETTING_KEYS):
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


def format_table(rows: list[dict]) -> str:
    """A small per-dataset table of one run's results (the challenge table is `build_tables`)."""
    lines = ["| dataset | n | clean | robust |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['n']} | {r['clean_acc']:.2f} | {r['robust_acc']:.2f} |")
    if rows:
        mc = sum(r["clean_acc"] for r in rows) / len(rows)
        mr = sum(r["robust_acc"] for r in rows) / len(rows)
        lines.append(f"| **mean** | | {mc:.2f} | {mr:.2f} |")
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
            key = tuple(r.get(k) for k in GROUP_KEYS)
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


def write_csv(tables: list[dict], path: str | Path, order: list[str] = ()) -> None:
    datasets = dataset_order({d for t in tables for d in t["datasets"]}, order)
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


# --- tables beside reference numbers (the paper's) ------------------------------------------------
# A comparison table: {"title", "columns": [name], "rows": [{"label", "cells": {column: cell}}], "notes": [str]}
# with cell = {"values": [ours per seed, None where not evaluated yet], "paper": number or None}. Cells print
# as "ours (paper, Δ)", ours = the mean over the seeds (± their std when there are several); a cell with
# no value yet prints "pending". The caller (paper_tables.py) fills the cells; nothing here knows the paper.
PENDING = "pending"


def cell_stats(cell: dict) -> tuple[float | None, float | None, int, int]:
    """(mean over the seeds present, their sample std or None, seeds present, seeds declared)."""
    values = (cell or {}).get("values") or []
    have = [v for v in values if v is not None]
    if not have:
        return None, None, 0, len(values)
    mean = sum(have) / len(have)
    std = (sum((v - mean) ** 2 for v in have) / (len(have) - 1)) ** 0.5 if len(have) > 1 else None
    return mean, std, len(have), len(values)


def mean_cell(cells: list[dict], paper: float | None = None) -> dict:
    """The mean over columns of one row, seed by seed (a seed missing any column gives None); the
    paper's value is `paper` if given, else the mean of the cells' paper values when they all have one."""
    n_seeds = max((len(c.get("values") or []) for c in cells), default=0)
    values = []
    for s in range(n_seeds):
        vs = [(c.get("values") or [None] * n_seeds)[s] for c in cells]
        values.append(sum(vs) / len(vs) if vs and all(v is not None for v in vs) else None)
    if paper is None and cells and all(c.get("paper") is not None for c in cells):
        paper = sum(c["paper"] for c in cells) / len(cells)
    return {"values": values, "paper": paper}


def _signed(x: float, minus: str = "-") -> str:
    return f"+{x:.2f}" if x >= 0 else f"{minus}{abs(x):.2f}"


def format_cell(cell: dict | None, latex: bool = False) -> str:
    """'41.96 (42.09, -0.13)', '41.96 ± 0.12 (42.09, -0.13)' over seeds, '41.96* ...' when some seeds are
    missing, 'pending (42.09)' before any result, '41.96' when the paper has no such number."""
    if cell is None:
        return "–"
    mean, std, have, declared = cell_stats(cell)
    paper = cell.get("paper")
    pm, minus = (r" $\pm$ ", "$-$") if latex else (" ± ", "-")
    if mean is None:
        ours = PENDING
    else:
        ours = f"{mean:.2f}" + (f"{pm}{std:.2f}" if std is not None else "") + ("*" if have < declared else "")
    if paper is None:
        return ours
    if mean is None:
        return f"{ours} ({paper:.2f})"
    return f"{ours} ({paper:.2f}, {_signed(mean - paper, minus)})"


def comparison_markdown(table: dict) -> str:
    cols = table["columns"]
    lines = [f"### {table['title']}", "", "| " + " | ".join([table.get("corner", "Method")] + cols) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for row in table["rows"]:
        lines.append("| " + " | ".join([row["label"]] + [format_cell(row["cells"].get(c)) for c in cols]) + " |")
    notes = list(table.get("notes", []))
    if any(0 < cell_stats(c)[2] < cell_stats(c)[3] for row in table["rows"] for c in row["cells"].values()):
        notes.append("\\* mean over the seeds evaluated so far, not all of them.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text)).replace("ε", r"$\epsilon$").replace("±", r"$\pm$")


def comparison_latex(table: dict) -> str:
    """A `tabular` (no package needed) with the Markdown table's cells; the title goes into a comment."""
    cols = table["columns"]
    lines = [f"% {table['title']}", f"% cells: ours (paper, $\\Delta$ = ours - paper)",
             r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\hline",
             " & ".join([latex_escape(table.get("corner", "Method"))] + [latex_escape(c) for c in cols]) + r" \\",
             r"\hline"]
    for row in table["rows"]:
        lines.append(" & ".join([latex_escape(row["label"])]
                                + [format_cell(row["cells"].get(c), latex=True) for c in cols]) + r" \\")
    return "\n".join(lines + [r"\hline", r"\end{tabular}"]) + "\n"


def comparison_csv(table: dict, path: str | Path) -> None:
    """One row per table row: per column the mean over seeds, its std, the seeds counted, the paper, Δ."""
    fields = [table.get("corner", "Method")]
    for c in table["columns"]:
        fields += [c, f"{c} std", f"{c} seeds", f"{c} paper", f"{c} delta"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for row in table["rows"]:
            rec = [row["label"]]
            for c in table["columns"]:
                cell = row["cells"].get(c) or {}
                mean, std, have, _ = cell_stats(cell) if cell else (None, None, 0, 0)
                paper = cell.get("paper")
                rec += ["" if mean is None else f"{mean:.2f}", "" if std is None else f"{std:.2f}", have,
                        "" if paper is None else f"{paper:.2f}",
                        "" if mean is None or paper is None else f"{mean - paper:.2f}"]
            w.writerow(rec)
