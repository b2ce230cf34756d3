"""What to do with evaluated runs: the challenge table, the leaderboard of model cards, the export.

* `table RUN [RUN ...]`: per-dataset robust and clean accuracy of each run, their means and the
  Average, one table per attack setting (reports/tables.py); Markdown on stdout and a CSV.
* `leaderboard DIR [DIR ...]`: every `model_card.json` below these folders, ranked by robust
  accuracy, one ranking per evaluation setting (reports/model_card.py).
* `export RUN`: a run's model as a full CLIP that plain open_clip loads: one `.pt` file, or a hub
  folder with `--format hf_hub` (reports/export.py).

    python report.py table checkpoints/RUN_A checkpoints/RUN_B
    python report.py leaderboard checkpoints/
    python report.py export checkpoints/RUN --format hf_hub
"""
from __future__ import annotations

import argparse
import sys

from datasets.catalog import TABLE_ORDER
from engine.run_folder import setup_logging
from engine.settings import DefaultsShown
from methods import method_label
from reports.export import export_run
from reports.model_card import leaderboard_main
from reports.tables import print_table


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("report.py", description="tables, leaderboard and export of evaluated runs",
                                formatter_class=DefaultsShown, allow_abbrev=False)
    jobs = p.add_subparsers(dest="job", required=True, metavar="{table,leaderboard,export}")
    sub = {"formatter_class": DefaultsShown, "allow_abbrev": False}  # each job's parser is a parser of its own
    t = jobs.add_parser("table", help="the challenge table of runs (Markdown + CSV)", **sub)
    t.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or their results.jsonl files)")
    t.add_argument("--out", default=None, help="CSV path (default: <first run>/table.csv)")
    b = jobs.add_parser("leaderboard", help="rank the model cards (model_card.json) found in these folders", **sub)
    b.add_argument("folders", nargs="+", metavar="DIR", help="folders searched for model_card.json (or card files)")
    e = jobs.add_parser("export", help="write a run's model as a full open_clip CLIP", **sub)
    e.add_argument("run", metavar="RUN", help="run folder or checkpoint file")
    e.add_argument("--format", default="open_clip", choices=["open_clip", "hf_hub"],
                   help="one open_clip .pt file, or a hub folder (open_clip_config.json + safetensors)")
    e.add_argument("--out", default=None, help="where to write (default: <run>/export)")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.job == "table":
        return print_table(args.runs, args.out, TABLE_ORDER, method_label)  # labels for rows written before labels
    if args.job == "leaderboard":
        return leaderboard_main(args.folders)
    setup_logging(None)
    export_run(args.run, args.format, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
