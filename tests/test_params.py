"""params.py: the command line — layered defaults, each method's own flags, legacy keys, --mini_lr.

    python -m pytest -q tests/test_params.py
"""
import pytest
import yaml

from methods import available_methods, get_method
from engine.settings import get_args_parser, parse_args


def test_precedence_parser_method_config_user_config_cli(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"Beta": 0.5, "batch_size": 8}))
    a = parse_args(["--Method", "Comp-TGA"])
    assert (a.Alpha, a.Beta, a.batch_size) == (0.10, 0.07, 128)          # configs/comp_tga.yaml over the parser
    a = parse_args(["--Method", "Comp-TGA", "-c", str(cfg)])
    assert (a.Alpha, a.Beta, a.batch_size) == (0.10, 0.5, 8)             # -c over the method's file
    a = parse_args(["--Method", "Comp-TGA", "-c", str(cfg), "--Beta", "0.2"])
    assert a.Beta == 0.2                                                 # the command line wins


def test_every_method_flag_is_in_the_parser_once():
    parser = get_args_parser()
    dests = [a.dest for a in parser._actions]
    assert len(dests) == len(set(dests))
    for name in available_methods():
        for names, kwargs in get_method(name).flags:
            assert kwargs.get("dest", names[0].lstrip("-")) in dests
    assert any(g.title.startswith("TGA-ZSR (--Method tga_zsr)") for g in parser._action_groups)


def test_method_is_none_unless_given_and_the_default_methods_config_still_applies():
    a = parse_args([])
    assert a.Method is None and (a.Alpha, a.Beta) == (0.08, 0.05)        # TGA-ZSR's file, no name claimed
    assert parse_args(["--Method", "FARE"]).Method == "FARE"


def test_original_and_new_spellings_of_renamed_flags(tmp_path):
    a = parse_args(["--method", "padding", "--VPbaseline"])
    b = parse_args(["--pixel_prompt", "padding", "--train_on_clean"])
    assert (a.pixel_prompt, a.train_on_clean) == (b.pixel_prompt, b.train_on_clean) == ("padding", True)
    old = tmp_path / "old.yaml"                                          # an args.yaml of an older run
    old.write_text(yaml.safe_dump({"method": "fixed_patch", "VPbaseline": True}))
    a = parse_args(["-c", str(old)])
    assert (a.pixel_prompt, a.train_on_clean) == ("fixed_patch", True)


def test_unknown_config_key_and_unknown_method_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 0.1\n")
    with pytest.raises(SystemExit, match="unknown keys in config .*bad.yaml: \\[.learning_rat.\\]"):
        parse_args(["-c", str(bad)])
    with pytest.raises(SystemExit, match="Did you mean tecoa"):
        parse_args(["--Method", "TeCoAA"])
