"""engine/run_folder.py: the default run name carries each method's own settings; the header is written first.

    python -m pytest -q tests/test_run_folder.py
"""
import json

import yaml

from engine.run_folder import run_name, write_run_header
from engine.settings import Settings, parse_args


def name_of(*argv):
    return run_name(Settings.from_args(parse_args(list(argv))))


def test_run_names_are_those_of_earlier_versions():
    """Folders of runs made before the redesign keep their names (a --resume finds them)."""
    assert name_of("--Method", "TGA-ZSR", "--arch", "vit_b32") == \
        "tga_zsr_vit-b32_lr0.0001_bs128_ep10_eps1_a0.08_b0.05_l2_seed0"
    assert name_of("--Method", "TGA-ZSR", "--atten_methods", "visual", "--differentiable_cam") == \
        "tga_zsr_visual_vit-b32_lr0.0001_bs128_ep10_eps1_a0.08_b0.05_l2_dcam_seed0"
    assert name_of("--Method", "TeCoA") == "tecoa_vit-b32_lr1e-05_bs128_ep10_eps1_seed0"
    assert name_of("--Method", "tecoa_vpt", "--pixel_prompt", "null_patch").endswith(
        "_vpt-null_patch-p30-t100_seed0")


def test_a_methods_own_setting_names_its_folder():
    assert name_of("--Method", "TGA-ZSR", "--Beta", "0.009") != name_of("--Method", "TGA-ZSR")
    assert "_m0.05_" in name_of("--Method", "TIMA", "--tima_margin", "0.05")


def test_header_records_the_resolved_flags_and_the_environment(tmp_path):
    args = parse_args(["-c", "configs/synthetic.yaml", "--Method", "FARE"])
    write_run_header(tmp_path / "run", vars(args))
    saved = yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())
    assert saved["Method"] == "FARE" and saved["optimizer"] == "adamw" and saved["arch"] == "tiny-vit"
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert {"torch", "open_clip", "git", "argv"} <= set(env)
