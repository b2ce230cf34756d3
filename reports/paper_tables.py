"""The paper's tables: their declarations (`configs/paper/<id>.yaml`), the paper's own numbers
(`configs/paper/paper_tables.csv`, read from the paper's tables) and the layouts that put ours beside them.

A declaration names its rows (a method and its flags, e.g. T7's Alpha/Beta pairs), its evaluation
settings and its views (layouts): `per_dataset` (one table per metric, the paper's dataset order,
the 16-dataset mean and the strict zero-shot mean over the 15 datasets other than TinyImageNet),
`eps_mean` (T6: per-dataset mean over several ε, plus one table per ε), `means` (T7, Comp-TGA:
means only) and `cost` (T8). Every cell is "ours (paper, Δ)" (results.py formats them), ours the
mean over seeds ± their std. In the mini world the datasets are not the paper's: cells show ours,
and the paper's 16-dataset mean sits in a column of its own; `directions` compares row differences.

This module reads files and builds tables; it runs nothing and imports no torch (paper.py runs).

    python paper.py --list
    python paper.py T7 --table
"""
from __future__ import annotations

import csv
from pathlib import Path

import yaml

from reports.tables import cell_stats, comparison_csv, comparison_latex, comparison_markdown, mean_cell
from reports.plots import draw_trade_off, save_figure

PAPER_DIR = Path(__file__).resolve().parents[1] / "configs" / "paper"
CSV_PATH = PAPER_DIR / "paper_tables.csv"
NEURIPS = "tga_zsr_neurips"
# The paper's dataset names (paper_tables.csv) -> ours, in the paper's column order.
PAPER_DATASETS = {
    "Tiny-ImageNet": "tinyImageNet", "CIFAR10": "cifar10", "CIFAR100": "cifar100", "STL10": "STL10",
    "SUN397": "SUN397", "Food101": "Food101", "OxfordPets": "oxfordpet", "Flowers102": "flowers102", "DTD": "dtd",
    "EuroSAT": "EuroSAT", "FGVC-Aircraft": "fgvc_aircraft", "ImageNet": "ImageNet", "Caltech101": "Caltech101",
    "Caltech256": "Caltech256", "StanfordCars": "StanfordCars", "PCAM": "PCAM",
    "ImageNet-A": "ImageNet-A", "ImageNet-O": "ImageNet-O", "ImageNet-R": "ImageNet-R",
    "Tiny-ImageNet(20% val split)": "tinyImageNet_split",
}
DISPLAY = {ours: paper for paper, ours in PAPER_DATASETS.items()}
PAPER_ORDER = list(PAPER_DATASETS.values())
SIXTEEN = PAPER_ORDER[:16]
NOT_ZERO_SHOT = "tinyImageNet"   # the training set's own test split: out of the strict zero-shot mean
LAYOUTS = ("per_dataset", "eps_mean", "means", "cost")
COST_COLUMNS = {"train_peak_mem_gb": "Train peak memory (GB)", "train_s_per_batch": "Train s / batch",
                "train_s_per_epoch": "Train s / epoch", "test_s_per_batch": "Test s / batch"}


class DeclarationError(SystemExit):
    """A configs/paper file that cannot be used: says which file and what is wrong."""


# --- the paper's numbers -------------------------------------------------------------------------------
def load_paper_numbers(path: str | Path = CSV_PATH) -> dict:
    """{(paper, table, method, dataset): {"robust": float | None, "clean": float | None}}; datasets under
    our names (the means under the CSV's own: 'Average', 'Average(3)')."""
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            ds = PAPER_DATASETS.get(r["dataset"], r["dataset"])
            out[(r["paper"], r["table"], r["method"], ds)] = {
                k: (float(r[k]) if r.get(k, "").strip() else None) for k in ("robust", "clean")}
    return out


def paper_value(numbers: dict, view: dict, paper_name: str | None, dataset: str, metric: str,
                table: str | None = None) -> float | None:
    if not paper_name:
        return None
    hit = numbers.get((view.get("paper", NEURIPS), table or view.get("paper_table"), paper_name, dataset))
    return None if hit is None else hit.get(metric)


# --- declarations --------------------------------------------------------------------------------------
def table_ids() -> list[str]:
    """Every declared table, in the paper's order (T1, T3, ..., T20, then CT: the Comp-TGA rows)."""
    ids = [p.stem for p in PAPER_DIR.glob("*.yaml") if p.stem != "protocols"]
    return sorted(ids, key=lambda t: (not t[1:].isdigit(), int(t[1:]) if t[1:].isdigit() else 0, t))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DeclarationError(f"{path}: cannot be read ({type(e).__name__}: {e})")
    if not isinstance(data, dict):
        raise DeclarationError(f"{path}: must be a mapping")
    return data


def load_protocols() -> dict:
    return _read_yaml(PAPER_DIR / "protocols.yaml")


def load_declaration(table_id: str) -> dict:
    """The declaration of one table, checked: rows with unique labels and a method, known layouts,
    views and directions that name declared rows and evaluations."""
    ids = table_ids()
    match = [t for t in ids if t.lower() == str(table_id).lower()]
    if not match:
        raise DeclarationError(f"unknown table '{table_id}'. Tables: {', '.join(ids)} (python paper.py --list)")
    path = PAPER_DIR / f"{match[0]}.yaml"
    decl = _read_yaml(path)
    labels = [r.get("label") for r in decl.get("rows", [])]
    if not labels or any(not r.get("method") for r in decl["rows"]) or len(set(labels)) != len(labels):
        raise DeclarationError(f"{path}: every row needs a unique `label` and a `method`")
    decl.setdefault("evals", {}).setdefault("pgd", {"flags": {}})
    for view in decl.get("views", []):
        view.setdefault("layout", "per_dataset")
        if view["layout"] not in LAYOUTS:
            raise DeclarationError(f"{path}: layout '{view['layout']}' is not one of {LAYOUTS}")
        for name in view.get("evals", [view.get("eval", "pgd")]):
            if name not in decl["evals"]:
                raise DeclarationError(f"{path}: a view uses evaluation '{name}', not declared under `evals`")
        for label in view.get("rows", []):
            if label not in labels:
                raise DeclarationError(f"{path}: a view names row '{label}', not declared under `rows`")
    for pair in decl.get("direction", []):
        if len(pair) != 2 or any(p not in labels for p in pair):
            raise DeclarationError(f"{path}: `direction` entries are pairs of row labels, got {pair}")
    decl["id"], decl["path"] = match[0], str(path)
    return decl


def view_evals(view: dict) -> list[str]:
    return list(view.get("evals", [view.get("eval", "pgd")]))


def has_mini(decl: dict) -> bool:
    return decl.get("mini", True) is True


# --- building the tables ---------------------------------------------------------------------------------
# `ours[label][eval_name]` is a list over the row's seeds of {dataset: (robust, clean)} (empty: not run yet);
# `ours[label]["cost"]` a list of bench.py --cost measurements (dicts).
def _values(ours: dict, label: str, ev: str, dataset: str, k: int) -> list:
    return [(s.get(dataset) or (None, None))[k] for s in ours.get(label, {}).get(ev, [])]


def _marks(ours: dict, label: str, evs: list, dataset: str) -> dict:
    """What the numbers of a cell are not, over its seeds and evaluations: {"stopped": [...], "partial": [...]}
    (the third item of a results_of entry), for the cell's mark and the table's notes."""
    marks: dict = {}
    for ev in evs:
        for s in ours.get(label, {}).get(ev, []):
            entry = s.get(dataset) or ()
            for kind, notes in (entry[2] if len(entry) > 2 else {}).items():
                marks[kind] = sorted(set(marks.get(kind, [])) | set(notes))
    return marks


def _rows(decl: dict, view: dict) -> list[dict]:
    keep = view.get("rows")
    return [r for r in decl["rows"] if keep is None or r["label"] in keep]


def _means_spec(view: dict, datasets: list[str], mini: bool) -> list[dict]:
    if "means" in view:
        return [{"over": m.get("over", "all"), **m} for m in view["means"]]
    if not mini and set(SIXTEEN) <= set(datasets):
        return [{"name": "Mean (16)", "over": "all", "paper": "Average"},
                {"name": "Mean (15, zero-shot)", "over": "zero_shot"}]
    return [{"name": f"Mean ({len(datasets)})", "over": "all"}]


def _over(spec: dict, datasets: list[str]) -> list[str]:
    return [d for d in datasets if spec["over"] == "all" or d != NOT_ZERO_SHOT]


def per_dataset_tables(decl, view, ours, datasets, numbers, mini, evals=None, title_of=None) -> tuple[list, dict]:
    """One table per metric of `view["metrics"]` (robust -> "Table 1 (robust)", ...). `evals` > 1 names
    average per dataset and seed over those evaluations (T6). Returns (tables, headline means per row)."""
    evals = evals or view_evals(view)
    order = [d for d in PAPER_ORDER if d in datasets] + [d for d in datasets if d not in PAPER_ORDER]
    means = _means_spec(view, order, mini)
    side = view.get("side_by_side", False)
    metrics = list(view.get("metrics", {"robust": "robust", "clean": "clean"}).items())
    tables, headline = [], {}
    groups = [metrics] if side else [[m] for m in metrics]
    for group in groups:
        columns, rows = [], []
        for row in _rows(decl, view):
            cells = {}
            for metric, _ in group:
                k = 0 if metric == "robust" else 1
                for d in order:
                    per_eval = [_values(ours, row["label"], ev, d, k) for ev in evals]
                    n = max(len(v) for v in per_eval)
                    seeds = [[(v[i] if i < len(v) else None) for v in per_eval] for i in range(n)]
                    vals = [sum(s) / len(s) if all(x is not None for x in s) else None for s in seeds]
                    col = f"{DISPLAY.get(d, d)} {metric.capitalize()}" if side else DISPLAY.get(d, d)
                    cells[col] = {"values": vals,
                                  "paper": None if mini else paper_value(numbers, view, row.get("paper"), d, metric),
                                  **_marks(ours, row["label"], evals, d)}
                for spec in means:
                    col = spec["name"] + (f" {metric.capitalize()}" if side else "")
                    member = [cells[f"{DISPLAY.get(d, d)} {metric.capitalize()}" if side else DISPLAY.get(d, d)]
                              for d in _over(spec, order)]
                    paper = None if mini else paper_value(numbers, view, row.get("paper"), spec.get("paper", ""), metric)
                    cells[col] = mean_cell(member, paper)  # in the mini world the members and `paper` are None
                    if spec is means[0]:
                        headline.setdefault(row["label"], {})[metric] = cells[col]["values"]
                if mini and view.get("paper_table"):
                    col = "Paper mean (16)" + (f" {metric.capitalize()}" if side else "")
                    p = paper_value(numbers, view, row.get("paper"), "Average", metric)
                    cells[col] = {"values": [p]} if p is not None else None
                headline.setdefault(row["label"], {})[f"paper_{metric}"] = paper_value(
                    numbers, view, row.get("paper"), "Average", metric)
            rows.append({"label": row["label"], "cells": cells})
        for row_cells in rows:
            for col in row_cells["cells"]:
                if col not in columns:
                    columns.append(col)
        title = view.get("title") if side else group[0][1]
        tables.append({"title": title_of(title) if title_of else title, "columns": columns, "rows": rows})
    return tables, headline


def means_table(decl, view, ours, datasets, numbers, mini, title_of=None) -> tuple[list, dict]:
    """T7 / Comp-TGA: per row the mean robust, clean and Average over the datasets (the strict
    15-dataset means too on the 16), beside the paper's means."""
    ev = view_evals(view)[0]
    spec = _means_spec(view, datasets, mini)
    rows, headline = [], {}
    for row in _rows(decl, view):
        cells, name = {}, row.get("paper")
        for s in spec:
            suffix = "" if s["name"].startswith("Mean (16)") or mini or len(spec) == 1 else " (15)"
            member = {}
            for metric, k in (("robust", 0), ("clean", 1)):
                parts = [{"values": _values(ours, row["label"], ev, d, k),
                          "paper": paper_value(numbers, view, name, d, metric, view.get("paper_per_dataset")),
                          **_marks(ours, row["label"], [ev], d)}
                         for d in _over(s, datasets)]
                paper = None if mini else (paper_value(numbers, view, name, "Average", metric) if not suffix
                                           else mean_cell(parts)["paper"])
                member[metric] = mean_cell(parts, paper)
                if mini:
                    member[metric]["paper"] = None
                cells[f"{metric.capitalize()}{suffix}"] = member[metric]
            if not suffix:
                avg = [None if a is None or b is None else (a + b) / 2
                       for a, b in zip(member["robust"]["values"], member["clean"]["values"])]
                pr, pc = member["robust"]["paper"], member["clean"]["paper"]
                cells["Average"] = {**mean_cell([member["robust"], member["clean"]]), "values": avg,
                                    "paper": None if pr is None or pc is None else (pr + pc) / 2}
                headline[row["label"]] = {"robust": member["robust"]["values"], "clean": member["clean"]["values"],
                                          "paper_robust": paper_value(numbers, view, name, "Average", "robust"),
                                          "paper_clean": paper_value(numbers, view, name, "Average", "clean")}
        if mini:
            for metric in ("robust", "clean"):
                p = headline[row["label"]][f"paper_{metric}"]
                cells[f"Paper {metric} (16)"] = {"values": [p] if p is not None else []}
        rows.append({"label": row["label"], "cells": cells})
    columns = list(dict.fromkeys(c for r in rows for c in r["cells"]))
    title = view.get("title", decl["title"])
    return [{"title": title_of(title) if title_of else title, "columns": columns, "rows": rows}], headline


def cost_table(decl, view, ours, title_of=None) -> tuple[list, dict]:
    """T8: what bench.py --cost measured per row, beside the paper's figures where the paper gives them."""
    paper_values = view.get("paper_values", {})
    rows, devices = [], set()
    for row in _rows(decl, view):
        measured = (ours.get(row["label"], {}).get("cost") or [None])[0] or {}
        devices.update([measured["device_name"]] if measured.get("device_name") else [])
        cells = {name: {"values": [measured.get(key)] if measured.get(key) is not None else [None],
                        "paper": paper_values.get(row["label"], {}).get(key)} for key, name in COST_COLUMNS.items()}
        if measured and measured.get("train_s_per_batch") is None:  # CLIP trains nothing: "–", not pending
            for key in ("train_peak_mem_gb", "train_s_per_batch", "train_s_per_epoch"):
                cells[COST_COLUMNS[key]] = None
        rows.append({"label": row["label"], "cells": cells})
    notes = [f"Measured on: {', '.join(sorted(devices)) or 'nothing yet'}. Paper: {view.get('paper_source', '')}."]
    title = view.get("title", decl["title"])
    return [{"title": title_of(title) if title_of else title, "columns": list(COST_COLUMNS.values()),
             "rows": rows, "notes": notes}], {}


def build_view(decl, view, ours, datasets_of, numbers, mini, eval_titles) -> tuple[list, dict]:
    """The comparison tables of one view and its headline means. `datasets_of[eval]`: the evaluated
    sets of an evaluation; `eval_titles[eval]`: its attack, e.g. 'PGD-100, ε = 1/255'."""
    evs = view_evals(view)

    def title_of(ev):
        return lambda t: f"{t} — {eval_titles.get(ev, ev)}"

    if view["layout"] == "cost":
        return cost_table(decl, view, ours)
    if view["layout"] == "means":
        return means_table(decl, view, ours, datasets_of[evs[0]], numbers, mini, title_of(evs[0]))
    if view["layout"] == "per_dataset":
        return per_dataset_tables(decl, view, ours, datasets_of[evs[0]], numbers, mini, title_of=title_of(evs[0]))
    # eps_mean: the paper's mean over the ε (its per-dataset numbers), then each ε on its own
    tables, headline = per_dataset_tables(decl, view, ours, datasets_of[evs[0]], numbers, mini, evs,
                                          title_of=lambda t: f"{t} — the mean of the {len(evs)} settings below")
    for ev in evs:
        single = {**view, "metrics": {"robust": f"Robust at {eval_titles.get(ev, ev)}"}, "paper_table": None}
        tables += per_dataset_tables(decl, single, ours, datasets_of[ev], numbers, mini, [ev])[0]
    return tables, headline


def directions(decl: dict, headline: dict) -> tuple[list[str], list[dict]]:
    """For each declared pair (a, b): the paper's change of the mean (b − a), robust and clean, and ours
    (mean over seeds), with the noise of ours (√(std_a² + std_b²), when both have several seeds)."""
    lines = ["| change | metric | paper | ours | ours: noise | same direction |", "|---|---|---|---|---|---|"]
    records = []
    for a, b in decl.get("direction", []):
        for metric in ("robust", "clean"):
            if a not in headline or b not in headline or metric not in headline[a]:
                continue
            ma, sa, _, _ = cell_stats({"values": headline[a][metric]})
            mb, sb, _, _ = cell_stats({"values": headline[b][metric]})
            pa, pb = headline[a].get(f"paper_{metric}"), headline[b].get(f"paper_{metric}")
            paper = None if pa is None or pb is None else pb - pa
            ours = None if ma is None or mb is None else mb - ma
            noise = (sa ** 2 + sb ** 2) ** 0.5 if sa is not None and sb is not None else None
            if paper is None or ours is None:
                same = "–"
            elif ours == 0 or paper == 0:
                same = "no change" if ours == 0 else "paper: no change"
            else:
                same = "yes" if (paper > 0) == (ours > 0) else "no"
            if same in ("yes", "no") and noise is not None and abs(ours) < noise:
                same += " (within noise)"
            fmt = (lambda v: "–" if v is None else f"{v:+.2f}")
            lines.append(f"| {a} → {b} | {metric} | {fmt(paper)} | {fmt(ours)} | "
                         f"{'–' if noise is None else f'{noise:.2f}'} | {same} |")
            records.append({"from": a, "to": b, "metric": metric, "paper": paper, "ours": ours, "noise": noise,
                            "same": same})
    return (lines if records else []), records


def write_outputs(tables: list[dict], out_dir: Path, stem: str) -> list[Path]:
    """`<stem>.md` (all tables), and per table `<stem>_<k>.csv` and `.tex`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{stem}.md"
    md.write_text("\n".join(comparison_markdown(t) for t in tables), encoding="utf-8")
    paths = [md]
    for k, t in enumerate(tables):
        csv_path, tex_path = out_dir / f"{stem}_{k + 1}.csv", out_dir / f"{stem}_{k + 1}.tex"
        comparison_csv(t, csv_path)
        tex_path.write_text(comparison_latex(t), encoding="utf-8")
        paths += [csv_path, tex_path]
    return paths


def trade_off_figure(headline: dict, out_dir: Path, title: str, stem: str = "trade_off") -> list[Path]:
    """Fig. 3: mean clean vs mean robust accuracy, ours (filled) beside the paper's points (hollow)."""
    points, reference = [], []
    for label, h in headline.items():
        r, _, _, _ = cell_stats({"values": h.get("robust", [])})
        c, _, _, _ = cell_stats({"values": h.get("clean", [])})
        if r is not None and c is not None:
            points.append({"label": label, "robust": r, "clean": c})
            if h.get("paper_robust") is not None and h.get("paper_clean") is not None:
                reference.append({"label": label, "robust": h["paper_robust"], "clean": h["paper_clean"]})
    if not points:
        return []
    fig = draw_trade_off(points, title, reference=reference)
    return save_figure(fig, out_dir, stem, dpi=150)
