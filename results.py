"""`<run>/results.jsonl`: one JSON line per evaluated dataset, written as each dataset finishes.

Kept free of torch so that the table builder starts instantly. A rerun with identical settings
(`SETTING_KEYS`) skips the datasets already in the file; a line cut short by a kill is ignored
(that dataset is redone) and the next line starts on a fresh line.

    from results import read_results, find_done, append_result
    python make_table.py checkpoints/run_a checkpoints/run_b
"""
from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS_NAME = "results.jsonl"

# Settings that must match for a stored result to count as done (the batch size is not one:
# PGD accuracies do not depend on it; see evaluate.py).
SETTING_KEYS = ("attack", "norm", "eps", "steps", "step_size", "precision", "n_samples", "seed", "checkpoint")


def results_path(run_or_file: str | Path) -> Path:
    p = Path(run_or_file)
    return p / RESULTS_NAME if p.is_dir() or p.suffix != ".jsonl" else p


def read_results(run_or_file: str | Path) -> list[dict]:
    """All complete rows of a run's results.jsonl (a run folder or the file itself)."""
    path = results_path(run_or_file)
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
        if isinstance(row, dict) and "dataset" in row:
            rows.append(row)
    return rows


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
