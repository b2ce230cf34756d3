"""The mini benchmark's claim, measured rather than asserted: a short adversarial fine-tuning of
the bundled tiny-world CLIP on world_train makes it more robust on world test sets it never saw,
and TGA-ZSR keeps more of its clean accuracy than TeCoA does (or nearly as much).

The runs are the mini config (configs/mini.yaml, each method's mini learning rate) shortened to
SHORT below: one epoch, a class-balanced subset of each test set. About 40 s on 2 cores.

    python -m pytest tests/test_mini.py -q
"""
from __future__ import annotations

import os

import pytest
import torch

import tga_zsr
from engine.results import read_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = os.path.join(ROOT, "checkpoints", "tiny-world-clip.pt")
SHORT = ["-c", os.path.join(ROOT, "configs", "mini.yaml"), "--device", "cpu", "--epochs", "1",
         "--n_samples", "48", "--seed", "0"]  # 48 class-balanced images per test set

pytestmark = pytest.mark.skipif(not os.path.isfile(CKPT), reason=f"{CKPT} missing: run python pretrain_tiny.py")


def means(run_dir) -> tuple[float, float]:
    rows = read_results(run_dir)
    assert len(rows) == 6, [r["dataset"] for r in rows]
    return (sum(r["clean_acc"] for r in rows) / len(rows), sum(r["robust_acc"] for r in rows) / len(rows))


@pytest.fixture(scope="module")
def mini_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini")
    torch.set_num_threads(2)
    runs = {}
    for method in ("CLIP", "TeCoA", "TGA-ZSR"):
        argv = SHORT + ["--Method", method, "--output_dir", str(out), "--name", method]
        assert tga_zsr.main(argv) == 0
        runs[method] = means(out / method)
    return runs


def test_mini_learning_rates_are_the_paper_rates_times_100():
    """configs/mini.yaml sets --mini_lr: each method's configs/<name>.yaml rate × 100 (methods.py),
    rounded as a decimal (1e-5 × 100 is 1e-3 exactly, not 0.0010000000000000002)."""
    from engine.settings import mini_learning_rate, parse_args
    assert (mini_learning_rate("TeCoA"), mini_learning_rate("TGA-ZSR"), mini_learning_rate("PMG-AFT")) == \
        (1e-3, 1e-2, 5e-3)
    assert mini_learning_rate("tecoa_vpt") == 0.4                      # its own rate (prompt tokens)
    assert parse_args(SHORT + ["--Method", "TeCoA"]).learning_rate == 1e-3
    assert parse_args(SHORT + ["--Method", "TeCoA", "--learning_rate", "0.5"]).learning_rate == 0.5  # CLI wins


# Measured with exactly these runs (seed 0, 2 threads, 2026-12-03; 48 images a set since then, 96 before,
# which cost ~2 minutes more of the suite): CLIP clean 78.12 / robust 37.15; TeCoA 74.65 / 45.14 (+8.0
# robust); TGA-ZSR 68.75 / 50.35 (+13.2 robust). With 96 images: CLIP 81.25 / 36.46, TeCoA 75.35 / 47.57,
# TGA-ZSR 69.10 / 51.22. The bars keep a part of each measured effect as slack for other machines'
# floating point (the runs are seeded: the same images and starts everywhere).
ROBUST_GAIN = 5.0       # points of mean robust accuracy over the untuned model, each method
# TGA-ZSR trains at the paper's 10x larger learning rate than TeCoA (1e-4 vs 1e-5, both x100
# here) and pays for it in clean accuracy in this short run (-5.9 points; -2.2 after the full
# 2-epoch mini benchmark, docs/mini_world.md): the stated tolerance is 10 points.
CLEAN_TOLERANCE = 10.0


def test_adversarial_fine_tuning_makes_the_world_robust(mini_runs):
    clip_clean, clip_robust = mini_runs["CLIP"]
    for method in ("TeCoA", "TGA-ZSR"):
        clean, robust = mini_runs[method]
        assert robust >= clip_robust + ROBUST_GAIN, (method, robust, clip_robust)
        assert clean >= 50.0, (method, clean)  # still a zero-shot model (chance is ~18 % on average)


def test_tga_zsr_keeps_clean_accuracy(mini_runs):
    tecoa_clean, _ = mini_runs["TeCoA"]
    tga_clean, _ = mini_runs["TGA-ZSR"]
    assert tga_clean >= tecoa_clean - CLEAN_TOLERANCE, (tga_clean, tecoa_clean)
