"""The protocol audit (docs/audit.md): a reduced audit of the bundled tiny-world CLIP whose reference row is
exactly a plain --eval_only run and whose rerun evaluates nothing; the paired bootstrap; each sanity check
able to warn; restarts, per-image outcomes, template ensembles, resize/crop for in-memory sets; the
budget's image count; the plan's rows.

    python -m pytest -q tests/test_audit.py
"""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import attacks
import audit
import datasets
import tga_zsr
from engine import audit as engine_audit
from engine import evaluate
from engine.model import build_model
from engine.evaluate import attack_batch, class_features, evaluate_dataset, in_memory_transform, load_test_data
from engine.settings import Settings, parse_args
from reports import audit as report
from reports.tables import group_title
from engine.results import GROUP_KEYS
from tests.eval_fixtures import tiny_data

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
WORLD = ["--arch", "configs/models/tiny-world.json", "--pretrained", "checkpoints/tiny-world-clip.pt"]
# A reduced audit: 8 world_colour images (one per class), PGD-5 at 4/255 (the mini world's ε), every knob.
REDUCED = ["--testdata", "world_colour", "--n_samples", "8", "--test_numsteps", "5", "--test_eps", "4",
           "--device", "cpu", "--workers", "0"]


def test_reduced_audit_reference_equals_plain_eval_only_and_a_rerun_evaluates_nothing(tmp_path, monkeypatch):
    assert tga_zsr.main(["--eval_only", *WORLD, *REDUCED, "--precision", "fp32", "--output_dir", str(tmp_path),
                         "--name", "plain"]) == 0
    (plain,) = [json.loads(x) for x in (tmp_path / "plain" / "results.jsonl").read_text().splitlines()]
    out = tmp_path / "audit"
    assert audit.main([WORLD[3], WORLD[0], WORLD[1], *REDUCED, "--out", str(out)]) == 0
    rep = json.loads((out / "audit.json").read_text())
    ref = rep["rows"][0]
    (ref_row,) = ref["settings"]
    assert ref["key"] == "reference"
    for k in ("n", "clean_acc", "robust_acc", "attack_acc"):  # exactly, not approximately
        assert ref_row[k] == plain[k], k
    assert {k: ref_row[k] for k in GROUP_KEYS} == {k: plain[k] for k in GROUP_KEYS}
    keys = {r["key"] for r in rep["rows"]}
    assert {"steps=10", "steps=20", "steps=100", "attack=cw", "attack=apgd-ce", "attack=apgd-t", "attack=worst",
            "eps=1", "eps=2", "restarts=5", "templates=ensemble", "transform=crop"} <= keys
    assert "step_size: every value it takes here is the reference's, no row" in rep["notes"]  # ε/4 = 1/255 at ε 4
    assert ("precision=bf16" in keys) == (engine_audit.precision_supported("bf16", CPU) is None)
    deltas = [abs(r["delta"]) for r in rep["rows"][1:]]
    assert deltas == sorted(deltas, reverse=True), "rows by |Δ|"
    assert all(r["ci"][0] <= r["delta"] <= r["ci"][1] for r in rep["rows"])
    assert [c["status"] for c in rep["checks"]] != [] and all(c["status"] in ("ok", "warning") for c in rep["checks"])
    assert {r["key"] for r in rep["check_rows"]} == {"check=noise", "check=large_eps"}
    text = (out / "audit.md").read_text()
    assert "Δ robust [95 % CI]" in text and "Sanity checks" in text and "APGD-T" in text
    for suffix in ("png", "pdf"):
        assert (out / f"audit_delta.{suffix}").stat().st_size > 0
    assert Image.open(out / "audit_delta.png").mode in ("RGB", "RGBA"), "a true-colour PNG, not a palette"
    # resumable: a rerun reads every row back
    monkeypatch.setattr(evaluate, "evaluate_dataset", lambda *a, **k: pytest.fail("a done row was redone"))
    assert audit.main([WORLD[3], WORLD[0], WORLD[1], *REDUCED, "--out", str(out)]) == 0
    assert json.loads((out / "audit.json").read_text())["rows"] == rep["rows"]


def test_budget_scales_the_images_and_a_rerun_keeps_the_choice(tmp_path, monkeypatch):
    out = tmp_path / "b"
    argv = [WORLD[3], WORLD[0], WORLD[1], "--testdata", "world_colour", "--n_samples", "64", "--test_numsteps", "2",
            "--test_eps", "4", "--device", "cpu", "--knobs", "steps", "--budget", "0.02", "--out", str(out)]
    assert audit.main(argv) == 0
    chosen = json.loads((out / "budget.json").read_text())["n_samples"]
    # 1.2 s cannot hold 64 images × (2 + 10 + 20 + 100 steps + 4 forwards) at the ~1 ms per image and step of
    # this CPU (a machine 7× faster could); one image per class at least
    assert 8 <= chosen < 64
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {r["n_samples"] for r in rows} == {chosen}
    monkeypatch.setattr(evaluate, "evaluate_dataset", lambda *a, **k: pytest.fail("the rerun chose other images"))
    monkeypatch.setattr(engine_audit, "evaluate_dataset", lambda *a, **k: pytest.fail("the rerun timed again"))
    assert audit.main(argv) == 0


def test_images_for_budget_is_the_budget_over_the_cost_per_image():
    e = Settings.from_args(parse_args([*WORLD, "--testdata", "world_colour", "--test_numsteps", "10"])).eval
    rows, _ = engine_audit.plan(e, ["steps"], CPU, "fp32", {"world_colour": 8})
    per_image = sum(engine_audit.steps_per_image(r.eval, 8) for r in rows)
    assert per_image == (10 + 1) + (20 + 1) + (100 + 1)  # the reference (10) and the 20 and 100 rows, + a forward
    n = engine_audit.images_for_budget(100 * per_image * 1e-3, rows, {"world_colour": 480}, {"world_colour": 8},
                                       {"fp32": 1e-3}, 0, CPU, "fp32")
    assert n == 100
    assert engine_audit.images_for_budget(1.0, rows, {"world_colour": 480}, {"world_colour": 8}, {"fp32": 1e-3}, 0,
                                          CPU, "fp32") == 8, "never below one image per class"
    assert engine_audit.images_for_budget(1e9, rows, {"world_colour": 480}, {"world_colour": 8}, {"fp32": 1e-3}, 50,
                                          CPU, "fp32") == 50, "never above --n_samples"


def test_plan_changes_one_knob_at_a_time_and_leaves_out_what_cannot_run():
    e = Settings.from_args(parse_args([*WORLD, "--testdata", "world_colour", "world_size", "--precision", "fp32"])).eval
    rows, notes = engine_audit.plan(e, engine_audit.KNOBS, CPU, "fp32", {"world_colour": 8, "world_size": 3})
    by_key = {r.key: r for r in rows}
    assert "steps=100" not in by_key and "step_size=1" not in by_key and "eps=1" not in by_key, "the reference's"
    assert by_key["attack=apgd-t"].eval.testdata == ["world_colour"]
    assert any("APGD-T: left out on world_size" in n for n in notes)
    assert "precision=amp" not in by_key and any(n.startswith("precision amp: skipped") for n in notes)
    ref = by_key["reference"].eval
    for r in rows[1:]:
        changed = {f for f in ref.__dataclass_fields__ if getattr(r.eval, f) != getattr(ref, f)} - {"testdata"}
        if r.knob != "check" and r.key != "attack=apgd-ce" and r.key != "attack=apgd-t":
            assert len(changed) == 1, (r.key, changed)
    assert by_key["attack=apgd-ce"].eval.attack == "autoattack" and by_key["attack=apgd-ce"].eval.aa_version == "apgd-ce"
    # the large ε's steps can cross its ball; the noise row is the random start alone
    big = by_key["check=large_eps"].eval
    assert big.test_numsteps * big.test_stepsize >= engine_audit.LARGE_EPS
    assert (by_key["check=noise"].eval.test_numsteps, by_key["check=noise"].eval.test_stepsize) == (1, 0.0)


# --- the statistics ---------------------------------------------------------------------------------
def outcome(bits) -> str:
    return "".join("1" if b else "0" for b in bits)


def test_paired_bootstrap_delta_interval_and_spread():
    rng = np.random.default_rng(1)
    a = rng.random(400) < 0.6
    b = a.copy()
    b[rng.choice(400, 40, replace=False)] ^= True  # 40 images change sides
    d = report.paired_delta({"s": outcome(a)}, {"s": outcome(b)})
    assert d["delta"] == pytest.approx(100 * (b.mean() - a.mean()))
    assert d["ci"][0] < d["delta"] < d["ci"][1]
    same = report.paired_delta({"s": outcome(a)}, {"s": outcome(a)})
    assert same == {"delta": 0.0, "ci": [0.0, 0.0], "datasets": ["s"]}, "identical rows: no noise at all"
    # The multinomial resampling is a bootstrap of the per-image differences: its spread is that of the
    # mean of 400 draws, sd = 100·sqrt(var(diff) / n). A sample sd of B draws has a relative standard error of
    # about 1/sqrt(2(B − 1)); 4 of those is the tolerance.
    boots = report.bootstrap_deltas({"s": outcome(a)}, {"s": outcome(b)}, n_boot=20000)[1]
    diff = b.astype(int) - a.astype(int)
    expected = 100 * np.sqrt(diff.var() / diff.size)
    assert boots.std() == pytest.approx(expected, rel=4 / np.sqrt(2 * (20000 - 1)))
    assert boots.mean() == pytest.approx(d["delta"], abs=4 * expected / np.sqrt(20000))
    # two sets: the mean of the per-set differences; images not evaluated ("-") are left out
    two = report.paired_delta({"s": "1100", "t": "11-1"}, {"s": "1000", "t": "00-1"})
    assert two["delta"] == pytest.approx((-25.0 + 100 * (1 / 3 - 1)) / 2)
    with pytest.raises(ValueError, match="different image sets"):
        report.paired_delta({"s": "10"}, {"s": "101"})


def fake_entry(key, knob, robust, clean=None, attack=None, **settings):
    base = {"attack": "pgd", "steps": 10, "restarts": 1, "eps": 1.0, "attack_precision": "fp32"}
    clean = clean or "1" * len(robust)
    row = {"dataset": "s", "n": len(robust), "seconds": 1.0, "clean_acc": 100 * clean.count("1") / len(clean),
           "robust_acc": 100 * robust.count("1") / len(robust), **base, **settings,
           "per_sample": {"clean": clean, "robust": robust, "attack": {}}}
    return {"key": key, "knob": knob, "value": key, "attack": attack, "results": [row]}


def statuses(entries) -> dict:
    return {c["check"]: c["status"] for c in report.build_report(entries, n_boot=500)["checks"]}


def test_every_sanity_check_can_warn():
    half = "1" * 50 + "0" * 50
    fine = [fake_entry("reference", "reference", half, attack="PGD-CE"),
            fake_entry("steps=100", "steps", "1" * 40 + "0" * 60, steps=100),
            fake_entry("restarts=5", "restarts", "1" * 45 + "0" * 55, restarts=5),
            fake_entry("precision=bf16", "precision", half, attack_precision="bf16"),
            fake_entry("attack=cw", "attack", "1" * 60 + "0" * 40, attack="CW"),
            fake_entry("eps=4", "eps", "1" * 20 + "0" * 80, eps=4.0),
            fake_entry("check=large_eps", "check", "0" * 100, eps=16.0),
            fake_entry("check=noise", "check", "1" * 90 + "0" * 10)]
    assert set(statuses(fine).values()) == {"ok"}
    bad = {  # each entry replaced by one that breaks its check beyond the noise of 100 images
        "more steps do not raise robust accuracy": fake_entry("steps=100", "steps", "1" * 90 + "0" * 10, steps=100),
        "more restarts do not raise robust accuracy": fake_entry("restarts=5", "restarts", "1" * 90 + "0" * 10,
                                                                 restarts=5),
        "a low-precision attack finds no more robustness than fp32":
            fake_entry("precision=bf16", "precision", "1" * 90 + "0" * 10, attack_precision="bf16"),
        "robust accuracy falls with ε": fake_entry("eps=4", "eps", "1" * 90 + "0" * 10, eps=4.0),
        "robust accuracy reaches ~0 at ε = 16/255": fake_entry("check=large_eps", "check", "1" * 20 + "0" * 80,
                                                               eps=16.0),
        "random noise is not stronger than the white-box attack": fake_entry("check=noise", "check", "0" * 100),
    }
    for check, entry in bad.items():
        entries = [entry if e["key"] == entry["key"] else e for e in fine]
        got = statuses(entries)
        assert got[check] == "warning", (check, got)
    # the worst case is derived per image, so it can only be above an attack if the per-image data are wrong
    by_key = {"reference": {"key": "reference", "knob": "reference", "value": "ref", "robust": 50.0,
                            "settings": [{"attack": "pgd", "steps": 10, "restarts": 1, "eps": 1.0,
                                          "attack_precision": "fp32"}]},
              "attack=worst": {"key": "attack=worst", "knob": "attack", "value": "worst", "robust": 60.0,
                               "settings": [{"worst_of": ["reference"], "attacks": ["PGD-CE"]}]}}
    checks = report.sanity_checks(by_key, {"reference": {"s": half}, "attack=worst": {"s": "1" * 60 + "0" * 40}}, 200)
    assert {c["check"]: c["status"] for c in checks}["the worst case is not above any single attack"] == "warning"


def test_worst_case_is_the_images_robust_to_every_attack():
    entries = [fake_entry("a", "attack", "1101"), fake_entry("b", "attack", "1-11")]
    assert report.worst_case(entries) == {"s": "1-01"}


# --- the evaluator's new options -----------------------------------------------------------------------
def test_restarts_per_image_outcomes_and_the_comma_list_worst_case(tiny_model):
    data = tiny_data(8, 4, seed=5)
    text = tiny_model.encode_text(data.prompts).detach()
    s = {"attack": "pgd", "norm": "l_inf", "eps": 4.0, "steps": 2, "step_size": 1.0, "seed": 0}

    def run(**kw):
        return evaluate_dataset(tiny_model, data, text, {**s, **kw}, CPU, "fp32", batch_size=3, show_progress=False,
                                per_sample=True)

    one, plain, three = run(restarts=1), run(), run(restarts=3)
    assert one["per_sample"] == plain["per_sample"], "restart 0 is the plain evaluation's start"
    r1, r3 = one["per_sample"]["robust"], three["per_sample"]["robust"]
    assert all(b == "0" or a == "1" for a, b in zip(r1, r3)), "robust to 3 restarts implies robust to the first"
    for res in (one, three):
        ps = res["per_sample"]
        assert 100 * ps["robust"].count("1") / 8 == res["robust_acc"]
        assert 100 * ps["clean"].count("1") / 8 == res["clean_acc"]
    x = torch.stack([data.dataset[i][0] for i in range(8)])
    y = torch.tensor(data.dataset.targets)
    starts = [attack_batch(tiny_model, x, y, torch.arange(8), text, {**s, "steps": 1, "step_size": 0.0}, restart=r)
              for r in (0, 1)]
    assert not torch.equal(starts[0], starts[1]), "each restart has its own random start"
    both = run(attack="pgd,cw")
    alone = {a: run(attack=a)["per_sample"]["robust"] for a in ("pgd", "cw")}
    assert both["per_sample"]["attack"] == alone
    assert both["per_sample"]["robust"] == report.worst_case(
        [{"results": [{"dataset": "s", "per_sample": {"robust": alone[a]}}]} for a in alone])["s"]


def test_template_ensemble_prompts_and_features():
    world = datasets.get_dataset("world_heldout")
    per_class = datasets.ensemble_prompts(world)
    assert per_class[0] == [f"{p} a {world.classnames[0]}." for p in datasets.world.PREFIXES]
    tiny = tiny_data(4, 4)
    assert len(datasets.ensemble_prompts(tiny)[0]) == 80  # CLIP's ImageNet templates
    pcam = datasets.ZeroShotData("PCAM", tiny.dataset, ["a", "b"], ["healthy.", "tumor."])
    assert datasets.ensemble_prompts(pcam) == [["healthy."], ["tumor."]]
    model = build_model(Settings.from_args(parse_args(WORLD)).model, CPU).eval()
    single, ensemble = class_features(model, world, "single"), class_features(model, world, "ensemble")
    assert torch.allclose(ensemble.norm(dim=1), torch.ones(len(world.classnames)), atol=1e-6)  # fp32 rounding
    assert not torch.allclose(single, ensemble, atol=1e-4), "the ensemble is another text feature"


def test_resize_and_crop_for_in_memory_sets():
    world = datasets.get_dataset("world_shape")
    x = world.dataset[0][0]
    assert torch.equal(in_memory_transform("resize", 32)(x), x), "resizing 32 to 32 changes nothing"
    cropped = in_memory_transform("crop", 32)(x)
    assert cropped.shape == x.shape and not torch.equal(cropped, x)
    assert in_memory_transform("tga_zsr", 32) is None
    e = Settings.from_args(parse_args([*WORLD, "--testdata", "world_shape", "--n_samples", "16"])).eval
    data = load_test_data(e, "world_shape", "crop", 32)
    assert len(data) == 16 and torch.equal(data.dataset[0][0], in_memory_transform("crop", 32)(
        world.dataset[data.dataset.indices[0]][0]))


def test_apgd_t_on_too_few_classes_refuses_instead_of_reporting_clean_accuracy(tiny_model):
    data = tiny_data(3, 3)
    text = tiny_model.encode_text(data.prompts).detach()
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="no attack of it runs on 3 classes"):
        attacks.autoattack_batch(tiny_model, x, y, text, 4 / 255, {"aa_version": "apgd-t", "seed": 0})


def test_new_settings_are_recorded_and_titled():
    e = Settings.from_args(parse_args(["--restarts", "5", "--templates", "ensemble", "--transform", "crop"])).eval
    s = e.setting(1.0, "c", "fp32")
    assert (s["restarts"], s["templates"], s["transform"]) == (5, "ensemble", "crop")
    title = group_title(tuple(s[k] for k in GROUP_KEYS), ["fp32"])
    assert "5 restarts" in title and "template ensemble" in title and "crop images" in title
    auto = replace(e, attack="autoattack").setting(1.0, "c", "fp32")
    assert auto["restarts"] is None, "APGD's restarts are the library's"
    with pytest.raises(SystemExit):
        audit.knob_list("steps,nope")
