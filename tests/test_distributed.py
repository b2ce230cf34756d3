"""torchrun + DDP (distributed.py) against one process: same weights, same accuracies, one writer.

One `torchrun --standalone --nproc_per_node 2` launch (CPU, gloo, tiny model) runs every
distributed case through tests/ddp_worker.py; the single-process references run in this
process. The DDP-vs-one-process comparisons train with `--train_eps 0`: with an attack, each
rank's PGD random starts come from its own RNG stream and cannot equal the single process's
draws for the same images, so the weights would differ for a reason unrelated to DDP. The two
tower forwards of TGA-ZSR (adversarial and clean images) still run before one backward. The
attack itself is exercised under DDP in the resume case (eps 4/255), which must be exact.

    python -m pytest -q tests/test_distributed.py
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tga_zsr
from engine.checkpoint import load_file
from engine.model import load_clip
from engine.device import seed_everything
from methods import available_methods

ROOT = Path(__file__).resolve().parents[1]
BASE = ["-c", "configs/synthetic.yaml", "--device", "cpu", "--print_freq", "1", "--max_steps", "2",
        "--learning_rate", "1e-3"]  # large enough for 2 steps to move the weights well past TOL
EXACT = ["--train_eps", "0"]     # no random start: DDP and one process see the same images
EVAL = ["--n_samples", "23", "--testdata", "synthetic_colors", "--test_numsteps", "3"]  # odd: shards 12 + 11
# Weights of DDP / accumulation vs one process. The gradients are the same sums in another order
# (half batches, gloo's all-reduce), so the weights differ by a few roundings of the weights
# themselves: |θ| ≤ 1 in the tiny tower, one ulp 1.2e-7, measured 2.7e-7 (2 ulps) after 2 steps.
# 1e-5 is ~80 ulps. A real bug moves them by a step: 2 steps at lr 1e-3 move the weights by up to
# 2.2e-3, and a dropped micro-batch weight (gradient ×2) by as much (measured 2.2e-3) = 200 × TOL.
TOL = 1e-5
# Logged losses (relative). ce and loss are fp32 sums over 16 samples of O(1) terms in another
# order: ~16 ulps = 2e-6 at most (measured 1e-7). ar and amc at step 2 are distances between the
# maps of θ₁ and θ₀, i.e. they measure the first update θ₁ − θ₀ (≤ 2.2e-3): the 2.7e-7 by which θ₁
# may differ is 1.2e-4 of it (measured 1.3e-5 on ar). A real bug is far larger: logging rank 0's
# values instead of the mean over ranks moves ce by 1.7e-2 and ar by 6e-2 (measured); summing the
# ranks or dropping a micro-batch weight doubles them.
# loss = ce + 0.13·ar: its error ≤ 1e-5 + 0.13·1e-3·0.17/2.3 = 2e-5 relative.
LOG_REL = {"loss": 1e-4, "ce": 1e-5, "ar": 1e-3, "amc": 1e-3}


# Methods whose loss couples the samples of a batch (PMG-AFT's KL sums, FT's in-batch contrastive
# loss, the Vision-based row's Grad-CAM targets among the batch's labels, trained with
# --differentiable_cam so that the maps carry gradient): split over 2 ranks, 2 micro-batches or
# both, each must give the weights of one process on the whole batch (methods.BatchSplit).
# TGA_ZSR_SPLIT_METHODS=all runs every method of the registry the same way (a few minutes more).
SPLIT_METHODS = {"ft_clean": [], "ft_adv": [], "pmg_aft": [], "tga_zsr_visual": ["--differentiable_cam"]}
if os.environ.get("TGA_ZSR_SPLIT_METHODS") == "all":
    SPLIT_METHODS = {m: SPLIT_METHODS.get(m, []) for m in available_methods() if m != "clip"}
SPLITS = {"ranks": [], "ranks_accum": ["--accum_steps", "2"]}
# SGD for every method (FARE's AdamW would turn a rounding difference in a ~0 gradient into a full step),
# at 1e-1: FT's contrastive gradient is small (2 steps at 1e-3 moved the weights by 7e-5, too little to
# tell a wrong objective from rounding); TOL's reasoning holds at this rate: the weights stay O(1), and a
# gradient's float32 rounding (~1e-6 of it, |g| < 1) times 1e-1 is ~1e-7.
# PMG-AFT's temperature-1 CE has ~100× smaller gradients (cosines, not ×100 logits): 10 moves it as much
# (its gradient is ~1e-3, so its rounding times 10 is ~1e-8).
METHOD_LR = {"pmg_aft": "10"}


def _method_argv(method: str, out: Path, name: str, *extra: str) -> list:
    return BASE + EXACT + ["--Method", method, *SPLIT_METHODS[method], "--optimizer", "sgd", "--learning_rate",
                           METHOD_LR.get(method, "1e-1"), "--no_eval", "--output_dir", str(out), "--name", name, *extra]


def _cases(runs: Path) -> dict:
    out = ["--output_dir", str(runs)]
    cases = {
        "plain": BASE + EXACT + EVAL + out + ["--name", "plain"],
        "accum": BASE + EXACT + out + ["--name", "accum", "--accum_steps", "2", "--no_eval"],
        "attack": BASE + out + ["--name", "attack", "--no_eval", "--save_freq", "0"],
        "cut": BASE + out + ["--name", "cut", "--no_eval", "--save_freq", "0", "--max_steps", "1"],
        "resume": ["--resume", str(runs / "cut"), "--device", "cpu", "--no_eval", "--max_steps", "2"],
    }
    for m in SPLIT_METHODS:
        for split, extra in SPLITS.items():
            cases[f"{m}_{split}"] = _method_argv(m, runs.parent / "methods", f"{m}_{split}", *extra)
    return cases


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here, as in each worker: on a shared 2-core CPU more threads only spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    runs, records = tmp / "runs", tmp / "records"
    records.mkdir()
    (tmp / "cases.json").write_text(json.dumps(_cases(runs)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "ddp_worker.py"), str(tmp / "cases.json"), str(records)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    recs = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"runs": runs, "records": recs, "stdout": proc.stdout}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, global batch 16 in one piece: the reference for DDP and accumulation."""
    out = tmp_path_factory.mktemp("single")
    assert tga_zsr.main(BASE + EXACT + ["--output_dir", str(out), "--name", "plain", "--no_eval"]) == 0
    return out / "plain"


def _weights(run: Path) -> dict:
    return load_file(run / "last.pt")["vision_encoder_state_dict"]


def _trained(run: Path) -> dict:
    """Every tensor a run trains: the tower, the visual prompts (TeCoA w/ prompting), the extra tensors
    (TIMA's text tower)."""
    ckpt = load_file(run / "last.pt")
    out = {f"visual.{k}": v for k, v in ckpt["vision_encoder_state_dict"].items()}
    out.update({f"prompter.{k}": v for k, v in (ckpt.get("prompter_state_dict") or {}).items()})
    out.update({f"extra.{k}": v for k, v in (ckpt.get("extra_trainable_state") or {}).items()})
    return out


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_two_ranks_equal_one_process_with_the_global_batch(ddp, single):
    seed_everything(0)
    init = {k: v for k, v in load_clip("tiny-vit", None).visual.state_dict().items()}
    assert _max_diff(_weights(single), init) > 100 * TOL   # the steps moved the weights: the check has teeth
    assert _max_diff(_weights(ddp["runs"] / "plain"), _weights(single)) < TOL
    # the logged losses are the mean over ranks, i.e. the single process's batch means
    for h_ddp, h_one in zip(_history(ddp["runs"] / "plain"), _history(single), strict=True):
        assert h_ddp["step"] == h_one["step"] and h_ddp["lr"] == h_one["lr"]
        for k, rel in LOG_REL.items():
            # abs=1e-7: step 1's ar / amc are exactly 0 in both (θ = θ₀); no relative scale there
            assert h_ddp[k] == pytest.approx(h_one[k], rel=rel, abs=1e-7), k


def test_accumulation_equals_the_large_batch(ddp, single, tmp_path):
    assert tga_zsr.main(BASE + EXACT + ["--output_dir", str(tmp_path), "--name", "acc", "--accum_steps", "2",
                                        "--no_eval"]) == 0
    assert _max_diff(_weights(tmp_path / "acc"), _weights(single)) < TOL              # 1 process, 2 x 8
    assert _max_diff(_weights(ddp["runs"] / "accum"), _weights(single)) < TOL       # 2 ranks x 2 x 4
    # one optimiser step and one LR value per global batch
    assert [h["step"] for h in _history(ddp["runs"] / "accum")] == [1, 2]
    assert [h["lr"] for h in _history(ddp["runs"] / "accum")] == [h["lr"] for h in _history(single)]
    assert load_file(ddp["runs"] / "accum" / "last.pt")["step"] == 2


def test_batch_must_split_over_ranks_and_micro_batches(tmp_path):
    with pytest.raises(SystemExit, match="multiple of 3"):
        tga_zsr.main(BASE + ["--output_dir", str(tmp_path), "--name", "x", "--accum_steps", "3", "--no_eval"])


def test_sharded_evaluation_equals_one_process(ddp, tmp_path):
    row = json.loads((ddp["runs"] / "plain" / "results.jsonl").read_text())
    assert row["n"] == 23
    # the same weights, evaluated by one process (a copied checkpoint: a fresh run folder)
    shutil.copy(ddp["runs"] / "plain" / "last.pt", tmp_path / "weights.pt")
    assert tga_zsr.main(["-c", "configs/synthetic.yaml", "--device", "cpu", "--eval_only", "--resume",
                         str(tmp_path / "weights.pt"), "--output_dir", str(tmp_path), "--name", "ref"] + EVAL) == 0
    ref = json.loads((tmp_path / "ref" / "results.jsonl").read_text())
    assert (row["n"], row["clean_acc"], row["robust_acc"]) == (ref["n"], ref["clean_acc"], ref["robust_acc"])


def test_only_rank_zero_writes(ddp):
    runs = ddp["runs"]
    assert sorted(p.name for p in runs.iterdir()) == ["accum", "attack", "cut", "plain"]
    run = runs / "plain"
    assert sorted(p.name for p in run.iterdir()) == ["args.yaml", "environment.json", "history.jsonl", "last.pt",
                                                     "log.txt", "loss_curve.pdf", "loss_curve.png", "model_card.json",
                                                     "results.jsonl"]
    assert len(_history(run)) == 2                                        # not one row per rank
    assert len((run / "results.jsonl").read_text().splitlines()) == 1
    log = (run / "log.txt").read_text()
    assert log.count("training tga_zsr") == 1 and "[rank 1/2]" not in log and "[rank 0/2]" in log


def test_attack_bypasses_ddp_and_resume_is_exact(ddp):
    for rec in ddp["records"]:
        assert all(r["code"] == 0 for r in rec.values())
        # TGA-ZSR: one trainable forward on [x_adv; x] per micro-batch goes through DDP (2 steps);
        # the PGD steps (2 per micro-batch) and the evaluation do not
        assert rec["attack"]["ddp_forwards"] == 2
        assert rec["accum"]["ddp_forwards"] == 2 * 2
        assert rec["plain"]["ddp_forwards"] == 2
        assert all(r["ddp_forwards_without_grad"] == 0 for r in rec.values())
    # stopped after 1 step and resumed by both ranks from rank 0's checkpoint (every rank's
    # RNG in it): the same weights as the uninterrupted 2-step run, attack included
    a, b = _weights(ddp["runs"] / "attack"), _weights(ddp["runs"] / "cut")
    assert load_file(ddp["runs"] / "cut" / "last.pt")["step"] == 2
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(load_file(ddp["runs"] / "cut" / "last.pt")["rng_per_rank"]) == 2


@pytest.fixture(scope="module")
def single_methods(tmp_path_factory):
    """Each split method in one process: the whole batch of 16, and 2 micro-batches of 8."""
    out = tmp_path_factory.mktemp("single_methods")
    for m in SPLIT_METHODS:
        assert tga_zsr.main(_method_argv(m, out, f"{m}_whole")) == 0
        assert tga_zsr.main(_method_argv(m, out, f"{m}_accum", "--accum_steps", "2")) == 0
    return out


@pytest.mark.parametrize("method", list(SPLIT_METHODS))
def test_every_split_of_the_global_batch_gives_the_same_weights(ddp, single_methods, method):
    """One process on the whole batch of 16 against: 1 process x 2 micro-batches, 2 ranks x 8, and
    2 ranks x 2 micro-batches x 4. TOL's reasoning (top of the file) holds: the same sums in another
    order (measured: FT 6e-8, Vision-based 1.4e-7, PMG-AFT 1.7e-6 at its rate of 10). Computed piece by
    piece, as before, the splits differed by 1.4e-3 (FT: a piece's negatives), 3.2e-2 (PMG-AFT: the KL
    weight halved) and 0.15 (Vision-based: Grad-CAM forwards that bypassed DDP, targets among a piece's
    labels) after 2 steps."""
    whole = _trained(single_methods / f"{method}_whole")
    seed_everything(0)
    init = load_clip("tiny-vit", None).visual.state_dict()
    # FARE with --train_eps 0: x_adv = x, its loss and gradient are 0 at θ₀; TeCoA w/ prompting trains
    # its prompts, not the tower (they are compared below all the same)
    if method not in ("fare", "tecoa_vpt"):
        moved = max(float((whole[f"visual.{k}"] - v).abs().max()) for k, v in init.items())
        assert moved > 100 * TOL        # the steps moved the weights: the check has teeth
    runs = ddp["runs"].parent / "methods"
    for name, run in ((f"{method}_accum", single_methods / f"{method}_accum"),
                      *((f"{method}_{split}", runs / f"{method}_{split}") for split in SPLITS)):
        assert _max_diff(_trained(run), whole) < TOL, name
        h_split, h_whole = _history(run), _history(single_methods / f"{method}_whole")
        assert h_split[-1]["loss"] == pytest.approx(h_whole[-1]["loss"], rel=1e-4), name   # LOG_REL["loss"]
    for rec in ddp["records"]:   # every rank's trainable forwards went through DDP (2 steps, at least 1 each)
        assert rec[f"{method}_ranks"]["ddp_forwards"] >= 2
