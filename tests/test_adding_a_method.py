"""README "Adding a method", applied for real: its three blocks (a loss, a method class, a YAML) are
added to a fresh copy of the repository, and nothing else is edited. The new method must then train
with two values of its own flag into two run folders, show its label in the table, and run in
`METHOD=tecoa_ls bash main.sh smoke`.

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
BLOCK = re.compile(r"<!-- add to: (\S+) -->\s*```\w*\n(.*?)```", re.S)


def readme_blocks() -> dict[str, str]:
    return {path: code for path, code in BLOCK.findall((ROOT / "README.md").read_text())}


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


def run(cmd, cwd, env=None):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_readme_example_adds_a_method_touching_only_its_own_files(tmp_path):
    blocks = readme_blocks()
    assert sorted(blocks) == ["configs/tecoa_ls.yaml", "losses.py", "methods.py"]
    repo = fresh_copy(tmp_path / "repo")
    assert not (repo / "configs/tecoa_ls.yaml").exists()
    for path, code in blocks.items():
        with open(repo / path, "a") as f:
            f.write(("\n\n" if path.endswith(".py") else "") + code)

    py = [sys.executable, "tga_zsr.py", "-c", "configs/synthetic.yaml", "--Method", "tecoa_ls", "--device", "cpu",
          "--max_steps", "2", "--testdata", "synthetic_colors", "--n_samples", "8", "--test_numsteps", "1",
          "--output_dir", "out"]
    for eps in ("0.1", "0.3"):
        run(py + ["--label_smoothing", eps], repo)
    runs = sorted((repo / "out").iterdir())
    assert [r.name.split("_")[-2] for r in runs] == ["ls0.1", "ls0.3"]          # two folders, named by the flag
    for r, eps in zip(runs, (0.1, 0.3)):
        assert yaml.safe_load((r / "args.yaml").read_text())["label_smoothing"] == eps
        row = json.loads((r / "results.jsonl").read_text().splitlines()[0])
        assert (row["method"], row["label"]) == ("tecoa_ls", "TeCoA-LS")
    table = run([sys.executable, "tga_zsr.py", "--table", *map(str, runs)], repo)
    assert all(f"| TeCoA-LS ({r.name}) |" in table for r in runs)

    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "VIRTUAL_ENV": str(Path(sys.executable).parent.parent)}
    run(["bash", "main.sh", "smoke", "--output_dir", str(tmp_path / "smoke"), "--max_steps", "2",
         "--n_samples", "12", "--test_numsteps", "2"], repo, env=dict(os.environ, METHOD="tecoa_ls", **env))
    smoke = next((tmp_path / "smoke").glob("smoke-tecoa_ls-*"))
    assert yaml.safe_load((smoke / "args.yaml").read_text())["learning_rate"] == 1e-3   # 1e-5 × 100
    assert json.loads((smoke / "results.jsonl").read_text().splitlines()[0])["label"] == "TeCoA-LS"
