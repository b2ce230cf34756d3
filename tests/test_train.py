"""The training loop: LR schedule, checkpoints, exact resume, run-folder safety, loud failures."""
import json
import math

import pytest
import torch
import yaml

import tga_zsr
from engine.checkpoint import load_file
from engine.weights import load_visual_weights
from engine.model import load_clip
from engine.train import lr_at

SMOKE = ["-c", "configs/synthetic.yaml", "--device", "cpu", "--no_eval", "--print_freq", "1"]


def test_lr_schedule_values():
    base, warmup, total = 1e-4, 10, 110
    # float64 arithmetic on both sides: equal to ~1e-16 relative; approx (1e-6) only absorbs the order of
    # operations. An off-by-one step or a missing warmup moves a value by ≥ 1 % of base.
    assert lr_at(0, base, warmup, total) == pytest.approx(base / 10)
    assert lr_at(4, base, warmup, total) == pytest.approx(base / 2)
    assert lr_at(9, base, warmup, total) == pytest.approx(base)          # end of warmup: peak
    assert lr_at(10, base, warmup, total) == pytest.approx(base)         # cosine starts at the peak
    assert lr_at(60, base, warmup, total) == pytest.approx(base / 2)     # half way down
    assert lr_at(109, base, warmup, total) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)) * base)


def _weights(run_dir):
    return load_file(run_dir / "last.pt")["vision_encoder_state_dict"]


def test_resume_continues_exactly(tmp_path):
    full = tmp_path / "full"
    assert tga_zsr.main(SMOKE + ["--output_dir", str(tmp_path), "--name", "full"]) == 0
    # interrupted after 3 steps (the schedule is unchanged by --max_steps), then resumed
    assert tga_zsr.main(SMOKE + ["--output_dir", str(tmp_path), "--name", "cut", "--max_steps", "3",
                                 "--save_freq", "0"]) == 0
    cut = tmp_path / "cut"
    ck = load_file(cut / "last.pt")
    assert ck["step"] == 3 and not ck["meta"]["finished"]
    assert tga_zsr.main(["--resume", str(cut), "--device", "cpu", "--no_eval"]) == 0
    a, b = _weights(full), _weights(cut)
    assert load_file(cut / "last.pt")["step"] == load_file(full / "last.pt")["step"] == 8
    assert all(torch.equal(a[k], b[k]) for k in a)
    hist = [json.loads(line) for line in (cut / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == list(range(1, 9))


def test_finished_run_is_not_overwritten(tmp_path):
    args = SMOKE + ["--output_dir", str(tmp_path), "--name", "r", "--max_steps", "1"]
    assert tga_zsr.main(args) == 0
    with pytest.raises(SystemExit, match="--resume"):
        tga_zsr.main(args)


def test_run_folder_records_settings(tmp_path):
    assert tga_zsr.main(SMOKE + ["--output_dir", str(tmp_path), "--name", "r", "--max_steps", "1"]) == 0
    run = tmp_path / "r"
    saved = yaml.safe_load((run / "args.yaml").read_text())
    assert saved["Alpha"] == 0.08 and saved["arch"] == "tiny-vit" and saved["seed"] == 0
    env = json.loads((run / "environment.json").read_text())
    assert "torch" in env and "git" in env
    ck = load_file(run / "last.pt")
    assert {"optimizer", "scaler", "step", "epoch", "rng", "args"} <= set(ck)


def test_checkpoint_loads_strictly_into_fresh_model(tmp_path):
    assert tga_zsr.main(SMOKE + ["--output_dir", str(tmp_path), "--name", "r", "--max_steps", "2"]) == 0
    model = load_clip("tiny-vit", None)
    load_visual_weights(model, tmp_path / "r" / "last.pt")
    sd = _weights(tmp_path / "r")
    assert all(torch.equal(model.visual.state_dict()[k], v) for k, v in sd.items())


def test_cli_overrides_config_and_method_config(tmp_path):
    from engine.settings import parse_args
    a = parse_args(["--Method", "TeCoA"])
    assert a.learning_rate == 1e-5 and a.Alpha == 0.0           # configs/tecoa.yaml
    b = parse_args(["--Method", "TeCoA", "--learning_rate", "0.3"])
    assert b.learning_rate == 0.3                                  # CLI wins
    c = parse_args(["-c", "configs/synthetic.yaml", "--Alpha", "0.5"])
    assert c.arch == "tiny-vit" and c.Alpha == 0.5


def test_non_finite_loss_stops_loudly(tmp_path, capsys):
    code = tga_zsr.main(SMOKE + ["--output_dir", str(tmp_path), "--name", "nan", "--learning_rate", "1e30",
                                 "--warmup", "1"])
    assert code == 2
    assert "non-finite loss" in capsys.readouterr().out


def test_missing_dataset_fails_before_training(tmp_path):
    with pytest.raises(SystemExit, match="dataset"):
        tga_zsr.main(SMOKE + ["--output_dir", str(tmp_path), "--name", "x", "--dataset", "no_such_set"])
    assert not (tmp_path / "x" / "last.pt").exists()
