"""paper.py, paper_runs.py, paper_tables.py: the paper's tables beside its numbers.

* the table builder: "ours (paper, Δ)" cells, seeds (± std, * when some are missing), pending cells,
  the 16-dataset and strict 15-dataset means, Markdown / CSV / LaTeX; every declaration's paper
  names exist in configs/paper/paper_tables.csv;
* the plan: runs shared by several tables are counted (and run) once; with no data it says what is
  missing and how to get it;
* the shortened mini T7, T18, T14 and T6 end to end in one process (1 seed, 1 step, 4 images), and
  a second call that computes nothing;
* submitit's local executor running two tiny training runs (and an evaluation-only row), and the
  one-run-per-GPU pool; Table 8's cost measurement.

    python -m pytest tests/test_paper.py -q
"""
from __future__ import annotations

import csv
import json
import statistics
import threading
import time
from pathlib import Path

import pytest
import torch

import paper
from reports import paper_tables as PT
from reports.paper_runs import training_state
from reports.tables import comparison_csv, comparison_latex, comparison_markdown, format_cell

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints" / "tiny-world-clip.pt"
NUMBERS = PT.load_paper_numbers()


# ----------------------------------------------------------------------------- cells and tables
def test_a_cell_is_ours_beside_the_paper_with_the_difference():
    assert format_cell({"values": [41.96], "paper": 42.09}) == "41.96 (42.09, -0.13)"
    # two seeds: their mean ± the sample std, here |44 - 46| / √2 = √2
    assert format_cell({"values": [44.0, 46.0], "paper": 42.09}) == "45.00 ± 1.41 (42.09, +2.91)"
    assert format_cell({"values": [44.0, None], "paper": 42.09}) == "44.00* (42.09, +1.91)"  # a seed missing
    assert format_cell({"values": [None, None], "paper": 42.09}) == "pending (42.09)"
    assert format_cell({"values": [], "paper": None}) == "pending"
    assert format_cell({"values": [3.0]}) == "3.00"                                       # no paper number
    assert format_cell({"values": [1.0, 3.0], "paper": 2.5}, latex=True) == r"2.00 $\pm$ 1.41 (2.50, $-$0.50)"


def test_markdown_csv_and_latex_of_one_table(tmp_path):
    table = {"title": "Toy (robust)", "columns": ["cifar10", "Mean"], "rows": [
        {"label": "A_1", "cells": {"cifar10": {"values": [10.0], "paper": 12.0}, "Mean": {"values": [None]}}}]}
    md = comparison_markdown(table)
    assert "| A_1 | 10.00 (12.00, -2.00) | pending |" in md
    tex = comparison_latex(table)
    assert r"\begin{tabular}{lcc}" in tex and r"A\_1 & 10.00 (12.00, $-$2.00) & pending \\" in tex
    comparison_csv(table, tmp_path / "t.csv")
    rec = list(csv.DictReader(open(tmp_path / "t.csv")))[0]
    assert (rec["cifar10"], rec["cifar10 paper"], rec["cifar10 delta"], rec["Mean"]) == ("10.00", "12.00", "-2.00", "")


def _t1_ours(shift: float) -> dict:
    """T1 hand-made: every method at the paper's value + `shift` on all 16 sets; TGA-ZSR with three
    seeds (+shift - 1, +shift, +shift + 1) whose third misses PCAM; FARE with nothing yet."""
    decl = PT.load_declaration("T1")
    ours = {}
    for row in decl["rows"]:
        per_seed = []
        for k in range(3 if row["label"] == "TGA-ZSR" else 1):
            d = {}
            for ds in PT.SIXTEEN:
                p = NUMBERS[(PT.NEURIPS, "T1(robust)+T2(clean)", row["paper"], ds)]
                off = shift + (k - 1 if row["label"] == "TGA-ZSR" else 0)
                d[ds] = (p["robust"] + off, p["clean"] + off)
            if row["label"] == "TGA-ZSR" and k == 2:
                del d["PCAM"]
            per_seed.append({} if row["label"] == "FARE" else d)
        ours[row["label"]] = {"pgd": per_seed}
    return decl, ours


def test_per_dataset_table_puts_the_paper_beside_ours_with_both_means():
    decl, ours = _t1_ours(1.0)
    tables, headline = PT.build_view(decl, decl["views"][0], ours, {"pgd": list(PT.SIXTEEN)}, NUMBERS, False,
                                     {"pgd": "PGD-100"})
    robust = tables[0]
    assert robust["title"] == "Table 1 (robust) — PGD-100"
    assert robust["columns"][:3] == ["Tiny-ImageNet", "CIFAR10", "CIFAR100"]  # the paper's order and names
    assert robust["columns"][-2:] == ["Mean (16)", "Mean (15, zero-shot)"]
    md = comparison_markdown(robust)
    clip = next(r for r in robust["rows"] if r["label"] == "CLIP")
    assert format_cell(clip["cells"]["CIFAR10"]) == "3.42 (2.42, +1.00)"
    # the 16-mean is compared with the printed Average; the strict mean with the mean of the paper's 15
    paper16 = [NUMBERS[(PT.NEURIPS, "T1(robust)+T2(clean)", "CLIP", d)]["robust"] for d in PT.SIXTEEN]
    assert clip["cells"]["Mean (16)"]["paper"] == 4.9
    assert clip["cells"]["Mean (16)"]["values"][0] == pytest.approx(statistics.mean(paper16) + 1, abs=1e-9)
    assert clip["cells"]["Mean (15, zero-shot)"]["paper"] == pytest.approx(statistics.mean(paper16[1:]), abs=1e-9)
    tga = next(r for r in robust["rows"] if r["label"] == "TGA-ZSR")
    pcam = NUMBERS[(PT.NEURIPS, "T1(robust)+T2(clean)", "TGA-ZSR", "PCAM")]["robust"]
    # seeds 0 and 1 only (+0 and +1): mean +0.5, std 1/√2
    assert format_cell(tga["cells"]["PCAM"]) == f"{pcam + 0.5:.2f} ± 0.71* ({pcam:.2f}, +0.50)"
    assert tga["cells"]["Mean (16)"]["values"][2] is None          # that seed's mean waits for PCAM
    assert "| FARE | pending (" in md and "\\* mean over the seeds evaluated so far" in md
    assert headline["TGA-ZSR"]["paper_robust"] == 42.09 and len(headline["TGA-ZSR"]["robust"]) == 3


def test_mini_tables_show_ours_and_the_papers_mean_apart():
    decl, _ = PT.load_declaration("T7"), None
    ours = {r["label"]: {"pgd": [{"world_shape": (10.0 + i, 50.0), "world_colour": (20.0 + i, 60.0)} for i in (0, 2)]}
            for r in decl["rows"]}
    tables, headline = PT.build_view(decl, decl["views"][0], ours, {"pgd": ["world_shape", "world_colour"]},
                                     NUMBERS, True, {})
    t7 = tables[0]
    assert t7["columns"] == ["Robust", "Clean", "Average", "Paper robust (16)", "Paper clean (16)"]
    row = next(r for r in t7["rows"] if r["label"] == "L_CE only")
    assert format_cell(row["cells"]["Robust"]) == "16.00 ± 1.41"        # (15, 17): no Δ against another world
    assert format_cell(row["cells"]["Paper robust (16)"]) == "29.45"
    lines, records = PT.directions(decl, headline)
    change = next(r for r in records if r["to"] == "L_CE + L_AR + L_AMC" and r["metric"] == "robust")
    assert change["paper"] == pytest.approx(41.96 - 31.71) and change["ours"] == 0 and change["same"] == "no change"


def test_every_declared_paper_name_is_in_the_csv():
    """A typo in a YAML would silently leave a column without the paper's numbers."""
    keys = {(p, t, m) for p, t, m, _ in NUMBERS}
    for tid in PT.table_ids():
        decl = PT.load_declaration(tid)
        for view in decl.get("views", []):
            if not view.get("paper_table"):
                continue
            rows = [r for r in decl["rows"] if r["label"] in view.get("rows", [r["label"] for r in decl["rows"]])]
            for row in rows:
                assert (view.get("paper", PT.NEURIPS), view["paper_table"], row["paper"]) in keys, (tid, row["label"])


def test_a_bad_declaration_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(PT, "PAPER_DIR", tmp_path)
    (tmp_path / "T99.yaml").write_text("rows: [{label: a, method: clip}]\nviews: [{layout: sideways}]\n")
    with pytest.raises(SystemExit, match=r"T99.yaml: layout 'sideways'"):
        PT.load_declaration("T99")
    with pytest.raises(SystemExit, match="unknown table 'T42'"):
        PT.load_declaration("T42")


# ----------------------------------------------------------------------------- the plan
def test_shared_runs_are_planned_once_and_missing_data_is_named(tmp_path, capsys):
    ids = ["T1", "T7", "T14", "T18", "T20"]
    plan = paper.build_plan(ids, mini=False, extra=["--root", str(tmp_path)], out=tmp_path / "out")
    # T1: 6 methods + TGA-ZSR × 3 seeds; T7 adds L_CE and + L_AR; T14 five pairs; T18 cos, l1; T20 two rates
    assert len(plan.runs) == 9 + 2 + 5 + 2 + 2
    tga = [r for r in plan.runs.values() if r.method == "tga_zsr" and r.settings.values['seed'] == 0 and r.settings.values['Alpha'] == 0.08
           and r.settings.values['Beta'] == 0.05 and r.settings.values['Distance_metric'] == "l2" and r.settings.values['learning_rate'] == 1e-4]
    assert len(tga) == 1 and tga[0].tables == ids                     # one run serves all five tables
    assert all(len(r.evals) == 1 and len(next(iter(r.evals.values())).datasets) == 16 for r in plan.runs.values())
    assert paper.main(["T7", "T9", "--plan", "--out", str(tmp_path / "out"), "--", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # T7: CLIP + 3 trainings; T9: CLIP again (the same run) + 4 trainings on ImageNet100
    assert "Training runs: 8 needed, each counted once: 0 done, 0 partial, 7 to do; 1 evaluated" in out
    assert "Evaluations (run x attack setting x dataset): 128 needed: 0 done, 128 to do" in out  # 8 runs × 16
    assert "tinyImageNet (train): tinyImageNet: folder not found — how to fix: run: python -m datasets.prepare" in out
    assert "ImageNet100 (train): ImageNet100: folder not found" in out and "GPU-h" in out


def test_list_and_dry_run(capsys, tmp_path):
    assert paper.main(["--list"]) == 0
    out = capsys.readouterr().out
    for tid in PT.table_ids():
        assert f"\n{tid}: " in out or out.startswith(f"{tid}: ")
    assert "T9: " in out and "mini form: none — needs ImageNet" in out and "mini form: none — ImageNet-A/O/R" in out
    assert paper.main(["T4", "--dry_run", "--out", str(tmp_path), "--", "--root", str(tmp_path)]) == 0
    cmds = capsys.readouterr().out.splitlines()
    assert sum("--no_eval" in c for c in cmds) == 2 and sum("--eval_only" in c for c in cmds) == 3
    assert all("--attack cw" in c for c in cmds if "--eval_only" in c)


# ----------------------------------------------------------------------------- end to end, mini world
SHORT = ["--", "--max_steps", "1", "--batch_size", "8", "--n_samples", "4", "--testdata", "world_colour",
         "--test_numsteps", "1"]


@pytest.mark.skipif(not CKPT.is_file(), reason="checkpoints/tiny-world-clip.pt missing")
def test_short_mini_tables_run_once_and_print(tmp_path, capsys):
    """The shortened mini T7, T18, T14 and T6 (one seed, one step of 8, 4 images of one set, PGD-1):
    16 runs (15 trained, CLIP evaluated), every cell filled; a second call computes nothing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model runs faster on one thread (2 shared cores)
    try:
        argv = ["T7", "T18", "T14", "T6", "--mini", "--seeds", "0", "--out", str(tmp_path)] + SHORT
        assert paper.main(argv) == 0
        first = capsys.readouterr().out
        assert first.count("[paper] python tga_zsr.py") == 15 + 16 + 2 * 7   # trainings, then 16 + 14 evaluations
        assert paper.main(argv) == 0
        again = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
    assert "[paper] python tga_zsr.py" not in again and "run(s) to finish" not in again
    runs = [p for p in tmp_path.iterdir() if (p / "results.jsonl").is_file()]
    assert len(runs) == 16
    shared = [p for p in runs if p.name.startswith("tga_zsr_") and "_a0.08_b0.05_l2_" in p.name and "lr0.01_" in p.name]
    assert len(shared) == 1
    rows = [json.loads(x) for x in (shared[0] / "results.jsonl").read_text().splitlines()]
    assert sorted(r["eps"] for r in rows) == [4, 8, 16]                  # T6's three ε, each once
    for tid in ("T7", "T18", "T14", "T6"):
        md = (tmp_path / "tables" / f"{tid}_mini.md").read_text()
        assert "pending" not in md and "| change | metric | paper | ours |" in md
        assert (tmp_path / "tables" / f"{tid}_mini_1.tex").read_text().startswith("% ")
    t7 = (tmp_path / "tables" / "T7_mini.md").read_text()
    assert "| L_CE + L_AR + L_AMC |" in t7 and "41.96" in t7              # the paper's mean beside ours


# ----------------------------------------------------------------------------- launchers
def test_submitit_local_executor_runs_two_tiny_runs(tmp_path):
    """T4 in a tiny synthetic setting: its CLIP row is evaluated here (`--only`, what every job runs),
    then PMG-AFT and TGA-ZSR train as two jobs of submitit's local executor, each a process of its own."""
    pytest.importorskip("submitit")
    synthetic = ["--", "-c", str(ROOT / "configs" / "synthetic.yaml"), "--max_steps", "1", "--test_numsteps", "1",
                 "--testdata", "synthetic_colors", "--n_samples", "8"]
    common = ["T4", "--mini", "--seeds", "0", "--out", str(tmp_path), "--device", "cpu"]
    plan = paper.build_plan(["T4"], mini=True, seeds=[0], extra=synthetic[1:], out=tmp_path)
    clip = next(k for k, r in plan.runs.items() if not r.trains)
    assert paper.main(common + ["--only", clip] + synthetic) == 0
    assert paper.main(common + ["--submitit", "local", "--time_min", "10"] + synthetic) == 0
    trained = [r for r in plan.runs.values() if r.trains]
    assert len(trained) == 2 and all(training_state(r, tmp_path)[0] == "done" for r in trained)
    assert len(list((tmp_path / "submitit").glob("*_result.pkl"))) == 2   # one job per training run
    md = (tmp_path / "tables" / "T4_mini.md").read_text()
    assert "pending" not in md and "| TGA-ZSR |" in md


def test_one_run_per_gpu(tmp_path, monkeypatch):
    """--gpus: each run once, on one of the GPUs, with CUDA_VISIBLE_DEVICES set for its process."""
    seen, lock = [], threading.Lock()

    class Done:
        returncode = 0

    def fake_run(cmd, env=None, **kw):
        time.sleep(0.05)
        with lock:
            seen.append((cmd[cmd.index("--only") + 1], env["CUDA_VISIBLE_DEVICES"], cmd[cmd.index("--device") + 1]))
        return Done()

    monkeypatch.setattr(paper.subprocess, "run", fake_run)
    opts = paper.get_args_parser().parse_args(["T18", "--gpus", "0,1"])
    opts.extra, opts.out_resolved = [], tmp_path
    keys = [f"run{i}" for i in range(6)]
    assert paper.in_parallel(keys, opts) == []
    assert sorted(k for k, _, _ in seen) == keys and {g for _, g, _ in seen} == {"0", "1"}
    assert {d for _, _, d in seen} == {"cuda:0"}                      # each process sees one GPU as cuda:0


def test_jobs_share_the_cpu(tmp_path, monkeypatch):
    """--jobs 2 on the CPU: each run once, two at a time, each process with half of the cores as threads."""
    seen, running, peak, lock = [], [0], [0], threading.Lock()

    class Done:
        returncode = 0

    def fake_run(cmd, env=None, **kw):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.1)
        with lock:
            running[0] -= 1
            seen.append((cmd[cmd.index("--only") + 1], env["OMP_NUM_THREADS"], cmd[cmd.index("--device") + 1]))
        return Done()

    monkeypatch.setattr(paper.subprocess, "run", fake_run)
    monkeypatch.setattr(paper, "usable_cpus", lambda: 4)
    opts = paper.get_args_parser().parse_args(["T6", "--mini", "--jobs", "2"])
    opts.extra, opts.out_resolved = [], tmp_path
    keys = [f"run{i}" for i in range(5)]
    assert paper.in_parallel(keys, opts) == []
    assert sorted(k for k, _, _ in seen) == keys and peak[0] == 2
    assert {(t, d) for _, t, d in seen} == {("2", "cpu")}


def test_cost_measurement_and_table_8(tmp_path):
    """bench.py --cost measures a training batch and a test batch; T8 prints it beside the paper's."""
    import bench
    path = tmp_path / "cost.jsonl"
    argv = ["--cost", "--json", str(path), "--cost_batches", "1", "--cost_warmup", "0", "-c",
            str(ROOT / "configs" / "synthetic.yaml"), "--Method", "TGA-ZSR", "--device", "cpu", "--test_numsteps", "1"]
    assert bench.main(argv) == 0
    rec = json.loads(path.read_text().splitlines()[-1])
    assert rec["train_s_per_batch"] > 0 and rec["test_s_per_batch"] > 0 and rec["train_peak_mem_gb"] > 0
    assert rec["train_s_per_epoch"] == pytest.approx(rec["train_s_per_batch"] * rec["steps_per_epoch"])
    decl = PT.load_declaration("T8")
    ours = {"TGA-ZSR": {"cost": [rec]}, "CLIP": {"cost": [{"test_s_per_batch": 1.0, "device_name": "cpu"}]}}
    table = PT.build_view(decl, decl["views"][0], ours, {}, NUMBERS, True, {})[0][0]
    tga = next(r for r in table["rows"] if r["label"] == "TGA-ZSR")
    assert format_cell(tga["cells"]["Train s / epoch"]).endswith(f"(885.00, {rec['train_s_per_epoch'] - 885:+.2f})")
    clip = next(r for r in table["rows"] if r["label"] == "CLIP")
    assert format_cell(clip["cells"]["Train s / batch"]) == "–" and format_cell(clip["cells"]["Test s / batch"]) == "1.00"
    assert format_cell(next(r for r in table["rows"] if r["label"] == "FARE")["cells"]["Test s / batch"]) == "pending"


def test_a_runs_identity_ignores_defaults_and_evaluation_flags():
    """A flag spelled out at its parser default (as a flag added to the project later would be) and an
    evaluation-only flag leave the run's key, hence its folder, as it was; a training flag changes it."""
    from reports import paper_runs
    base = ["-c", "configs/mini.yaml", "--Method", "tga_zsr", "--seed", "0"]
    key = paper_runs.make_run(base, "test", "world_train").key
    values = dict(paper_runs.make_run(base, "test", "world_train").settings.values)
    now = paper_runs.identity(values)
    del values["skip_corrupt"]              # a run of the project as it was before --skip_corrupt existed
    assert paper_runs.identity(values) == now
    assert paper_runs.make_run(base + ["--attack_precision", "fp32", "--test_eps", "8"], "test", "world_train").key == key
    assert paper_runs.make_run(base + ["--Alpha", "0.07"], "test", "world_train").key != key
    assert paper_runs.make_run(base + ["--seed", "1"], "test", "world_train").key != key
