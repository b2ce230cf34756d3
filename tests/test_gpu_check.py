"""`bash main.sh gpu-check --cpu-smoke`: the GPU check's whole script on the CPU (tiny model, small batches,
10 PGD steps) exits 0 and writes gpu_check.json with every section; and its projection's arithmetic.

    python -m pytest -q tests/test_gpu_check.py
"""
import json
import math
import os
import subprocess
from pathlib import Path

import pytest

import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_smoke_exits_0_and_writes_the_json(tmp_path):
    out = tmp_path / "gc"
    proc = subprocess.run(["bash", "main.sh", "gpu-check", "--cpu-smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["verdict"] == "PASS" and not result["failed"]
    assert result["seconds"] < 120                                           # "under 2 minutes"
    checks = {c["check"]: c["status"] for c in result["checks"]}
    assert checks["bf16 autocast"] == "ok" and checks["per-sample starts"] == "ok"
    assert checks["fp16 vs fp32 attack"] == "ok"        # fp16 autocast on the CPU: no silent zero gradients
    train = {(r["precision"], r["compiled"]) for r in result["training"]}
    assert ("fp32", False) in train and ("bf16", False) in train
    assert all(r["img_per_s"] > 0 and r["tflop_per_s"] > 0 for r in result["training"])
    assert [r["precision"] for r in result["evaluation"]["rows"]] == ["amp", "fp32"]
    p = result["projection"]
    assert p["tga_zsr_row_hours"] > 0 and "T1" in p["tables_hours"] and "all (each run once)" in p["tables_hours"]
    assert "| training: TGA-ZSR step" in proc.stdout and "| projection" in proc.stdout


def test_projection_arithmetic():
    """The TGA-ZSR row from its two rates: 7 820 steps of 128 at the training rate, and the 16 test sets'
    images at the PGD-100 rate (measured at PGD-10 here: 22 units an image instead of 202)."""
    rates = {"train_img_per_s": 1000.0, "train_config": "amp", "pgd_img_per_s": 202 / 22 * 500.0, "pgd_steps": 10,
             "eval_precision": "amp"}
    p = gpu_check.projection(rates, gpus=8)
    images = p["test_images"]
    assert p["rates"]["pgd100_img_per_s"] == pytest.approx(500.0)
    want = (math.ceil(100_000 / 128) * 10 * 128 / 1000 + images / 500) / 3600
    assert p["tga_zsr_row_hours"] == pytest.approx(want)
    # one table's runs at these rates (each run once in "all"): the same arithmetic, more runs
    assert p["tables_hours"]["all (each run once)"] >= max(h for t, h in p["tables_hours"].items() if t != "all (each run once)")
    assert p["goal_met"] == (want * 60 <= 30)
