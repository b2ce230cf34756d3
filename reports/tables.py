"""Tables of evaluated runs: the challenge table (per-dataset robust and clean top-1, their unweighted
means, and Average = (robust + clean) / 2, one row per run) and tables of ours beside reference
numbers (the paper's: every cell "ours (paper, Δ)").

The challenge table: one row per run, labelled with the `label` its results carry (the paper's
spelling: CLIP, TeCoA, TGA-ZSR, ...) plus the run name when two runs share a label. Datasets come
in the order the caller gives (report.py: the paper's 16 test sets, then the world sets); a run
without a dataset that another run has shows "–" there, and its means (over the datasets it has)
are marked with *. Results evaluated with different attack settings (`GROUP_KEYS`) go into
separate tables, each titled with its settings. Markdown on stdout, and a CSV. Cells of images
left out with `--skip_corrupt` are marked with † and a note, cells of a partial test set
(--allow_partial) with § and its counts, and a run whose training stopped before its schedule
(--max_steps) with ‡ after its label and the step it stopped at.

Beside reference numbers: ours is the mean over seeds (± their std), "pending" where nothing is
evaluated yet; Markdown, CSV and a LaTeX `tabular` because these numbers go into papers.
reports/paper_tables.py fills the cells; nothing here knows the paper. No torch import.

    python report.py table checkpoints/tecoa_run checkpoints/tga_zsr_run
"""
from __future__ import annotations

import csv
from pathlib import Path

from engine.results import GROUP_KEYS, MISSING, group_key, read_results, results_path, row_label

# A robust accuracy that rises by more than this many points when the attack runs in lower precision
# than fp32 is flagged: a weaker attack in fp16/bf16 is what gradient masking by precision looks like.
PRECISION_GAP_FLAG = 1.0
SKIPPED_MARK, PARTIAL_MARK, STOPPED_MARK = "†", "§", "‡"


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


AA_TITLES = {"aa-papers": "APGD-CE + APGD-DLR", "standard": "standard: APGD-CE, APGD-T, FAB-T, Square",
             "apgd-ce-t": "APGD-CE + APGD-T", "apgd-ce": "APGD-CE", "apgd-t": "APGD-T"}


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
    if k["restarts"] not in (None, 1):
        parts.append(f"{k['restarts']} restarts")
    if k["templates"] != "single":
        parts.append(f"template {k['templates']}")
    if k["protocol"]:
        parts.append(f"protocol {k['protocol']}")
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
                               "partial": {d: by_ds[d]["partial"] for d in have if by_ds[d].get("partial")},
                               "stopped": "; ".join(sorted({by_ds[d]["stopped"] for d in have
                                                           if by_ds[d].get("stopped")})),
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
            cells = [row["label"] + (f" {STOPPED_MARK}" if row["stopped"] else "")]
            for d in t["datasets"]:
                if d in row["cells"]:
                    dagger = (SKIPPED_MARK if d in row["skipped"] else "") + (PARTIAL_MARK if d in row["partial"] else "")
                    cells += [f"{row['cells'][d][0]:.2f}{dagger}", f"{row['cells'][d][1]:.2f}{dagger}"]
                else:
                    cells += [MISSING, MISSING]
            mark = ("" if row["complete"] else "*") + (PARTIAL_MARK if row["partial"] else "")
            flagged |= not row["complete"]
            cells += [f"{row['robust']:.2f}{mark}", f"{row['clean']:.2f}{mark}", f"{row['average']:.2f}{mark}"]
            lines.append("| " + " | ".join(cells) + " |")
            notes += [f"{SKIPPED_MARK} {row['label']}, {d}: {k} unreadable image(s) skipped (--skip_corrupt); accuracy "
                      f"over the {n} read." for d, (k, n) in row["skipped"].items()]
            notes += [f"{PARTIAL_MARK} {row['label']}, {d}: {p} (--allow_partial): accuracy over the images present, "
                      f"not the whole test set." for d, p in row["partial"].items()]
            if row["stopped"]:
                notes.append(f"{STOPPED_MARK} {row['label']}: training {row['stopped']} (--max_steps): not the "
                             f"full schedule, not comparable with finished runs.")
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
    fields += ["stopped", "partial"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        for t in tables:
            for row in t["rows"]:
                rec = dict(zip(GROUP_KEYS, t["key"]))
                rec.update(precision=t["precision"], method=row["method"], label=row["label"], run=row["run"],
                           mean_robust=f"{row['robust']:.2f}", mean_clean=f"{row['clean']:.2f}",
                           average=f"{row['average']:.2f}", n_datasets=row["n_datasets"], complete=row["complete"],
                           skipped_images=sum(k for k, _ in row["skipped"].values()), stopped=row["stopped"],
                           partial="; ".join(f"{d} {p}" for d, p in row["partial"].items()))
                for d, (rob, cl) in row["cells"].items():
                    rec[f"{d}_robust"], rec[f"{d}_clean"] = f"{rob:.2f}", f"{cl:.2f}"
                if row.get("precision_gap"):
                    rec["precision_gap"] = f"{row['precision_gap']['points']:.2f}"
                    rec["possible_masking"] = row["precision_gap"]["masking"]
                w.writerow(rec)


def print_table(runs: list[str], out: str | None = None, order: list[str] = (), label_of=None) -> int:
    """`python report.py table RUN ... [--out CSV]`: print the tables, write the CSV."""
    tables = build_tables(load_runs(runs), order, label_of)
    print(to_markdown(tables), end="")
    path = Path(out) if out else results_path(runs[0]).parent / "table.csv"
    write_csv(tables, path, order)
    print(f"CSV written to {path}")
    return 0


# --- ours beside reference numbers -----------------------------------------------------------------
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


MARKS = {"stopped": STOPPED_MARK, "partial": PARTIAL_MARK}  # a comparison cell's marks: what its numbers are not
LATEX_MARKS = {"stopped": r"$^{\ddagger}$", "partial": r"$^{\S}$"}


def mean_cell(cells: list[dict], paper: float | None = None) -> dict:
    """The mean over columns of one row, seed by seed (a seed missing any column gives None); the
    paper's value is `paper` if given, else the mean of the cells' paper values when they all have one.
    The members' marks (MARKS) carry over to the mean."""
    n_seeds = max((len(c.get("values") or []) for c in cells), default=0)
    values = []
    for s in range(n_seeds):
        vs = [(c.get("values") or [None] * n_seeds)[s] for c in cells]
        values.append(sum(vs) / len(vs) if vs and all(v is not None for v in vs) else None)
    if paper is None and cells and all(c.get("paper") is not None for c in cells):
        paper = sum(c["paper"] for c in cells) / len(cells)
    marks = {k: sorted({m for c in cells for m in (c or {}).get(k, [])}) for k in MARKS}
    return {"values": values, "paper": paper, **{k: v for k, v in marks.items() if v}}


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
        ours += "".join((LATEX_MARKS if latex else MARKS)[k] for k in MARKS if cell.get(k))
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
    notes += [f"{MARKS[kind]} {text}" for kind, text in mark_notes(table)]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def row_marks(row: dict) -> dict:
    """{kind: [notes]} over a comparison row's cells."""
    return {k: sorted({m for c in row["cells"].values() for m in (c or {}).get(k, [])}) for k in MARKS}


def mark_notes(table: dict) -> list[tuple[str, str]]:
    """(kind, text) per row and kind of mark (MARKS): what that row's marked numbers are not."""
    out = []
    for row in table["rows"]:
        marks = row_marks(row)
        if marks["stopped"]:
            out.append(("stopped", f"{row['label']}: training {', '.join(marks['stopped'])} (--max_steps): not the "
                                   f"full schedule, not comparable with finished runs."))
        if marks["partial"]:
            out.append(("partial", f"{row['label']}: {', '.join(marks['partial'])} (--allow_partial): over the "
                                   f"images present, not the whole test set."))
    return out


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text)).replace("ε", r"$\epsilon$").replace("±", r"$\pm$")


def comparison_latex(table: dict) -> str:
    """A `tabular` (no package needed) with the Markdown table's cells; the title goes into a comment."""
    cols = table["columns"]
    lines = [f"% {table['title']}", "% cells: ours (paper, $\\Delta$ = ours - paper)",
             r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\hline",
             " & ".join([latex_escape(table.get("corner", "Method"))] + [latex_escape(c) for c in cols]) + r" \\",
             r"\hline"]
    for row in table["rows"]:
        lines.append(" & ".join([latex_escape(row["label"])]
                                + [format_cell(row["cells"].get(c), latex=True) for c in cols]) + r" \\")
    lines.append(r"\hline")
    for kind, text in mark_notes(table):  # under the table: a mark without its meaning misleads
        note = rf"\footnotesize {LATEX_MARKS[kind]} {latex_escape(text)}"
        lines.append(rf"\multicolumn{{{len(cols) + 1}}}{{l}}{{{note}}} \\")
    return "\n".join(lines + [r"\end{tabular}"]) + "\n"


def comparison_csv(table: dict, path: str | Path) -> None:
    """One row per table row: per column the mean over seeds, its std, the seeds counted, the paper, Δ."""
    fields = [table.get("corner", "Method")]
    for c in table["columns"]:
        fields += [c, f"{c} std", f"{c} seeds", f"{c} paper", f"{c} delta"]
    fields.append("notes")
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
            w.writerow(rec + ["; ".join(m for ms in row_marks(row).values() for m in ms)])
