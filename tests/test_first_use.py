"""What a new user meets in the first hour (issue 25), each item typed as the user types it: weights
folders by any path, `--submitit slurm` without SLURM and the sbatch options, a partial dataset, a run
stopped by --max_steps, abbreviated flags, `--root` at the dataset's own folder, `--help`, `bash main.sh
--help`, paper-ready figures, the cost of a table's plan, the leaderboard's settings.

Tiny random-weight models, the synthetic sets and fixture datasets in their real on-disk formats.

    python -m pytest -q tests/test_first_use.py
"""
import argparse
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import audit
import bench
import datasets
import doctor
import gpu_check
import paper
import pretrain_tiny
import report
import tga_zsr
import visualize
import wheelhouse
from datasets import prepare
from engine import settings
from engine.checkpoint import load_file
from reports import model_card, paper_runs, plots
from tests.dataset_fixtures import _img, write_eurosat
from tests.eval_fixtures import register_tiny_sets
from tests.test_weight_formats import HF_CONFIG, recorded_hf_state, write_hub_folder

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "configs" / "synthetic.yaml"
EVAL_TINY = ["--eval_only", "--device", "cpu", "--testdata", "test_tiny3", "--test_numsteps", "1", "--test_eps", "4",
             "--test_batch_size", "6", "--workers", "0"]
EUROSAT_CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake"]


def run_py(*argv, env=None):
    """A user's command line: `python SCRIPT ...` in the project folder."""
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def rows_of(run_dir):
    return [json.loads(x) for x in (Path(run_dir) / "results.jsonl").read_text().splitlines() if x.strip()]


# ----------------------------------------------------------------------------------------------- 1
def test_a_weights_folder_loads_by_any_path(tmp_path, monkeypatch, tiny_model):
    """An open_clip hub folder and a transformers CLIPModel folder, given absolute, relative, with ~ and
    through a symlink: each evaluates (the settings check refused every path with a separator)."""
    home = tmp_path / "home"
    models = home / "models"
    write_hub_folder(models / "tecoa4", tiny_model)
    (models / "hf_clip").mkdir()
    save_file(recorded_hf_state(HF_CONFIG), str(models / "hf_clip" / "model.safetensors"))
    (models / "hf_clip" / "config.json").write_text(json.dumps(HF_CONFIG))
    (home / "link").symlink_to(models / "tecoa4")
    (home / "empty").mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    register_tiny_sets()
    hub_forms = [str(models / "tecoa4"), "models/tecoa4", "~/models/tecoa4", str(home / "link"), "link"]
    for i, form in enumerate(hub_forms + [str(models / "hf_clip"), "~/models/hf_clip"]):
        assert tga_zsr.main(EVAL_TINY + ["--pretrained", form, "--output_dir", str(tmp_path / "runs"),
                                         "--name", f"r{i}"]) == 0, form
    hub_rows = [rows_of(tmp_path / "runs" / f"r{i}")[0] for i in range(len(hub_forms))]
    assert len({(r["clean_acc"], r["robust_acc"]) for r in hub_rows}) == 1  # the same weights, whatever the path
    assert rows_of(tmp_path / "runs" / "r6")[0]["pretrained"] == str(models / "hf_clip")  # ~ expanded
    with pytest.raises(SystemExit, match="a folder, but neither an open_clip hub folder"):
        tga_zsr.main(EVAL_TINY + ["--pretrained", str(home / "empty"), "--output_dir", str(tmp_path / "runs")])
    with pytest.raises(SystemExit, match="no such file or folder"):
        tga_zsr.main(EVAL_TINY + ["--pretrained", str(home / "nope"), "--output_dir", str(tmp_path / "runs")])


# ----------------------------------------------------------------------------------------------- 2, 3
SLURM_FLAGS = ["--slurm_partition", "gpu", "--slurm_account", "proj42", "--slurm_qos", "high", "--slurm_mem", "64G",
               "--slurm_gres", "gpu:a100:1", "--slurm_constraint", "a100",
               "--slurm_additional", "reservation=week", "exclusive"]
SMALL_T4 = ["--", "-c", str(SYNTHETIC), "--max_steps", "1", "--test_numsteps", "1", "--testdata", "synthetic_colors",
            "--n_samples", "8"]


def fake_slurm(folder: Path) -> Path:
    """sbatch and srun that record their arguments (and the job file) and answer as SLURM does."""
    folder.mkdir()
    for tool in ("sbatch", "srun"):
        script = folder / tool
        script.write_text(f"#!/bin/sh\necho \"$@\" >> {folder}/{tool}.calls\n"
                          + ('cat "$1" >> ' + str(folder / "jobfiles") + '\necho "Submitted batch job 4242"\n'
                             if tool == "sbatch" else ""))
        script.chmod(0o755)
    return folder


def test_submitit_slurm_without_sbatch_is_refused(tmp_path, monkeypatch):
    """A login node without sbatch (or a typo in PATH): refused, naming sbatch, nothing run or submitted
    (submitit's AutoExecutor fell back to local processes)."""
    pytest.importorskip("submitit")
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    argv = ["T4", "--mini", "--seeds", "0", "--out", str(tmp_path / "out"), "--submitit", "slurm", "--no_wait"]
    with pytest.raises(SystemExit, match=r"--submitit slurm: sbatch is not on PATH.*--submitit local"):
        paper.main(argv + SMALL_T4)
    assert not (tmp_path / "out" / "submitit").exists()
    with pytest.raises(SystemExit, match="--slurm_account: SLURM options, for --submitit slurm only"):
        paper.main(["T4", "--mini", "--dry_run", "--slurm_account", "proj42", "--out", str(tmp_path / "out")])


def test_sbatch_options_in_the_dry_run_and_in_the_job_file(tmp_path, monkeypatch, capsys):
    """Account, QoS, memory, gres, constraint and free-form options: in the sbatch line of --dry_run and in
    the job file a submission hands to sbatch (fake sbatch and srun on PATH)."""
    pytest.importorskip("submitit")
    slurm = fake_slurm(tmp_path / "slurm")
    monkeypatch.setenv("PATH", f"{slurm}{os.pathsep}{os.environ['PATH']}")
    common = ["T4", "--mini", "--seeds", "0", "--out", str(tmp_path / "out"), "--submitit", "slurm"]
    assert paper.main(common + ["--dry_run"] + SLURM_FLAGS + SMALL_T4) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("sbatch "))
    want = ["--partition=gpu", "--account=proj42", "--qos=high", "--mem=64G", "--gres=gpu:a100:1", "--constraint=a100",
            "--reservation=week", "--exclusive", "--array=0-2%3", "--cpus-per-task=8", "--time=1440"]
    assert all(w in line.split() for w in want), line
    assert "--gpus-per-node=1" not in line  # --slurm_gres replaces the default GPU request
    assert paper.main(common + ["--dry_run"] + SMALL_T4) == 0
    assert "--gpus-per-node=1" in next(x for x in capsys.readouterr().out.splitlines() if x.startswith("sbatch "))
    assert paper.main(common + ["--no_wait"] + SLURM_FLAGS + SMALL_T4) == 0
    job_file = (slurm / "jobfiles").read_text()
    assert all(f"#SBATCH {w}" in job_file for w in want)
    assert "[paper] submitted 3 job(s): 4242_0, 4242_1, 4242_2" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- 4, 5
def tensor_bytes(obj) -> int:
    """Bytes of every tensor inside a checkpoint's value (dicts and lists walked)."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def write_partial_eurosat(root: Path, per_class: int = 3) -> int:
    """EuroSAT's release layout (eurosat/2750/<Class>/<Class>_<n>.jpg, the 10 classes), a few images each."""
    for cls in EUROSAT_CLASSES:
        for k in range(1, per_class + 1):
            _img(str(root / "eurosat" / "2750" / cls / f"{cls}_{k}.jpg"), (32, 32))
    return per_class * len(EUROSAT_CLASSES)


def test_a_partial_dataset_is_refused_then_marked_in_every_result(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "runs"
    assert write_partial_eurosat(data) == 30
    argv = ["--eval_only", "-c", str(SYNTHETIC), "--device", "cpu", "--testdata", "EuroSAT", "--root", str(data),
            "--test_numsteps", "1", "--output_dir", str(out), "--name", "e"]
    with pytest.raises(SystemExit, match=r"EuroSAT \(test\): partial \(30 / 27 000\) in .*--allow_partial"):
        tga_zsr.main(argv)
    assert not (out / "e").exists(), "refused before any work"
    assert tga_zsr.main(argv + ["--allow_partial"]) == 0
    (row,) = rows_of(out / "e")
    assert row["partial"] == "partial (30 / 27 000)" and row["n"] == 30
    assert report.main(["table", str(out / "e")]) == 0
    table = capsys.readouterr().out
    assert re.search(r"\| CLIP \| \d+\.\d\d§ \| \d+\.\d\d§ \| \d+\.\d\d§ \|", table)  # cells and means
    assert "§ CLIP, EuroSAT: partial (30 / 27 000) (--allow_partial)" in table
    card = json.loads((out / "e" / "model_card.json").read_text())
    (e,) = card["evaluations"]
    assert e["datasets"]["EuroSAT"]["partial"] == "partial (30 / 27 000)"
    assert e["partial"] == ["EuroSAT partial (30 / 27 000)"]
    assert report.main(["leaderboard", str(out)]) == 0
    assert "| EuroSAT partial (30 / 27 000) |" in capsys.readouterr().out
    # the same folder, made whole later, is evaluated again (the partial row is not "done")
    info = datasets.check_dataset("EuroSAT", str(data))
    assert (info["count"], info["expected_count"], info["partial"]) == (30, 27_000, "partial (30 / 27 000)")
    assert datasets.partial_label(27_000, 27_000, 10, 10) is None
    assert datasets.partial_label(5, 27_000, 3, 10) == "partial (5 / 27 000; 3 / 10 classes)"


def test_a_run_stopped_by_max_steps_says_so(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["-c", str(SYNTHETIC), "--device", "cpu", "--max_steps", "2", "--test_numsteps", "1",
            "--testdata", "synthetic_colors", "--output_dir", str(out), "--name", "s"]
    assert tga_zsr.main(argv) == 0
    ckpt = load_file(out / "s" / "last.pt")
    steps_per_epoch = -(-len(datasets.get_dataset("synthetic_train", "", "train")) // 16)  # configs/synthetic.yaml
    total = steps_per_epoch * 2
    assert ckpt["meta"]["total_steps"] == total and ckpt["step"] == 2 < total
    (row,) = rows_of(out / "s")
    assert row["stopped"] == f"stopped at step 2 of {total}"
    card = json.loads((out / "s" / "model_card.json").read_text())
    assert card["model"]["stopped"] == row["stopped"] and card["evaluations"][0]["stopped"] == row["stopped"]
    # evaluated again later from the run folder: still marked
    assert tga_zsr.main(["--eval_only", "--resume", str(out / "s"), "--device", "cpu", "--testdata",
                         "synthetic_stripes", "--test_numsteps", "1"]) == 0
    assert rows_of(out / "s")[-1]["stopped"] == row["stopped"]
    capsys.readouterr()
    assert report.main(["table", str(out / "s")]) == 0
    table = capsys.readouterr().out
    assert "| TGA-ZSR ‡ |" in table and f"‡ TGA-ZSR: training stopped at step 2 of {total} (--max_steps)" in table


@pytest.mark.usefixtures("one_thread")
def test_paper_tables_mark_stopped_runs_and_partial_sets_and_the_plan_sizes_the_disk(tmp_path, capsys):
    """T4 in a tiny setting, tested on 10 of a partial EuroSAT's 30 images: the trained rows (one step,
    --max_steps) carry ‡, every cell on the partial set §, in the Markdown, the LaTeX and the CSV; the
    dry run's checkpoint bytes are those of the last.pt files written (the tensors' bytes, exactly)."""
    data = tmp_path / "data"
    write_partial_eurosat(data)
    extra = ["--", "-c", str(SYNTHETIC), "--max_steps", "1", "--test_numsteps", "1", "--testdata", "EuroSAT",
             "--root", str(data), "--n_samples", "10", "--allow_partial"]
    common = ["T4", "--mini", "--seeds", "0", "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert paper.main(common + ["--dry_run"] + extra) == 0
    dry = capsys.readouterr().out
    cost = re.search(r"#     disk when done: .* = checkpoints (\S+ MB) \(2 x last\.pt\)", dry)
    assert cost and "#   T4: 3 runs (2 trained, 1 evaluated from their weights), 3 with work left" in dry
    assert paper.main(common + extra) == 0
    md = (tmp_path / "out" / "tables" / "T4_mini.md").read_text()
    assert "| TGA-ZSR | " in md and "‡§" in md
    assert re.search(r"‡ TGA-ZSR: training stopped at step 1 of \d+ \(--max_steps\)", md)
    assert "§ TGA-ZSR: EuroSAT partial (30 / 27 000) (--allow_partial)" in md
    assert "§ CLIP:" in md and "‡ CLIP" not in md                    # CLIP trains nothing: only the data's mark
    tex = (tmp_path / "out" / "tables" / "T4_mini_1.tex").read_text()
    assert r"$^{\ddagger}$" in tex and r"\multicolumn" in tex
    csv_text = (tmp_path / "out" / "tables" / "T4_mini_1.csv").read_text()
    assert "stopped at step 1 of" in csv_text and "EuroSAT partial (30 / 27 000)" in csv_text
    plan = paper.build_plan(["T4"], mini=True, seeds=[0], extra=extra[1:], out=tmp_path / "out")
    for run in (r for r in plan.runs.values() if r.trains):
        last = tmp_path / "out" / run.name / "last.pt"
        with zipfile.ZipFile(last) as z:  # torch's format: one zip entry per tensor storage
            stored = sum(i.file_size for i in z.infolist() if "/data/" in i.filename)
        ckpt = load_file(last)
        rng = sum(tensor_bytes(ckpt[k]) for k in ckpt if k not in ("vision_encoder_state_dict", "optimizer"))
        assert rng < 16 * 1024  # the RNG states (torch's, numpy's key), saved beside the tower and its optimiser
        assert stored == paper_runs.checkpoint_bytes(run.settings) + rng


def test_wall_clock_on_n_gpus_and_a_stated_speed():
    assert paper_runs.longest_first([3, 3, 2, 2, 2], 2) == 7      # longest first: 3+2+2 | 3+2
    assert paper_runs.longest_first([5, 1, 1], 8) == 5            # never below the longest run
    assert paper_runs.longest_first([1, 2, 3], 1) == 6            # one GPU: the sum


def test_the_plan_of_a_table_gives_runs_hours_and_disk(tmp_path, capsys):
    base = ["T7", "--dry_run", "--out", str(tmp_path), "--plan_gpus", "4", "--", "--root", str(tmp_path)]
    assert paper.main(base[:-3] + ["--img_per_s", "1000"] + base[-3:]) == 0
    fast = capsys.readouterr().out
    assert paper.main(base[:-3] + ["--img_per_s", "500"] + base[-3:]) == 0
    slow = capsys.readouterr().out
    pattern = r"wall clock of what remains: (\S+) h on 1 GPU, (\S+) h on 4 GPUs .*longest run: (\S+) h"
    (one, four, longest), (one2, four2, _) = (map(float, re.search(pattern, t).groups()) for t in (fast, slow))
    assert "#   T7: 4 runs (3 trained, 1 evaluated from their weights), 4 with work left" in fast
    assert longest <= four <= one and four >= one / 4
    # half the speed, twice the hours; both printed to 3 significant digits (each off by at most 0.5 %)
    assert one2 / one == pytest.approx(2, rel=2 * 5e-3) and four2 / four == pytest.approx(2, rel=2 * 5e-3)
    assert re.search(r"disk when done: \S+ GB = checkpoints \S+ GB \(3 x last\.pt\)", fast)


# ----------------------------------------------------------------------------------------------- 6
def entry_parsers():
    """(name, parser, the arguments that reach it) of every entry script and sub-command."""
    report_parser = report.get_args_parser()
    subs = next(a for a in report_parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return [("tga_zsr.py", settings.get_args_parser(), []), ("paper.py", paper.get_args_parser(), []),
            ("visualize.py", visualize.get_args_parser(), []), ("bench.py", bench.get_args_parser(), []),
            ("doctor.py", doctor.get_args_parser(), []), ("pretrain_tiny.py", pretrain_tiny.get_args_parser(), []),
            ("datasets.prepare", prepare.get_args_parser(), []),
            ("report.py table", subs["table"], ["RUN"]), ("report.py leaderboard", subs["leaderboard"], ["DIR"]),
            ("report.py export", subs["export"], ["RUN"]), ("audit.py", audit.get_args_parser(), []),
            ("gpu_check.py", gpu_check.get_args_parser(), [])] + \
        [(f"wheelhouse.py {name}", parser, []) for name, parser in next(
            a for a in wheelhouse.get_args_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices.items()]


def test_abbreviated_flags_are_refused_everywhere(capsys):
    checked = 0
    for name, parser, positional in entry_parsers():
        options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        for option in options:
            prefix = option[:-1]
            if len(prefix) < 4 or [o for o in options if o.startswith(prefix)] != [option]:
                continue  # not an abbreviation argparse would have taken
            with pytest.raises(SystemExit):
                parser.parse_args(positional + [prefix])
            assert f"unrecognized arguments: {prefix}" in capsys.readouterr().err, (name, prefix)
            checked += 1
    assert checked > 100
    # the layered parse of tga_zsr.py reads -c/--config first: `--conf` is not it either
    with pytest.raises(SystemExit):
        settings.parse_args(["--conf", "nothing.yaml"])
    assert "unrecognized arguments: --conf nothing.yaml" in capsys.readouterr().err
    done = run_py("tga_zsr.py", "--test_step", "2")
    assert done.returncode == 2 and "unrecognized arguments: --test_step 2" in done.stderr


# ----------------------------------------------------------------------------------------------- 7
def test_root_at_the_dataset_folder_says_what_root_is(tmp_path):
    data = tmp_path / "data"
    write_eurosat(str(data))
    argv = ["--eval_only", "-c", str(SYNTHETIC), "--device", "cpu", "--testdata", "EuroSAT",
            "--output_dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as e:
        tga_zsr.main(argv + ["--root", str(data / "eurosat")])
    said = str(e.value)
    assert f"expected in {data / 'eurosat' / 'eurosat/2750'}" in said
    assert "--root is the folder that holds the datasets" in said
    assert f"looks like the EuroSAT folder itself: give the folder above it, --root {data}" in said
    assert f"python -m datasets.prepare --root {data} --download EuroSAT" in said
    # the folder above works (the fixture holds 5 of EuroSAT's images: --allow_partial)
    assert tga_zsr.main(argv + ["--root", str(data), "--test_numsteps", "1", "--allow_partial"]) == 0


# ----------------------------------------------------------------------------------------------- 8
PAPER_FLAGS = {"--learning_rate": "1e-4", "--batch_size": "128", "--train_eps": "1/255", "--Alpha": "0.08",
               "--Beta": "0.05", "--test_eps": "1/255", "--test_numsteps": "100"}


def test_help_says_what_every_flag_is_with_its_default_and_the_papers_value(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one flag per line: a default is never cut by the wrapping
    for name, parser, _ in entry_parsers():
        text = parser.format_help()
        for a in parser._actions:
            if a.help == argparse.SUPPRESS or isinstance(a, argparse._SubParsersAction):
                continue
            assert a.help, f"{name} {a.option_strings or a.dest}: no help"
            shown = a.default is not None and a.default is not False and a.default != argparse.SUPPRESS
            if shown and a.option_strings:
                assert f"(default: {a.default})" in text, f"{name} {a.option_strings[0]}: default not shown"
    tga = {o: a for a in settings.get_args_parser()._actions for o in a.option_strings}
    for flag, value in PAPER_FLAGS.items():
        assert f"the paper: {value}" in tga[flag].help and "Table" in tga[flag].help, flag
    shown = run_py("tga_zsr.py", "--help", env={"COLUMNS": "1000"})
    assert shown.returncode == 0 and "(default: 0.0001)" in shown.stdout and "the paper: 0.08, Tables 1-2" in shown.stdout
    # a method's configs/<method>.yaml is a default too: --help after --Method shows that method's values
    tecoa = run_py("tga_zsr.py", "--Method", "TeCoA", "--help", env={"COLUMNS": "1000"}).stdout
    assert re.search(r"--learning_rate LEARNING_RATE\s+[^\n]*\(default: 1e-05\)", tecoa)


# ----------------------------------------------------------------------------------------------- 9
def test_main_sh_help_and_no_job_list_every_job():
    script = (ROOT / "main.sh").read_text()
    cases = script[script.index('case "$job" in\n  smoke)'):]
    jobs = {j for line in re.findall(r"^  ([\w|*-]+)\)", cases, re.M) for j in line.split("|") if j != "*"}
    assert {"smoke", "smoke-all", "mini", "test", "doctor", "paper", "mini-paper", "all"} <= jobs
    for argv in (["--help"], []):  # (`help` and `-h` are the same branch of main.sh)
        done = subprocess.run(["bash", "main.sh", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (argv, done.stderr)
        listed = re.findall(r"^  (\S+) {2,}\S", done.stdout, re.M)
        assert len(listed) == len(set(listed)) and jobs | {"help"} <= set(listed), (argv, listed)
        assert "methods: " in done.stdout and "tga_zsr" in done.stdout


# ----------------------------------------------------------------------------------------------- 10
def test_figures_are_true_colour_vector_and_readable_at_column_width(tmp_path, caplog):
    out = tmp_path / "runs"
    assert tga_zsr.main(["-c", str(SYNTHETIC), "--device", "cpu", "--max_steps", "2", "--test_numsteps", "1",
                         "--testdata", "synthetic_colors", "--output_dir", str(out), "--name", "f"]) == 0
    figs = tmp_path / "figs"
    with caplog.at_level("WARNING", logger="tga_zsr"):
        assert visualize.main(["--resume", str(out / "f"), "--n_images", "3", "--steps", "1", "--device", "cpu",
                               "--trade_off", str(out / "f"), "--loss_curve", str(out / "f"), "--out", str(figs)]) == 0
    assert not [r for r in caplog.records if " pt at " in r.getMessage()], "some text under the readable size"
    for stem in ("attention_grid", "trade_off", "loss_curve"):
        with Image.open(figs / f"{stem}.png") as im:
            assert im.mode == "RGB", (stem, im.mode)                 # true colour, never a palette
            assert im.size[0] <= plots.COLUMN_IN * 150 + 1            # at most a column wide at --dpi 150
        pdf = (figs / f"{stem}.pdf").read_bytes()
        assert pdf[:5] == b"%PDF-" and b"/FontFile2" in pdf           # vector: the text is text (TrueType)
    # the drawn figures themselves: every text at least MIN_FONT_PT once placed a column wide
    s = visualize.run_settings(out / "f")
    original, finetuned = visualize.load_models(out / "f", s, torch.device("cpu"))
    data = datasets.get_dataset("synthetic_colors", "", "test")
    rows = visualize.attention_rows(original, finetuned, data, [0, 1, 2],
                                    {"attack": "pgd", "norm": "l_inf", "eps": 4, "steps": 1, "step_size": 1,
                                     "seed": 0}, torch.device("cpu"))
    many = [{"label": f"TeCoA w/ prompting {i}", "clean": 50.0 + i, "robust": 30.0 + i % 3} for i in range(11)]
    for fig in (visualize.draw_attention_grid(rows, data.classnames, 4, 1, "a title " * 30),
                plots.draw_trade_off(many[:2], "a title " * 20), plots.draw_trade_off(many, "T1", reference=many[:3])):
        assert fig.get_figwidth() <= plots.COLUMN_IN + 1e-9
        assert plots.print_font_pt(fig) >= plots.MIN_FONT_PT
        plots.pyplot().close(fig)


# ----------------------------------------------------------------------------------------------- 12
def test_leaderboard_keeps_each_evaluation_setting_apart(tmp_path, capsys):
    register_tiny_sets()
    common = EVAL_TINY + ["--pretrained", "none", "--arch", "tiny-vit"]  # the later --test_numsteps wins
    for name, extra in (("steps1", ["--test_numsteps", "1"]), ("steps2", ["--test_numsteps", "2"]),
                        ("half", ["--test_numsteps", "2", "--test_stepsize", "0.5"]),
                        ("bf16", ["--test_numsteps", "2", "--attack_precision", "bf16"])):
        assert tga_zsr.main(common + extra + ["--output_dir", str(tmp_path), "--name", name]) == 0
    capsys.readouterr()
    assert report.main(["leaderboard", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    titles = re.findall(r"^### (.*)$", text, re.M)
    assert len(titles) == 4, titles                                   # one ranking per setting, none merged
    assert any(t.startswith("PGD-1, ε = 4/255, step 1/255") for t in titles)
    assert any(t.startswith("PGD-2, ε = 4/255, step 0.5/255") for t in titles)
    assert any("attacks in bf16" in t for t in titles)
    # a card written before cards carried `setting` is ranked under the same title
    card = json.loads((tmp_path / "steps2" / "model_card.json").read_text())
    old = {**card, "evaluations": [{k: v for k, v in e.items() if k != "setting"} for e in card["evaluations"]]}
    assert model_card.leaderboard([old]).splitlines()[0] == model_card.leaderboard([card]).splitlines()[0]
