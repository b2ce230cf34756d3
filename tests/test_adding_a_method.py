"""docs/adding_a_method.md, applied for real: its two files (a method file, a YAML) are written into a
fresh copy of the repository, nothing else is edited, and the page's own commands are run there
(each shortened by a few flags). The new method must train with two values of its own flag into two
run folders, show its label in the table, and run in `METHOD=tecoa_ls bash main.sh smoke`.

    python -m pytest -q tests/test_adding_a_method.py
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "adding_a_method.md"
FILE_BLOCK = re.compile(r"<!-- file: (\S+) -->\s*```\w*\n(.*?)```", re.S)
RUN_BLOCK = re.compile(r"<!-- run after adding the files above -->\s*```bash\n(.*?)```", re.S)
# What shortens each command of the page (the synthetic world and the smoke run, a few steps).
SHORT = {"python tga_zsr.py": ["--device", "cpu", "--max_steps", "2", "--testdata", "synthetic_colors",
                               "--n_samples", "8", "--test_numsteps", "1"],
         "bash main.sh smoke": ["--max_steps", "2", "--n_samples", "12", "--test_numsteps", "2"]}


def fresh_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if not src.is_file():
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        if src.stat().st_size > 1_000_000:  # the bundled weights: linked, not copied
            os.symlink(src, dest / f)
        else:
            shutil.copy2(src, dest / f)
    return dest


def page_commands() -> list[str]:
    (block,) = RUN_BLOCK.findall(PAGE.read_text())
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line]


def shortened(command: str) -> str:
    extra = next((flags for start, flags in SHORT.items() if start in command), [])
    return " ".join([command, *extra])


def test_the_page_adds_a_method_touching_only_its_own_files(tmp_path):
    files = dict(FILE_BLOCK.findall(PAGE.read_text()))
    assert sorted(files) == ["configs/tecoa_ls.yaml", "methods/tecoa_ls.py"]
    repo = fresh_copy(tmp_path / "repo")
    assert not any((repo / path).exists() for path in files)
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and not p.is_symlink()}
    for path, code in files.items():
        (repo / path).write_text(code)

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin", HOME=str(tmp_path),
               VIRTUAL_ENV=str(Path(sys.executable).parent.parent))
    commands = page_commands()
    assert len(commands) == 4 and "report.py table" in commands[2]
    outputs = []
    for command in commands:
        out = subprocess.run(["bash", "-c", shortened(command)], cwd=repo, capture_output=True, text=True,
                             timeout=600, env=env)
        assert out.returncode == 0, command + "\n" + out.stdout[-3000:] + out.stderr[-3000:]
        outputs.append(out.stdout)

    runs = sorted((repo / "checkpoints").glob("tecoa_ls_*"))
    assert [r.name.split("_")[-2] for r in runs] == ["ls0.1", "ls0.3"]          # two folders, named by the flag
    for r, eps in zip(runs, (0.1, 0.3)):
        assert yaml.safe_load((r / "args.yaml").read_text())["label_smoothing"] == eps
        row = json.loads((r / "results.jsonl").read_text().splitlines()[0])
        assert (row["method"], row["label"]) == ("tecoa_ls", "TeCoA-LS")
    # shortened by --max_steps, each run is marked as stopped before its schedule (‡)
    assert all(f"| TeCoA-LS ({r.name}) ‡ |" in outputs[2] for r in runs)

    smoke = next((repo / "checkpoints").glob("smoke-tecoa_ls-*"))
    assert yaml.safe_load((smoke / "args.yaml").read_text())["learning_rate"] == 1e-3   # 1e-5 × 100
    assert json.loads((smoke / "results.jsonl").read_text().splitlines()[0])["label"] == "TeCoA-LS"
    changed = [str(p.relative_to(repo)) for p, data in before.items() if p.read_bytes() != data]
    assert not changed, f"adding a method edited {changed}"
