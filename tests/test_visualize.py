"""Figures (visualize.py): attention grid, trade-off plot and loss curve on a tiny run's outputs."""
import json

import pytest
import torch
from PIL import Image

from reports import plots
import tga_zsr
import visualize
from engine.checkpoint import load_file
from methods import method_label

SMOKE = ["-c", "configs/synthetic.yaml", "--device", "cpu", "--test_numsteps", "2", "--testdata", "synthetic_colors"]


def png_size(path):
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as im:
        return im.size


def same_size(size, inches, dpi):
    """The PNG is figsize × dpi pixels (±1 for rounding): no tight bbox crops the figure."""
    return all(abs(s - i * dpi) <= 1 for s, i in zip(size, inches))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A smoke-like run: 2 training steps, evaluated with PGD-2 on synthetic_colors (24 images)."""
    out = tmp_path_factory.mktemp("runs")
    assert tga_zsr.main(SMOKE + ["--max_steps", "2", "--output_dir", str(out), "--name", "tiny"]) == 0
    return out / "tiny"


def test_training_writes_loss_curve(run):
    # --max_steps 2 stops inside the first epoch: the curve is written when training stops too
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert {"loss", "ce", "ar", "amc", "lr"} <= set(rows[-1])
    assert plots.loss_terms(rows) == ["loss", "ce", "ar", "amc"]
    # 4 loss terms + LR = 5 panels: 3 columns x 2 rows of LOSS_PANEL, +0.4 in for the title, 150 dpi
    w, h = plots.LOSS_PANEL
    assert same_size(png_size(run / "loss_curve.png"), (3 * w, 2 * h + 0.4), 150)
    assert (run / "loss_curve.pdf").read_bytes()[:5] == b"%PDF-"


def test_attention_grid_via_visualize_py(run, tmp_path):
    code = visualize.main(["--resume", str(run), "--n_images", "2", "--device", "cpu",
                           "--dpi", "50", "--steps", "1", "--out", str(tmp_path)])
    assert code == 0
    w, h = visualize.attention_grid_size(2)
    assert w == pytest.approx(plots.COLUMN_IN)  # five panels and the colour bar: one column wide
    assert h == pytest.approx(2 * (visualize.PANEL_IN + visualize.CAPTION_IN) + 0.75)
    assert same_size(png_size(tmp_path / "attention_grid.png"), (w, h), 50)
    assert (tmp_path / "attention_grid.pdf").read_bytes()[:5] == b"%PDF-"


def test_attention_rows_use_the_evaluation_attack(run):
    """The grid's PGD image is the evaluation's (same per-sample start), inside the ε-ball."""
    import datasets
    from attacks import no_param_grad
    from engine.evaluate import attack_batch
    original, finetuned = visualize.load_models(run, visualize.run_settings(run), torch.device("cpu"))
    data = datasets.get_dataset("synthetic_colors", "", "test")
    settings = {"attack": "pgd", "norm": "l_inf", "eps": 4.0, "steps": 2, "step_size": 1.0, "seed": 0}
    idx = visualize.pick_indices(len(data), 2, seed=3)
    assert idx == visualize.pick_indices(len(data), 2, seed=3) != visualize.pick_indices(len(data), 2, seed=4)
    rows = visualize.attention_rows(original, finetuned, data, idx, settings, torch.device("cpu"))
    x = torch.stack([data.dataset[i][0] for i in idx])
    y = torch.tensor([data.dataset[i][1] for i in idx])
    with no_param_grad(finetuned):
        again = attack_batch(finetuned, x, y, torch.tensor(idx), finetuned.encode_text(data.prompts), settings)
    assert torch.equal(rows["adv"], again)
    # δ = fl(x + δ) − x: one rounding of a value ≤ 1 (6e-8); an unprojected step would be 1/255 over
    assert rows["delta"].abs().max() <= 4 / 255 + 1e-7 and rows["delta"].abs().max() > 0
    for key in ("map_orig_clean", "map_orig_adv", "map_ft_adv"):
        m = rows[key]
        assert m.shape == (2, 224, 224) and m.min() >= 0 and m.max() <= 1
    # the fine-tuned tower differs from the original: its map on the same image differs too
    assert not torch.allclose(rows["map_orig_adv"], rows["map_ft_adv"])  # they differ by 0.035
    assert torch.equal(rows["adv_orig"], rows["adv"])  # default: one PGD image for both models
    own = visualize.attention_rows(original, finetuned, data, idx, settings, torch.device("cpu"), attack_original=True)
    with no_param_grad(original):
        expected = attack_batch(original, x, y, torch.tensor(idx), original.encode_text(data.prompts), settings)
    assert torch.equal(own["adv_orig"], expected) and not torch.equal(own["adv_orig"], own["adv"])


def test_original_model_is_the_runs_start_and_plot_errors_are_soft(tmp_path, monkeypatch, capsys):
    """lr 0 keeps the weights at their start, so last.pt must equal the re-created original model
    (same seed, same build as tga_zsr.main). A failing loss-curve plot only warns."""
    def broken(*a, **k):
        raise RuntimeError("plotting exploded")
    monkeypatch.setattr(tga_zsr, "plot_loss_curve", broken)
    assert tga_zsr.main(SMOKE + ["--max_steps", "1", "--no_eval", "--learning_rate", "0", "--output_dir",
                                 str(tmp_path), "--name", "lr0"]) == 0
    assert "loss curve not written (RuntimeError: plotting exploded)" in capsys.readouterr().out
    assert load_file(tmp_path / "lr0" / "last.pt")["step"] == 1
    saved = load_file(tmp_path / "lr0" / "last.pt")["vision_encoder_state_dict"]
    start = visualize.original_model(visualize.run_settings(tmp_path / "lr0"), torch.device("cpu")).visual.state_dict()
    assert all(torch.equal(saved[k], start[k]) for k in saved)
    # another seed is another random model: the seed is what makes them equal
    reseeded = visualize.run_settings(tmp_path / "lr0", {"seed": 1})
    other = visualize.original_model(reseeded, torch.device("cpu")).visual.state_dict()
    assert not all(torch.equal(saved[k], other[k]) for k in saved)


def test_finetuned_model_reproduces_the_runs_clean_accuracy(run):
    """Text tower re-created from the seed + visual tower from last.pt = the evaluated model."""
    import datasets
    from engine.evaluate import evaluate_dataset
    from engine.results import read_results
    _, finetuned = visualize.load_models(run, visualize.run_settings(run), torch.device("cpu"))
    data = datasets.get_dataset("synthetic_colors", "", "test")
    text = finetuned.encode_text(data.prompts)
    res = evaluate_dataset(finetuned, data, text, {"eps": 0, "step_size": 1, "steps": 0}, torch.device("cpu"),
                           "fp32", batch_size=32, show_progress=False)
    row = next(r for r in read_results(run) if r["dataset"] == "synthetic_colors")
    assert res["clean_acc"] == row["clean_acc"]


def _write_results(folder, rows):
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_trade_off_points_are_the_means_of_the_results(run, tmp_path):
    base = {"attack": "pgd", "norm": "l_inf", "steps": 10, "step_size": 1.0, "n_samples": 0, "method": "tecoa"}
    other = tmp_path / "tecoa_run"
    _write_results(other, [
        {**base, "eps": 1.0, "dataset": "a", "clean_acc": 50.0, "robust_acc": 10.0},
        {**base, "eps": 1.0, "dataset": "b", "clean_acc": 40.0, "robust_acc": 30.0},
        {**base, "eps": 1.0, "dataset": "a", "clean_acc": 60.0, "robust_acc": 20.0},  # re-evaluated: latest counts
        {**base, "eps": 4.0, "dataset": "a", "clean_acc": 5.0, "robust_acc": 1.0},
    ])
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    run_clean = sum(r["clean_acc"] for r in rows) / len(rows)
    run_robust = sum(r["robust_acc"] for r in rows) / len(rows)

    points = plots.trade_off_points([run, other], label_of=method_label)  # as visualize.main passes it
    assert [p["label"] for p in points] == ["TGA-ZSR", "TeCoA"]
    # float64 means of a few percentages, summed in another order: equal to ~1e-15 (approx's default 1e-6)
    assert [(p["clean"], p["robust"]) for p in points] == [pytest.approx((run_clean, run_robust)),
                                                           pytest.approx((50.0, 25.0))]
    assert points[1]["eps"] == 1.0 and points[1]["datasets"] == ["a", "b"]
    at4 = plots.trade_off_points([other], eps=4)
    assert (at4[0]["clean"], at4[0]["robust"]) == (5.0, 1.0)
    with pytest.raises(SystemExit, match="no results"):
        plots.trade_off_points([other], eps=2)

    fig = plots.draw_trade_off(points)  # what the PNG shows: read back from the artist
    offsets = fig.axes[0].collections[0].get_offsets()
    assert offsets.shape == (2, 2)
    assert offsets.ravel().tolist() == pytest.approx([run_clean, run_robust, 50.0, 25.0])  # float64, as above
    plots.pyplot().close(fig)

    assert visualize.main(["--trade_off", str(run), str(other), "--out", str(tmp_path / "fig"), "--dpi", "60"]) == 0
    assert same_size(png_size(tmp_path / "fig" / "trade_off.png"), plots.TRADE_OFF_SIZE, 60)
    assert (tmp_path / "fig" / "trade_off.pdf").stat().st_size > 1000


def test_loss_curve_reads_a_resumed_history(tmp_path):
    """A step logged twice (a resume redid it) is plotted once, with its last value."""
    rows = [{"step": 2, "epoch": 0, "lr": 0.1, "loss": 3.0, "ce": 3.0}, {"step": 4, "epoch": 0, "lr": 0.1, "loss": 9.0,
            "ce": 9.0}, {"step": 4, "epoch": 0, "lr": 0.1, "loss": 2.0, "ce": 2.0}, {"step": 6, "epoch": 1, "lr": 0.05,
            "loss": 1.0, "ce": 1.0}]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "lo')
    hist = plots.read_history(tmp_path)
    assert [(r["step"], r["loss"]) for r in hist] == [(2, 3.0), (4, 2.0), (6, 1.0)]
    path = plots.plot_loss_curve(tmp_path, dpi=50)
    w, h = plots.LOSS_PANEL
    assert same_size(png_size(path), (3 * w, h + 0.4), 50)  # loss, ce, lr: one row of 3


def test_trade_off_of_a_whole_table_uses_a_legend():
    """More than LABELLED_POINTS methods: one legend entry per point, with its numbers, and
    distinct colours (11 points: the table of the mini benchmark)."""
    points = [{"label": f"M{i}", "clean": 60.0 + i, "robust": 40.0 + (i % 3)} for i in range(11)]
    fig = plots.draw_trade_off(points)
    ax = fig.axes[0]
    assert ax.collections[0].get_offsets().shape == (11, 2)
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [f"M{i} ({60.0 + i:.1f}, {40.0 + i % 3:.1f})" for i in range(11)]
    colours = ax.collections[0].get_facecolors()
    assert len({tuple(c) for c in colours.tolist()}) == 11
    assert not ax.texts or all(t.get_text().startswith("avg") for t in ax.texts)  # no point labels
    plots.pyplot().close(fig)
