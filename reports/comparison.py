"""Tables of ours beside reference numbers (the paper's): every cell "ours (paper, Δ)".

Ours is the mean over seeds (± their std), "pending" where nothing is evaluated yet; Markdown, CSV
and a LaTeX `tabular` because these numbers go into papers. paper_tables.py fills the cells; nothing
here knows the paper. No torch import.

    from reports.comparison import comparison_markdown, comparison_csv, comparison_latex, format_cell
"""
from __future__ import annotations

import csv
from pathlib import Path

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
    lines = [f"% {table['title']}", "% cells: ours (paper, $\\Delta$ = ours - paper)",
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
