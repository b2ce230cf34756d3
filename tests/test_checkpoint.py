"""Every checkpoint format of SPEC §7 loads strictly (and through `--eval_only`); mismatches fail
with the key names; a GELU / QuickGELU mismatch fails clearly; pickled objects are refused."""
import argparse
import json

import pytest
import torch
import yaml

import tga_zsr
from engine.weights import load_visual_weights
from engine.weights import save_clip
from engine.model import load_clip
from tests.eval_fixtures import register_tiny_sets
from engine.checkpoint import trainable_state


@pytest.fixture
def trained(tiny_model):
    """The tiny model with visibly changed visual weights (so a load is observable)."""
    with torch.no_grad():
        for p in tiny_model.visual.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return tiny_model


def same_visual(a, b) -> bool:
    sa, sb = a.visual.state_dict(), b.visual.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def original_pth_tar(model) -> dict:
    """What the original TGA-ZSR / TeCoA code saves: prompter state dicts (empty for null_patch and
    add_prompt_size 0), a real SGD state with momentum buffers, the visual tower under OpenAI names."""
    params = list(model.visual.parameters())
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    loss = sum(p.float().pow(2).sum() for p in params)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"epoch": 10, "state_dict": {}, "add_prompter": {"prompt": torch.zeros(1, 0, 768)},
            "best_acc1": torch.tensor(42.0), "optimizer": opt.state_dict(),
            "vision_encoder_state_dict": model.visual.state_dict()}


def fresh():
    torch.manual_seed(123)
    return load_clip("tiny-vit", None)


def test_each_format_loads(trained, tmp_path):
    files = {
        "ours.pt": {**trainable_state(trained), "step": 5, "epoch": 1,
                    "meta": {"arch": "tiny-vit", "quick_gelu": True, "method": "tga_zsr", "finished": True}},
        "tecoa.pth.tar": original_pth_tar(trained),
        "fare_visual.pt": trained.visual.state_dict(),
        "dataparallel.pth.tar": {"vision_encoder_state_dict":
                                 {f"module.{k}": v for k, v in trained.visual.state_dict().items()}},
        "openclip_whole.pt": {"state_dict": trained.clip.state_dict(), "epoch": 3},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        model = fresh()
        assert not same_visual(model, trained)
        load_visual_weights(model, tmp_path / name)
        assert same_visual(model, trained), name


def test_whole_clip_file_as_pretrained(trained, tmp_path):
    path = tmp_path / "clip_whole.pt"
    save_clip(trained, str(path))
    model = load_clip("tiny-vit", str(path))
    assert same_visual(model, trained)
    t = trained.clip.state_dict()
    assert all(torch.equal(v, t[k]) for k, v in model.clip.state_dict().items())


def test_mismatch_names_the_keys(trained, tmp_path):
    state = dict(trained.visual.state_dict())
    state.pop("ln_post.weight")
    state["extra.bias"] = torch.zeros(3)
    state["proj"] = torch.zeros(5, 5)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(SystemExit) as e:
        load_visual_weights(fresh(), tmp_path / "bad.pt")
    msg = str(e.value)
    assert "ln_post.weight" in msg and "extra.bias" in msg and "proj: file (5, 5)" in msg


def test_gelu_quickgelu_mismatch_fails_clearly(trained, tmp_path):
    gelu = load_clip("tiny-vit-gelu", None)
    assert not gelu.quick_gelu
    ours = {**trainable_state(trained), "step": 1, "meta": {"quick_gelu": True}}
    torch.save(ours, tmp_path / "ours.pt")
    torch.save(original_pth_tar(trained), tmp_path / "orig.pth.tar")
    for f in ("ours.pt", "orig.pth.tar"):
        with pytest.raises(SystemExit, match="trained with QuickGELU .* the model uses GELU"):
            load_visual_weights(gelu, tmp_path / f)
    # the other way round: GELU weights into a QuickGELU model
    torch.save({**trainable_state(gelu), "step": 1, "meta": {"quick_gelu": False}}, tmp_path / "g.pt")
    with pytest.raises(SystemExit, match="trained with GELU"):
        load_visual_weights(fresh(), tmp_path / "g.pt")
    # a whole-CLIP file that says QuickGELU, with GELU forced: refused by load_clip
    save_clip(trained, str(tmp_path / "whole.pt"))
    with pytest.raises(ValueError, match="activation mismatch"):
        load_clip("tiny-vit-gelu", str(tmp_path / "whole.pt"), quick_gelu=False)


def test_pickled_objects_are_refused_with_advice(trained, tmp_path):
    obj = original_pth_tar(trained)
    obj["args"] = argparse.Namespace(lr=1e-4)
    torch.save(obj, tmp_path / "pickled.pth.tar")
    with pytest.raises(SystemExit, match="weights_only=True.*\n.*trust"):
        load_visual_weights(fresh(), tmp_path / "pickled.pth.tar")


def test_prompted_original_checkpoint_is_not_silently_evaluated_without_prompts(trained, tmp_path):
    obj = original_pth_tar(trained)
    obj["state_dict"] = {"pad_up": torch.zeros(1, 3, 30, 224)}
    torch.save(obj, tmp_path / "vpt.pth.tar")
    with pytest.raises(SystemExit, match="visual-prompt weights .*state_dict.pad_up"):
        load_visual_weights(fresh(), tmp_path / "vpt.pth.tar")


EVAL = ["--eval_only", "--arch", "tiny-vit", "--pretrained", "none", "--device", "cpu", "--testdata", "test_tiny3",
        "--test_numsteps", "1", "--workers", "0"]


def test_eval_only_of_each_kind(trained, tmp_path):
    """--eval_only with our run folder, an original .pth.tar, a bare visual dict, a --pretrained file."""
    register_tiny_sets()
    run = tmp_path / "myrun"
    run.mkdir()
    torch.save({**trainable_state(trained), "step": 7, "epoch": 1, "optimizer": {}, "meta":
                {"arch": "tiny-vit", "quick_gelu": True, "method": "tecoa", "finished": True}}, run / "last.pt")
    (run / "args.yaml").write_text(yaml.safe_dump({"Method": "TeCoA", "arch": "tiny-vit", "pretrained": "none"}))
    torch.save(original_pth_tar(trained), tmp_path / "tgazsr_orig.pth.tar")
    torch.save(trained.visual.state_dict(), tmp_path / "fare.pt")
    save_clip(trained, str(tmp_path / "whole.pt"))
    out = tmp_path / "out"

    assert tga_zsr.main(EVAL + ["--resume", str(run), "--output_dir", str(out)]) == 0
    assert tga_zsr.main(EVAL + ["--resume", str(tmp_path / "tgazsr_orig.pth.tar"), "--output_dir", str(out)]) == 0
    assert tga_zsr.main(EVAL + ["--resume", str(tmp_path / "fare.pt"), "--output_dir", str(out), "--Method", "TeCoA"]) == 0
    assert tga_zsr.main(EVAL[:4] + [str(tmp_path / "whole.pt")] + EVAL[5:] + ["--output_dir", str(out)]) == 0

    def rows(folder):
        return [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]

    mine = rows(run)[0]
    assert mine["checkpoint"] == "last.pt@step7" and mine["method"] == "tecoa"
    assert yaml.safe_load((run / "args.yaml").read_text())["Method"] == "TeCoA", "the run's args.yaml is kept"
    orig = rows(out / "eval_tgazsr_orig")[0]
    assert orig["checkpoint"].startswith("tgazsr_orig.pth.tar#") and orig["method"] == "tgazsr_orig"
    fare = rows(out / "eval_fare")[0]
    assert fare["method"] == "tecoa", "--Method labels a foreign file's results"
    whole = rows(out / "eval_tiny-vit_whole")[0]
    assert whole["checkpoint"].startswith("pretrained:whole.pt#") and whole["method"] == "clip"
    # the same weights give the same numbers whichever format they came in
    assert mine["clean_acc"] == orig["clean_acc"] == fare["clean_acc"]
    assert mine["robust_acc"] == orig["robust_acc"] == fare["robust_acc"]


def test_eval_only_wrong_arch_is_a_clear_error(trained, tmp_path):
    register_tiny_sets()
    cfg = json.loads(open("configs/models/tiny-vit.json").read())
    cfg["vision_cfg"]["layers"] = 1  # another architecture: one block fewer
    (tmp_path / "tiny-vit-1layer.json").write_text(json.dumps(cfg))
    torch.save(trained.visual.state_dict(), tmp_path / "v.pt")
    with pytest.raises(SystemExit, match=r"(?s)does not fit .*unexpected keys: \['transformer.resblocks.1"):
        tga_zsr.main(["--eval_only", "--arch", str(tmp_path / "tiny-vit-1layer.json"), "--pretrained", "none",
                      "--device", "cpu", "--resume", str(tmp_path / "v.pt"), "--testdata", "test_tiny3",
                      "--output_dir", str(tmp_path)])
