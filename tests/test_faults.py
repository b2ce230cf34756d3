"""Every bad input and every fault of issue 15, one test each: a clear error before work starts (no
traceback, non-zero exit, the file or flag named, what to do), and nothing lost or left behind.
docs/troubleshooting.md lists what each case prints.

Tiny random-weight model and synthetic data (configs/synthetic.yaml), a few steps; in-process
(`tga_zsr.main`) except where a second real process is the point (lock, SIGTERM).

    python -m pytest -q tests/test_faults.py
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from engine import evaluate
import methods
from engine import results
import report
import tga_zsr
from engine.checkpoint import load_file
from datasets import prepare
from tests.dataset_fixtures import write_tinyimagenet

ROOT = Path(__file__).resolve().parents[1]
# FT-Clean: the cheapest step (no attack, no frozen tower); the faults do not depend on the method.
TRAIN = ["-c", "configs/synthetic.yaml", "--Method", "FT-Clean", "--device", "cpu", "--no_eval", "--print_freq", "1",
         "--save_freq", "0", "--batch_size", "4"]
EVAL = ["-c", "configs/synthetic.yaml", "--device", "cpu", "--eval_only", "--testdata", "synthetic_colors",
        "--n_samples", "8", "--test_numsteps", "1"]


def fails(argv, *patterns) -> str:
    """Run tga_zsr.main; it must exit with a message (not 0, not a traceback) matching every pattern."""
    with pytest.raises(SystemExit) as e:
        tga_zsr.main(argv)
    message = str(e.value.code)
    assert e.value.code not in (0, None) and not isinstance(e.value.code, int), message
    for p in patterns:
        assert re.search(p, message), f"{p!r} not in:\n{message}"
    assert "Traceback" not in message
    return message


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def truncate(path: Path) -> None:
    """Cut a JPEG in half, as an interrupted copy leaves it (PIL: 'image file is truncated')."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# --- corrupt images ---------------------------------------------------------------------------------
def test_corrupt_test_image_stops_naming_it_or_is_skipped_and_counted(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "runs"
    write_tinyimagenet(str(data))
    bad = data / "tiny-imagenet-200" / "val" / "images" / "val_3.JPEG"
    truncate(bad)
    argv = EVAL + ["--testdata", "synthetic_colors", "tinyImageNet", "--n_samples", "0", "--root", str(data),
                   "--output_dir", str(out), "--name", "e", "--allow_partial"]  # the fixture: 5 of 10 000 images
    fails(argv, re.escape(str(bad)), "cannot be decoded", "--skip_corrupt", "--verify tinyImageNet --deep",
          "synthetic_colors|results.jsonl")
    rows = results.read_results(out / "e")
    assert [r["dataset"] for r in rows] == ["synthetic_colors"], "the dataset finished before is kept"

    assert tga_zsr.main(argv + ["--skip_corrupt"]) == 0
    tiny = results.read_results(out / "e")[-1]
    assert (tiny["dataset"], tiny["n"], tiny["skipped"]) == ("tinyImageNet", 4, 1)  # 5 images, 1 unreadable
    assert [r["dataset"] for r in results.read_results(out / "e")] == ["synthetic_colors", "tinyImageNet"]
    assert str(bad) in capsys.readouterr().out, "each skipped image is named"
    assert report.main(["table", str(out / "e")]) == 0
    table = capsys.readouterr().out
    assert "†" in table and "1 unreadable image(s) skipped (--skip_corrupt); accuracy over the 4 read" in table

    # python -m datasets.prepare --verify --deep finds it (the quick check decodes only a few images)
    code = prepare.main(["--root", str(data), "--verify", "tinyImageNet", "--deep", "--expect",
                         "tinyImageNet=5:3", "tinyImageNet[train]=6:3"])
    printed = capsys.readouterr().out
    assert code == 1 and "CORRUPT" in printed and str(bad) in printed and "1 image(s) cannot be decoded" in printed


def test_corrupt_training_image_checkpoints_then_resumes_with_skip(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "runs"
    write_tinyimagenet(str(data))
    bad = data / "tiny-imagenet-200" / "train" / "n01641577" / "images" / "n01641577_1.JPEG"  # not sample 0
    truncate(bad)
    argv = TRAIN + ["--dataset", "tinyImageNet", "--root", str(data), "--output_dir", str(out), "--name", "t",
                    "--batch_size", "2", "--epochs", "1", "--allow_partial"]  # the fixture: 6 of 100 000 images
    assert tga_zsr.main(argv) == 1
    said = capsys.readouterr().out
    assert str(bad) in said and "--skip_corrupt" in said
    assert f"Resume with: python tga_zsr.py --resume {out / 't'}" in said
    stopped = load_file(out / "t" / "last.pt")
    assert stopped["step"] < 3 and not stopped["meta"]["finished"], "saved at the step boundary before the batch"
    assert tga_zsr.main(["--resume", str(out / "t"), "--device", "cpu", "--no_eval", "--skip_corrupt",
                         "--allow_partial"]) == 0
    done = load_file(out / "t" / "last.pt")
    assert done["step"] == 3 and done["meta"]["finished"]  # 6 images in batches of 2, one left out
    assert not list((out / "t").glob(".*")), "no lock or temp file left"


# --- disk full --------------------------------------------------------------------------------------
def test_disk_full_while_writing_a_checkpoint(tmp_path, monkeypatch, capsys):
    """The temp file is a link to /dev/full: the kernel's real ENOSPC, from a real torch.save."""
    from engine import checkpoint
    out, run = tmp_path / "runs", tmp_path / "runs" / "d"
    argv = TRAIN + ["--output_dir", str(out), "--name", "d", "--save_freq", "1", "--max_steps", "2"]
    real_temp_path, calls = checkpoint.temp_path, []

    def second_write_fills_the_disk(path):
        tmp = real_temp_path(path)
        calls.append(tmp)
        if len(calls) == 2:
            tmp.symlink_to("/dev/full")
        return tmp

    monkeypatch.setattr(checkpoint, "temp_path", second_write_fills_the_disk)
    assert tga_zsr.main(argv) == 1
    said = capsys.readouterr().out
    assert re.search(rf"no space left on the disk of {re.escape(str(run.resolve()))} .* needs about \d+ MB and "
                     rf"\d+ MB are free", said), said
    assert f"Resume with: python tga_zsr.py --resume {run}" in said and "holds the checkpoint of step 1" in said
    assert load_file(run / "last.pt")["step"] == 1, "the previous last.pt is intact"
    assert not list(run.glob(".*")), "temp file and lock removed"

    # a writer killed mid-write leaves its temp file: the next start removes it
    monkeypatch.setattr(checkpoint, "temp_path", real_temp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = run / f".last.pt.tmp-{int(dead.stdout)}"
    stale.write_bytes(b"half a checkpoint")
    assert tga_zsr.main(["--resume", str(run), "--device", "cpu", "--no_eval", "--max_steps", "2"]) == 0
    assert not stale.exists() and f"removed {stale}" in capsys.readouterr().out
    assert load_file(run / "last.pt")["step"] == 2


# --- garbage files ----------------------------------------------------------------------------------
def test_garbage_files_for_resume_and_pretrained(tmp_path):
    out = tmp_path / "runs"
    page = tmp_path / "ViT-B-32.pt"
    page.write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>\n")
    cut = tmp_path / "cut.pt"
    torch.save({"w": torch.zeros(1000)}, cut)
    cut.write_bytes(cut.read_bytes()[:500])
    pickled = tmp_path / "objects.pt"
    torch.save({"args": argparse_namespace()}, pickled)
    for flag in (["--resume"], ["--pretrained"]):
        for f, why in ((page, "web page, not weights"), (cut, "cut short"), (pickled, "pickled Python objects")):
            extra = ["--eval_only"] if flag == ["--resume"] else []
            msg = fails(EVAL + extra + ["--output_dir", str(out)] + flag + [str(f)], re.escape(f"{flag[0]} {f}"), why)
            assert "weights_only=False" not in msg, "never advise unpickling a file of unknown origin"
    assert listing(out) == [], "nothing written"


def argparse_namespace():
    import argparse
    return argparse.Namespace(lr=1e-4)


# --- YAML configs -----------------------------------------------------------------------------------
def test_yaml_config_not_plain_data_syntax_error_or_wrong_type(tmp_path):
    out = tmp_path / "runs"
    cases = {
        "tag.yaml": ('epochs: !!python/object/apply:os.system ["touch pwned"]\n', r"line 1.*plain data only"),
        "syntax.yaml": ("testdata: [cifar10, STL10\n", r"line 2, column 1: YAML syntax error"),
        "type.yaml": ("batch_size: [16]\n", r"batch_size: \[16\] is not an integer \(--batch_size\)"),
        "flag.yaml": ("no_eval: 'yes'\n", r"no_eval: 'yes' is not true or false"),
        "choice.yaml": ("optimizer: adam\n", r"optimizer: 'adam' is not one of \['sgd', 'adamw'\]"),
    }
    for name, (text, pattern) in cases.items():
        (tmp_path / name).write_text(text)
        fails(TRAIN + ["-c", str(tmp_path / name), "--output_dir", str(out)], re.escape(str(tmp_path / name)), pattern)
    assert not (ROOT / "pwned").exists() and listing(out) == []


# --- flags ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, pattern", [
    (["--train_eps", "-1"], r"--train_eps -1: must be 0 or more"),
    (["--test_eps", "-1"], r"--test_eps -1: must be 0 or more"),
    (["--train_numsteps", "-1"], r"--train_numsteps -1: must be 0 or more PGD steps"),
    (["--batch_size", "0"], r"--batch_size 0: must be 1 or more"),
    (["--test_batch_size", "0"], r"--test_batch_size 0: must be 1 or more"),
    (["--learning_rate", "-0.1"], r"--learning_rate -0.1: must be 0 or more"),
    (["--epochs", "-1"], r"--epochs -1: must be 0 or more"),
    (["--accum_steps", "3"], r"--batch_size 4: .*--accum_steps 3; use a multiple of 3"),
    (["--n_samples", "100", "--testdata", "synthetic_colors"], r"--n_samples 100 is more than its 24 images"),
])
def test_flags_out_of_range_fail_before_the_run_folder(tmp_path, flags, pattern):
    fails([*[a for a in TRAIN if a != "--no_eval"], "--output_dir", str(tmp_path / "runs"), *flags], pattern)
    assert listing(tmp_path / "runs") == []


def test_dataset_name_typo_says_did_you_mean(tmp_path):
    fails(EVAL + ["--output_dir", str(tmp_path), "--testdata", "Caltec101"], r"did you mean Caltech101\?")
    fails(TRAIN + ["--output_dir", str(tmp_path), "--dataset", "tinyImageNett"], r"did you mean tinyImageNet\?")
    assert listing(tmp_path) == []


def test_dataset_root_that_is_a_file(tmp_path):
    f = tmp_path / "data.tar"
    f.write_bytes(b"not a folder")
    fails(EVAL + ["--output_dir", str(tmp_path / "runs"), "--root", str(f)], re.escape(f"--root {f}: is a file"))
    assert listing(tmp_path / "runs") == []


# --- results.jsonl ----------------------------------------------------------------------------------
def test_broken_results_jsonl(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    good = {"dataset": "cifar10", "n": 100, "clean_acc": 50.0, "robust_acc": 30.0, "attack": "pgd", "norm": "l_inf",
            "eps": 1, "steps": 10, "step_size": 1, "n_samples": 0, "precision": "fp32", "method": "tecoa"}
    lines = [json.dumps(good), "Traceback (most recent call last):", json.dumps({**good, "dataset": "STL10"}),
             json.dumps({"dataset": "dtd", "n": 10, "clean_acc": 40.0}), '{"dataset": "Food101", "n": 1']
    (run / "results.jsonl").write_text("\n".join(lines))
    assert report.main(["table", str(run)]) == 0
    out, err = capsys.readouterr()
    assert "| TeCoA | 30.00 | 50.00 |" in out and "STL10 Robust" in out and "dtd" not in out
    assert "line 2 ignored: not JSON" in err
    assert "line 4 ignored: no valid robust_acc (dataset dtd)" in err
    assert "line 5 ignored: cut short" in err


# --- output folder ----------------------------------------------------------------------------------
def test_read_only_output_folder(tmp_path):
    """A folder this process cannot write in (as root: seen through the eyes of user nobody)."""
    ro = Path(tempfile.mkdtemp())
    ro.chmod(0o555)
    as_nobody = os.geteuid() == 0
    if as_nobody and not all(d.stat().st_mode & 0o001 for d in Path(__file__).resolve().parents):
        # nobody must reach the project's own files (configs/ is read while parsing): a clone inside a private
        # folder (mktemp -d makes it 0700) cannot be tested this way
        ro.rmdir()
        pytest.skip("the repository is not reachable by user nobody (a folder above it is not o+x)")
    try:
        if as_nobody:
            os.seteuid(65534)
        fails(TRAIN + ["--output_dir", str(ro / "runs")], re.escape(f"cannot create the run folder {ro / 'runs'}"),
              "Permission denied", "writable --output_dir")
    finally:
        if as_nobody:
            os.seteuid(0)
        ro.chmod(0o755)
        ro.rmdir()


# --- two processes, SIGTERM, stale lock -------------------------------------------------------------
def test_second_process_refused_then_sigterm_checkpoints_and_resumes(tmp_path, capsys):
    out, run = tmp_path / "runs", tmp_path / "runs" / "r"
    argv = TRAIN + ["--output_dir", str(out), "--name", "r", "--workers", "1"]
    first = subprocess.Popen([sys.executable, "tga_zsr.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while not (run / "history.jsonl").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.stdout.read()
        fails(argv, rf"{re.escape(str(run))} is in use by another process: pid {first.pid} on ", r"delete .*\.lock")
        first.send_signal(signal.SIGTERM)
        said = first.communicate(timeout=60)[0]
    finally:
        first.kill()
    assert first.returncode == 128 + signal.SIGTERM, said
    assert f"SIGTERM: training stopped at step" in said and f"Resume with: python tga_zsr.py --resume {run}" in said
    step = load_file(run / "last.pt")["step"]
    assert step >= 1 and not list(run.glob(".*")), "checkpoint saved, lock released, no temp file"

    # a lock left by a process that died (kill -9) on this host is taken over with a warning
    (run / ".lock").write_text(json.dumps({"host": os.uname().nodename, "pid": first.pid, "argv": []}))
    assert tga_zsr.main(["--resume", str(run), "--device", "cpu", "--no_eval", "--max_steps", str(step + 1)]) == 0
    assert f"taking over the lock of pid {first.pid}" in capsys.readouterr().out
    assert load_file(run / "last.pt")["step"] == step + 1, "continued from the checkpoint"


def test_sigint_during_training_and_evaluation(tmp_path, monkeypatch, capsys):
    """Ctrl-C (a real SIGINT to this process) at step 2: checkpoint and 130; during the second
    dataset's evaluation: 130 at once, the first dataset's row kept."""
    out = tmp_path / "runs"
    real_step = methods.get_method("FT-Clean").step

    def step(self, x, y, idx):
        if self_count.append(1) or len(self_count) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, x, y, idx)

    self_count = []
    monkeypatch.setattr(methods.get_method("FT-Clean"), "step", step)
    assert tga_zsr.main(TRAIN + ["--output_dir", str(out), "--name", "c"]) == 130
    assert load_file(out / "c" / "last.pt")["step"] == 2, "the step under way finished, then the checkpoint"
    assert f"SIGINT: training stopped at step 2" in capsys.readouterr().out
    monkeypatch.undo()

    real_eval = evaluate.evaluate_dataset

    def second_interrupted(model, data, *a, **kw):
        if data.name == "synthetic_stripes":
            os.kill(os.getpid(), signal.SIGINT)
        return real_eval(model, data, *a, **kw)

    monkeypatch.setattr(evaluate, "evaluate_dataset", second_interrupted)
    argv = EVAL + ["--output_dir", str(out), "--name", "e", "--testdata", "synthetic_colors", "synthetic_stripes"]
    assert tga_zsr.main(argv) == 130
    assert "SIGINT: stopped. Finished work is kept" in capsys.readouterr().out
    assert [r["dataset"] for r in results.read_results(out / "e")] == ["synthetic_colors"]
    assert not (out / "e" / ".lock").exists()


# --- resume folder ----------------------------------------------------------------------------------
def test_resume_folder_without_args_yaml_or_with_another_arch(tmp_path):
    out, run = tmp_path / "runs", tmp_path / "runs" / "a"
    assert tga_zsr.main(TRAIN + ["--output_dir", str(out), "--name", "a", "--max_steps", "1"]) == 0
    before = (run / "last.pt").read_bytes()

    saved = yaml.safe_load((run / "args.yaml").read_text())
    (run / "args.yaml").write_text(yaml.safe_dump({**saved, "arch": "ViT-B-32"}))
    fails(["--resume", str(run), "--device", "cpu", "--no_eval"],
          r"arch: 'tiny-vit' in the checkpoint, 'ViT-B-32' now", re.escape(str(run / "args.yaml")))

    (run / "args.yaml").unlink()
    msg = fails(["--resume", str(run), "--device", "cpu", "--no_eval"], "no args.yaml", "--eval_only --resume")
    restore = re.search(r'python -c "(.*)"', msg).group(1)  # the command the message gives works
    subprocess.run([sys.executable, "-c", restore], check=True)
    assert yaml.safe_load((run / "args.yaml").read_text())["arch"] == "tiny-vit"
    assert (run / "last.pt").read_bytes() == before and not (run / ".lock").exists(), "nothing lost"
    assert tga_zsr.main(["--resume", str(run), "--device", "cpu", "--no_eval", "--max_steps", "2"]) == 0
    assert load_file(run / "last.pt")["step"] == 2
