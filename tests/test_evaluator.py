"""The evaluator of SPEC §10: worst case over attacks, AutoAttack versions, attack precision and its
gap, protocols, RobustVLM's native resolution, old results still done, model cards, leaderboard,
export loaded by plain open_clip, saved adversarial examples.

    python -m pytest -q tests/test_evaluator.py
"""
import copy
import json

import open_clip
import pytest
import torch
import yaml

import datasets
from engine import evaluate
from engine import results
from reports import tables
import report
import tga_zsr
from attacks import attacks_for, no_param_grad
from engine.checkpoint import trainable_state
from engine.weights import save_clip
from engine.model import MODEL_CONFIG_DIR, load_clip
from engine.evaluate import attack_batch, eval_transform, evaluate_dataset
from reports.model_card import at_chance, leaderboard
from engine.settings import parse_args
from engine.settings import protocol_label
from tests.dataset_fixtures import write_cifar10
from tests.eval_fixtures import register_tiny_sets, tiny_data

CPU = torch.device("cpu")
WORLD = ["--arch", "configs/models/tiny-world.json", "--pretrained", "checkpoints/tiny-world-clip.pt"]


def settings(**kw):
    base = {"attack": "pgd", "norm": "l_inf", "eps": 4.0, "steps": 2, "step_size": 1.0, "precision": "fp32",
            "n_samples": 0, "seed": 0, "checkpoint": "test"}
    return {**base, **kw}


def test_worst_case_is_the_samples_that_survive_every_attack(tiny_model):
    data = tiny_data(8, 4, seed=5)
    text = tiny_model.encode_text(data.prompts).detach()
    s = settings(attack="pgd,cw")
    both = evaluate_dataset(tiny_model, data, text, s, CPU, "fp32", batch_size=8, show_progress=False)
    alone = {a: evaluate_dataset(tiny_model, data, text, settings(attack=a), CPU, "fp32", batch_size=8,
                                 show_progress=False)["robust_acc"] for a in ("pgd", "cw")}
    assert both["attack_acc"] == alone, "each attack's own accuracy is what it gives alone"
    assert both["robust_acc"] <= min(alone.values())
    x = torch.stack([data.dataset[i][0] for i in range(8)])
    y = torch.tensor(data.dataset.targets)
    with no_param_grad(tiny_model):
        adv = [attack_batch(tiny_model, x, y, torch.arange(8), text, s, a) for a in ("pgd", "cw")]
    with torch.no_grad():
        ok = [tiny_model.logits(xa, text).argmax(1) == y for xa in adv]
    assert both["robust_acc"] == 100 * (ok[0] & ok[1]).sum().item() / 8


def test_autoattack_versions_and_target_classes_capped_by_the_classes():
    assert attacks_for(10, "standard") == (["apgd-ce", "apgd-t", "fab-t", "square"], [])
    kept, notes = attacks_for(5, "standard")
    assert kept == ["apgd-ce", "apgd-t", "fab-t", "square"] and "use 4 target classes" in notes[0]
    kept, notes = attacks_for(3, "standard")
    assert kept == ["apgd-ce", "fab-t", "square"] and "APGD-T left out" in notes[0] and "use 2 target" in notes[1]
    assert attacks_for(2, "aa-papers")[0] == ["apgd-ce"] and attacks_for(4, "aa-papers")[0] == ["apgd-ce", "apgd-dlr"]
    assert attacks_for(37, "apgd-ce-t") == (["apgd-ce", "apgd-t"], [])


def test_autoattack_standard_is_at_least_as_strong_as_pgd10_on_the_world_model(monkeypatch):
    """The bundled world model, 16 world_colour images at 4/255: AutoAttack standard (all four of its
    attacks, run through the product path) leaves no more images correct than PGD-10. For speed the
    spy shortens every attack (APGD 10 iterations, 1 target class, FAB 3 iterations, Square 10
    queries): measured 62.5 % vs PGD-10's 68.75 %, the full budgets are only stronger."""
    import pyautoattack
    ran = []

    class Short(pyautoattack.AutoAttack):
        def run_standard_evaluation(self, *a, **kw):
            ran.append((list(self.attacks_to_run), self.apgd_targeted.n_target_classes, self.fab.n_target_classes))
            for atk in (self.apgd, self.apgd_targeted):
                atk.n_iter, atk.n_iter_2, atk.n_iter_min, atk.size_decr = 10, 2, 1, 1
            self.apgd_targeted.n_target_classes = self.fab.n_target_classes = 1
            self.fab.n_iter, self.square.n_queries = 3, 10
            return super().run_standard_evaluation(*a, **kw)

    monkeypatch.setattr(pyautoattack, "AutoAttack", Short)
    model = load_clip(WORLD[1], WORLD[3]).eval()
    data = datasets.class_balanced_subset(datasets.get_dataset("world_colour", "", "test"), 16, 0)
    text = model.encode_text(data.prompts).detach()
    s = settings(attack="pgd,autoattack", steps=10, aa_version="standard")
    r = evaluate_dataset(model, data, text, s, CPU, "fp32", batch_size=16, show_progress=False)
    assert ran[0] == (["apgd-ce", "apgd-t", "fab-t", "square"], 7, 7)  # 8 classes: 7 targets, not 9
    assert r["attack_acc"]["autoattack"] <= r["attack_acc"]["pgd"] < r["clean_acc"]
    assert r["robust_acc"] <= min(r["attack_acc"].values())
    assert any("7 target classes" in m for m in r["aa_checks"])


def _eval(tmp_path, name, *extra, sets=("test_tiny5",)):
    register_tiny_sets()
    return tga_zsr.main(["--eval_only", "--arch", "tiny-vit", "--pretrained", "none", "--device", "cpu",
                         "--output_dir", str(tmp_path), "--name", name, "--test_numsteps", "2", "--test_eps", "4",
                         "--test_batch_size", "5", "--workers", "0", "--testdata", *sets, *extra])


def _rows(folder):
    return [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines() if x.strip()]


def test_fp32_and_bf16_attacks_record_their_gap(tmp_path):
    assert _eval(tmp_path, "prec", "--attack_precision", "fp32") == 0
    assert _eval(tmp_path, "prec", "--attack_precision", "bf16") == 0
    fp32, bf16 = _rows(tmp_path / "prec")
    assert (fp32["attack_precision"], bf16["attack_precision"]) == ("fp32", "bf16")
    assert fp32["precision"] == bf16["precision"] == "fp32"  # predictions stay in --precision
    gap = bf16["robust_acc"] - fp32["robust_acc"]
    built = tables.build_tables(tables.load_runs([str(tmp_path / "prec")]))
    low = next(t for t in built if "attacks in bf16" in t["title"])
    assert low["rows"][0]["precision_gap"]["points"] == pytest.approx(gap)
    assert low["rows"][0]["precision_gap"]["masking"] == (gap > tables.PRECISION_GAP_FLAG)
    assert "against fp32 attacks" in tables.to_markdown(built)
    card = json.loads((tmp_path / "prec" / "model_card.json").read_text())
    bf = next(e for e in card["evaluations"] if e["attack_precision"] == "bf16")
    assert bf["precision_gap"]["points"] == pytest.approx(gap, abs=0.005)  # the card rounds to 2 decimals


def test_a_gap_above_the_threshold_is_flagged():
    base = {"dataset": "cifar10", "attack": "pgd", "norm": "l_inf", "eps": 1.0, "steps": 10, "step_size": 1.0,
            "n_samples": 0, "precision": "fp32", "clean_acc": 80.0, "method": "x"}
    rows = [{**base, "attack_precision": "fp32", "robust_acc": 30.0},
            {**base, "attack_precision": "amp", "robust_acc": 30.0 + 2 * tables.PRECISION_GAP_FLAG}]
    built = tables.build_tables([("run", rows)])
    flagged = [r["precision_gap"] for t in built for r in t["rows"] if r.get("precision_gap")]
    assert flagged == [{"vs": "fp32", "points": 2 * tables.PRECISION_GAP_FLAG, "datasets": 1, "masking": True}]
    assert "possible gradient masking" in tables.to_markdown(built)


def test_old_results_rows_still_count_as_done(tmp_path, monkeypatch):
    """A row written before the new settings existed (no attack_precision, aa_version, protocol,
    transform, batch_stride, restarts, templates) is what the default flags produce: it is skipped, not redone."""
    assert _eval(tmp_path, "old") == 0
    (row,) = _rows(tmp_path / "old")
    for k in ("attack_precision", "aa_version", "protocol", "transform", "batch_stride", "attack_acc", "restarts",
              "templates"):
        row.pop(k)
    (tmp_path / "old" / "results.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setattr(evaluate, "evaluate_dataset", lambda *a, **k: pytest.fail("an old row was redone"))
    assert _eval(tmp_path, "old") == 0
    old_title = tables.build_tables(tables.load_runs([str(tmp_path / "old")]))[0]["title"]
    assert old_title == "PGD-2, ε = 4/255, step 1/255, l_inf, fp32"


def test_protocols_set_flags_and_label_every_result(tmp_path):
    args = parse_args(["--protocol", "robustvlm"])
    assert (args.attack, args.aa_version, args.test_eps, args.n_samples) == ("autoattack", "apgd-ce-t", [2, 4], 1000)
    assert (args.precision, args.attack_precision, args.transform) == ("fp32", "fp32", "robustvlm")
    assert protocol_label(vars(args)) == "robustvlm"
    assert protocol_label(vars(parse_args(["--protocol", "robustvlm", "--n_samples", "10"]))) == \
        "robustvlm (modified: n_samples=10)"
    assert parse_args(["--protocol", "tecoa"]).batch_stride == 20
    with pytest.raises(SystemExit):
        parse_args(["--protocol", "nope"])
    # a protocol run on the tiny sets: every row says which protocol (and what the command changed)
    assert _eval(tmp_path, "proto", "--protocol", "tecoa", "--batch_stride", "2", "--test_batch_size", "2",
                 sets=("test_tiny5",)) == 0
    (row,) = _rows(tmp_path / "proto")
    assert row["protocol"].startswith("tecoa (modified: testdata=['test_tiny5']")
    assert row["batch_stride"] == "2x2" and row["n"] == 6  # batches 0, 2, 4 of 2 images out of 10
    assert "protocol tecoa" in tables.build_tables(tables.load_runs([str(tmp_path / "proto")]))[0]["title"]


def test_robustvlm_attacks_cifar_at_native_resolution_and_resizes_inside_the_model(tmp_path, tiny_model):
    write_cifar10(str(tmp_path))
    native = datasets.get_dataset("cifar10", str(tmp_path), "test", transform=eval_transform("robustvlm", "cifar10", 224))
    spec = datasets.get_dataset("cifar10", str(tmp_path), "test")
    assert native.dataset[0][0].shape == (3, 32, 32) and spec.dataset[0][0].shape == (3, 224, 224)
    x = native.dataset[0][0][None]
    up = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
    text = tiny_model.encode_text(native.prompts)
    with torch.no_grad():  # the model's own resize is the bicubic one: the same logits
        assert torch.equal(tiny_model.logits(x, text), tiny_model.logits(up, text))
    resize = eval_transform("robustvlm", "dtd", 224).transforms[0]
    assert resize.size == 224 and resize.interpolation.value == "bicubic"
    assert eval_transform("tga_zsr", "cifar10", 224) is None and eval_transform("robustvlm", "world_shape", 32) is None


def test_model_card_leaderboard_and_saved_adversarial_examples(tmp_path, capsys):
    assert _eval(tmp_path, "a", "--attack", "pgd,cw", "--save_adv", "3", sets=("test_tiny3", "test_tiny5")) == 0
    card = json.loads((tmp_path / "a" / "model_card.json").read_text())
    (e,) = card["evaluations"]
    rows = _rows(tmp_path / "a")
    assert e["attacks"] == ["pgd", "cw"] and e["threat_model"] == "Linf" and e["eps"] == 4.0
    assert e["means"]["all"]["robust"] == pytest.approx(sum(r["robust_acc"] for r in rows) / 2)
    c, r = e["headline"]["clean"], e["headline"]["robust"]
    assert e["headline"]["harmonic"] == pytest.approx(2 * c * r / (c + r) if c + r else 0.0)
    assert card["model"]["arch"] == "tiny-vit" and card["tool"]["git_revision"]
    assert e["at_chance"] == [d for d, v in e["datasets"].items() if at_chance(v["clean"], v["classes"], v["n"])]
    adv = torch.load(tmp_path / "a" / "adv" / "test_tiny5_pgd+cw_eps4_fp32.pt", weights_only=True)
    assert adv["x_adv"].shape == (3, 3, 32, 32) and adv["attacks"] == ["pgd", "cw"]
    assert (adv["x_adv"] - adv["x"]).abs().max() <= 4 / 255 + 1e-6
    other = copy.deepcopy(card)
    other["model"]["name"] = "better"
    other["evaluations"][0]["headline"]["robust"] = r + 10
    text = leaderboard([card, other])
    assert text.index("| 1 | better |") < text.index(f"| 2 | {card['model']['name']} |")
    assert report.main(["leaderboard", str(tmp_path)]) == 0
    assert card["model"]["name"] in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["open_clip", "hf_hub"])
def test_export_loads_in_plain_open_clip_with_equal_logits(tmp_path, tiny_model, fmt):
    """A trained run, exported, then loaded by open_clip alone (no project code): same logits as the
    project's model, to float32 rounding (1e-5: the CLS-only path vs open_clip's full forward)."""
    trained = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in trained.visual.parameters():
            p.add_(0.01 * torch.randn_like(p))
    base = tmp_path / "base.pt"
    save_clip(tiny_model, str(base))
    run = tmp_path / "run"
    run.mkdir()
    torch.save({**trainable_state(trained), "step": 3, "epoch": 1,
                "meta": {"arch": "tiny-vit", "quick_gelu": True, "method": "tecoa", "finished": True}}, run / "last.pt")
    (run / "args.yaml").write_text(yaml.safe_dump({"Method": "tecoa", "arch": "tiny-vit", "pretrained": str(base)}))
    assert report.main(["export", str(run), "--format", fmt]) == 0
    out = run / "export"
    open_clip.add_model_config(MODEL_CONFIG_DIR)  # the tiny architecture is ours, not open_clip's
    plain = (open_clip.create_model("tiny-vit", pretrained=str(out / "run.pt")) if fmt == "open_clip"
             else open_clip.create_model(f"local-dir:{out}")).eval()
    x = torch.rand(3, 3, 224, 224)
    tokens = open_clip.get_tokenizer("tiny-vit")(["a photo of a cat", "a photo of a dog"])
    with torch.no_grad():
        t = torch.nn.functional.normalize(plain.encode_text(tokens), dim=-1)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        img = torch.nn.functional.normalize(plain.encode_image((x - mean) / std), dim=-1)
        theirs = plain.logit_scale.exp() * img @ t.t()
        ours = trained.logits(x, trained.encode_text(["a photo of a cat", "a photo of a dog"]))
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=1e-5)
    if fmt == "hf_hub":
        assert json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["quick_gelu"] is True
        assert (out / "model_card.json").is_file() and "library_name: open_clip" in (out / "README.md").read_text()
        assert torch.allclose(load_clip("x", str(out)).logits(x, trained.encode_text(["a"])),
                              trained.logits(x, trained.encode_text(["a"])), atol=1e-5, rtol=1e-5)
    else:
        assert "model_card" in torch.load(out / "run.pt", weights_only=True)
