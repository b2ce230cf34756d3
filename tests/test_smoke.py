"""`bash main.sh smoke` end to end (the README's first command). Skip locally with -m "not smoke"."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.smoke
def test_main_sh_smoke(tmp_path):
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "VIRTUAL_ENV": str(Path(sys.executable).parent.parent)}
    # The timeout guards against a hang, it is not a speed test: the smoke takes ~3 CPU-minutes, and on a
    # shared 2-core machine at load 10 it took 16 minutes of wall time (600 s failed there).
    out = subprocess.run(["bash", "main.sh", "smoke", "--output_dir", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "| **mean** |" in out.stdout
    runs = list(tmp_path.glob("smoke-*"))
    assert len(runs) == 1 and (runs[0] / "results.jsonl").is_file() and (runs[0] / "last.pt").is_file()
    figures = ["loss_curve.png", "loss_curve.pdf", "attention_grid.png", "attention_grid.pdf", "trade_off.png", "trade_off.pdf"]
    assert all((runs[0] / f).stat().st_size > 1000 for f in figures)
    assert (runs[0] / "clip_start" / "results.jsonl").is_file()  # the trade-off plot's second point
