"""Results: `<run>/results.jsonl`, one JSON line per evaluated dataset and setting, written as each
dataset finishes; what a rerun reads to skip the work already done.

A rerun with identical settings (`SETTING_KEYS`) skips the datasets already in the file; a line
cut short by a kill is ignored (that dataset is redone) and the next line starts on a fresh line.
Every ignored line is reported with its number and the reason (not JSON, a field missing).
A row's `n` is the number of images its accuracies are over; `skipped` counts the unreadable
images left out with `--skip_corrupt`. Two marks say what a row is not: `stopped` ('stopped at step N of
M': the weights of a training that did not finish its schedule, e.g. --max_steps) and `partial`
('partial (30 / 27 000)': the test set held fewer images than its official release, --allow_partial);
the tables and model cards built from these rows (reports/) repeat them.
No torch import: reading results starts instantly.

    from engine.results import read_results, find_done, append_result
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

RESULTS_NAME = "results.jsonl"

# The attack settings that make two results comparable: one table (and one trade-off plot) each.
# `attack` is one attack or a comma list (robust = the worst case over them); `attack_precision` is
# the autocast the attacks ran under; `aa_version` AutoAttack's attacks (attacks.AA_VERSIONS);
# `protocol` the preset that set them (configs/protocols/); `transform` the images' preprocessing
# (`tga_zsr`: each dataset's transform of the original code; `robustvlm`: native resolution, see evaluate.py);
# `batch_stride` "KxB": only every K-th batch of B images (TeCoA's training-time validation); `restarts`
# the PGD / CW random restarts; `templates` the class prompts ("single" template or "ensemble").
GROUP_KEYS = ("attack", "norm", "eps", "steps", "step_size", "n_samples", "attack_precision", "aa_version",
              "protocol", "transform", "batch_stride", "restarts", "templates")
# Settings that must match for a stored result to count as done (the batch size is not one:
# PGD accuracies do not depend on it; see evaluate.py).
SETTING_KEYS = GROUP_KEYS + ("precision", "seed", "checkpoint")
# Rows written before a setting existed hold the value that reproduces them: an old results.jsonl
# still counts as done, and its rows sit in the same tables as new rows of the same settings.
SETTING_DEFAULTS = {
    "attack_precision": lambda r: r.get("precision"),
    "aa_version": lambda r: "aa-papers" if "autoattack" in str(r.get("attack")) else None,
    "protocol": lambda r: None, "transform": lambda r: "tga_zsr", "batch_stride": lambda r: None,
    "restarts": lambda r: None if r.get("attack") == "autoattack" else 1, "templates": lambda r: "single",
}
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
    lines += [f"{r['dataset']}: {r['partial']}: accuracies over the images present, not the whole set"
              for r in rows if r.get("partial")]
    lines += sorted({f"weights {r['stopped']}: not the full training" for r in rows if r.get("stopped")})
    return "\n".join(lines)
