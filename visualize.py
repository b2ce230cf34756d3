"""Figures of a run: where the text-guided attention looks; the command line of every figure.

* Attention grid (the paper's central picture): for N images of a dataset, one row per
  image: the clean image, its PGD image (ε in 1/255 units, attacked white-box against the
  fine-tuned model; the perturbation amplified in an inset), and the text-guided attention map
  `A(F, T[y])` (min-max per image, attention.py, with the *true* class's text feature) of
  the original CLIP on the clean image, of the original CLIP on the adversarial image and of the
  fine-tuned model on the adversarial image. Titles give each model's prediction.
  -> `<run>/attention_grid.png` and `.pdf`.
* Trade-off plot and loss curve: drawn by plots.py from the files a run wrote; this command line
  draws them too (`--trade_off RUN ...`, `--loss_curve RUN`).

The "original CLIP" is the run's starting point: built from the run's `args.yaml` exactly as
tga_zsr.py builds it (seeded with the run's `--seed` right before `build_model`), so a run with
`--pretrained none` gets back its own random initial weights, not a fresh random draw. The
fine-tuned model is the same model with the checkpoint's visual tower loaded: the text tower is
never trained, so both models share the run's text features.

matplotlib is imported only when a figure is drawn, with the Agg backend (no display needed).

    python visualize.py --resume checkpoints/<run> --dataset cifar10 --n_images 4 --eps 1
    python visualize.py --trade_off checkpoints/<run_a> checkpoints/<run_b> --out figures/
    python visualize.py --loss_curve checkpoints/RUN
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path

import torch

import datasets
from attacks import no_param_grad
from attention import text_guided_attention
from engine.weights import load_visual_weights
from engine.checkpoint import resolve_checkpoint
from engine.model import build_model
from engine.device import resolve_device, seed_everything
from engine.evaluate import attack_batch
from methods import method_label
from engine.settings import DefaultsShown, Settings, parse_args
from reports.plots import COLUMN_IN, MIN_FONT_PT, STYLE, make_trade_off, plot_loss_curve, pyplot, save_figure, wrapped

log = logging.getLogger("tga_zsr")

# Two-line column titles: five panels share the column width.
GRID_COLUMNS = ("clean\nimage", "adversarial\nimage", "original,\nclean", "original,\nadversarial",
                "fine-tuned,\nadversarial")
COLORBAR_IN = 0.6                          # attention grid: the colour bar's width, inches
PANEL_IN = (COLUMN_IN - COLORBAR_IN) / len(GRID_COLUMNS)  # each image panel, so that the grid is a column wide
CAPTION_IN = 0.3                           # two lines of 7 pt caption under each panel
OVERLAY_ALPHA = 0.5
MAP_CMAP = "jet"


# --- models ------------------------------------------------------------------------------------
def run_settings(resume: str | None, overrides: dict | None = None) -> Settings:
    """The run's resolved settings (its args.yaml over the defaults), then `overrides` (flag: value)."""
    args = parse_args(["--resume", str(resume)] if resume else [])
    for k, v in (overrides or {}).items():
        if v is not None:
            setattr(args, k, v)
    return Settings.from_args(args)


def original_model(s: Settings, device) -> torch.nn.Module:
    """The model a run started from: seeded and built exactly as tga_zsr.main does it."""
    seed_everything(s.train.seed)
    return build_model(s.model, device)


def load_models(resume: str, s: Settings, device):
    """(original, fine-tuned) in eval mode; the fine-tuned one has `resume`'s visual tower."""
    original = original_model(s, device).eval()
    finetuned = copy.deepcopy(original)
    fmt = load_visual_weights(finetuned, resolve_checkpoint(resume))
    log.info(f"fine-tuned weights from {resolve_checkpoint(resume)} ({fmt})")
    return original, finetuned.eval()


# --- attention grid ----------------------------------------------------------------------------
def pick_indices(n_total: int, n_images: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:min(n_images, n_total)].tolist()


@torch.no_grad()
def _maps_and_predictions(model, x, y, text):
    tokens = model.image_tokens(x)
    maps = text_guided_attention(tokens, text[y], out_size=x.shape[-1])[:, 0]
    return maps.float().cpu(), model.logits_from_tokens(tokens, text).argmax(1).cpu()


def attention_rows(original, finetuned, data, indices: list[int], settings: dict, device,
                   attack_original: bool = False) -> dict:
    """Everything the grid shows, as CPU tensors: images, δ, the three maps, the predictions.

    The PGD image is `evaluate.attack_batch` against the fine-tuned model with the evaluation's
    per-sample random start, so it is the very image the run's robust accuracy was measured on
    (same ε, steps, seed). `attack_original`: the original model's adversarial column gets its
    own white-box PGD image instead of the fine-tuned model's (the paper's per-model setting).
    """
    x, y, idx, unreadable = datasets.collate_indexed([datasets.Indexed(data.dataset)[i] for i in indices])
    if unreadable:  # the figure shows the images drawn, never a substitute
        raise SystemExit(f"{datasets.CorruptImage(data.name, unreadable)}\nOr draw other images: --image_seed")
    x, y = datasets.images_to(x, device, data.on_device), y.to(device)
    with torch.no_grad():
        text = finetuned.encode_text(data.prompts)  # the text tower is shared and never trained
    with no_param_grad(finetuned):
        x_adv = attack_batch(finetuned, x, y, idx, text, settings).detach()
    x_adv_orig = x_adv
    if attack_original:
        with no_param_grad(original):
            x_adv_orig = attack_batch(original, x, y, idx, text, settings).detach()
    out = {"image": x.cpu(), "adv": x_adv.cpu(), "adv_orig": x_adv_orig.cpu(), "delta": (x_adv - x).cpu(),
           "label": y.cpu(), "index": indices}
    for key, model, inp in (("orig_clean", original, x), ("orig_adv", original, x_adv_orig),
                            ("ft_adv", finetuned, x_adv)):
        out[f"map_{key}"], out[f"pred_{key}"] = _maps_and_predictions(model, inp, y, text)
    return out


def attention_grid_size(n_images: int) -> tuple[float, float]:
    """Figure size in inches: five panels per row plus the colour bar (the column width), one row per
    image, the column titles and the figure's title above."""
    return len(GRID_COLUMNS) * PANEL_IN + COLORBAR_IN, n_images * (PANEL_IN + CAPTION_IN) + 0.75


def _image(t: torch.Tensor):
    return t.permute(1, 2, 0).clamp(0, 1).numpy()


def _overlay(image: torch.Tensor, amap: torch.Tensor, cmap):
    """The map in colour over the image, blended half and half into one RGB picture (one image
    per panel keeps the PDF small; the colour bar shows the map's own, unblended colours)."""
    heat = torch.from_numpy(cmap(amap.clamp(0, 1).numpy())[..., :3]).float()
    return (OVERLAY_ALPHA * heat + (1 - OVERLAY_ALPHA) * image.permute(1, 2, 0).clamp(0, 1)).numpy()


def draw_attention_grid(rows: dict, classnames: list[str], eps255: float, steps: int, title: str = "",
                        attack_original: bool = False):
    """The figure of `attention_rows` (returned, not saved)."""
    plt = pyplot()
    n = len(rows["index"])
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=attention_grid_size(n), layout="constrained")
        axes = fig.subplots(n, len(GRID_COLUMNS), squeeze=False)
        gain = 127.5 / eps255 if eps255 > 0 else 1.0  # δ ∈ [−ε, ε] -> [0, 1] in the inset
        cmap = plt.get_cmap(MAP_CMAP)

        def name(c):
            return classnames[int(c)]

        def fit(text):  # a class name may be long: lines that fit under a narrow panel
            return wrapped(text, PANEL_IN, MIN_FONT_PT)

        def verdict(pred, y):
            return fit(f"pred: {name(pred)} " + ("✓" if int(pred) == int(y) else "✗"))

        for r in range(n):
            y = rows["label"][r]
            img, adv = rows["image"][r], rows["adv"][r]
            panels = [(_image(img), fit(f"true: {name(y)}")),
                      (_image(adv), fit(f"PGD-{steps} ε={eps255:g}/255")),
                      (_overlay(img, rows["map_orig_clean"][r], cmap), verdict(rows["pred_orig_clean"][r], y)),
                      (_overlay(rows["adv_orig"][r], rows["map_orig_adv"][r], cmap),
                       verdict(rows["pred_orig_adv"][r], y)),
                      (_overlay(adv, rows["map_ft_adv"][r], cmap), verdict(rows["pred_ft_adv"][r], y))]
            for c, (picture, caption) in enumerate(panels):
                ax = axes[r, c]
                ax.imshow(picture, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_xlabel(caption, labelpad=2, fontsize=MIN_FONT_PT)
                if r == 0:
                    ax.set_title(GRID_COLUMNS[c] if not (attack_original and c == 3)
                                 else "original,\nown PGD", fontweight="bold")
            inset = axes[r, 1].inset_axes([0.6, 0.6, 0.38, 0.38])
            inset.imshow(_image(0.5 + gain * rows["delta"][r]), interpolation="nearest")
            inset.set_xticks([])
            inset.set_yticks([])
            inset.text(0.5, 0.04, f"δ ×{gain:.0f}", transform=inset.transAxes, fontsize=MIN_FONT_PT, color="white",
                       ha="center", va="bottom", bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
            for side in inset.spines.values():
                side.set_edgecolor("white")
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=axes[:, 2:].ravel().tolist(),
                           shrink=0.8, aspect=30, pad=0.02)
        bar.set_label("attention (min-max)")
        if title:
            fig.suptitle(wrapped(title, fig.get_figwidth(), STYLE["figure.titlesize"]))
    return fig


def make_attention_grid(resume: str, dataset: str | None = None, root: str | None = None, split: str = "test",
                        n_images: int = 4, image_seed: int = 0, eps: float | None = None, steps: int | None = None,
                        step_size: float | None = None, norm: str | None = None, arch: str | None = None,
                        pretrained: str | None = None, device: str = "auto", out: str | None = None,
                        dpi: int = 150, attack_original: bool = False) -> list[Path]:
    """Build both models from the run, attack, draw and save `attention_grid.png/.pdf`."""
    s = run_settings(resume, {"arch": arch, "pretrained": pretrained, "root": root, "test_eps": eps,
                              "test_numsteps": steps, "test_stepsize": step_size, "norm": norm})
    e = s.eval
    dev = resolve_device(device)
    dataset = dataset or list(e.testdata)[0]
    data = datasets.get_dataset(dataset, e.root, split)
    original, finetuned = load_models(resume, s, dev)
    eps = e.test_eps[0]  # --test_eps may list several budgets: the figure uses the first
    settings = {"attack": "pgd", "norm": e.norm, "eps": eps, "steps": e.test_numsteps,
                "step_size": e.test_stepsize, "seed": e.seed}
    indices = pick_indices(len(data.dataset), n_images, image_seed)
    rows = attention_rows(original, finetuned, data, indices, settings, dev, attack_original)
    ckpt = resolve_checkpoint(resume)
    run_label = ckpt.parent.name if ckpt.name == "last.pt" else ckpt.name
    start = ("its random initial weights, seed " + str(e.seed) if str(e.pretrained).lower() in ("none", "")
             else f"pretrained {e.pretrained}")
    title = f"{data.name}: original model ({start}) vs fine-tuned {run_label}"
    fig = draw_attention_grid(rows, data.classnames, eps, e.test_numsteps, title, attack_original)
    out_dir = Path(out) if out else ckpt.parent
    paths = save_figure(fig, out_dir, "attention_grid", dpi)
    log.info(f"attention grid of {len(indices)} {data.name} images -> {paths[0]}")
    return paths


# --- command line ------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("visualize.py", description="TGA-ZSR figures: attention grid, trade-off plot, "
                                "loss curve", formatter_class=DefaultsShown, allow_abbrev=False)
    g = p.add_argument_group("Attention grid (needs --resume)")
    g.add_argument("--resume", default=None, metavar="RUN_OR_FILE",
                   help="fine-tuned run folder or checkpoint file: draws attention_grid.png/.pdf")
    g.add_argument("--dataset", default=None, help="dataset of the images (default: the run's first --testdata)")
    g.add_argument("--root", default=None, help="datasets folder (default: the run's --root)")
    g.add_argument("--split", default="test", help="dataset split")
    g.add_argument("--n_images", type=int, default=4, help="images (rows) in the grid")
    g.add_argument("--image_seed", type=int, default=0, help="seed of the choice of images")
    g.add_argument("--attack_original", action="store_true",
                   help="attack the original model with its own PGD for its adversarial column "
                        "(default: the fine-tuned model's PGD image in both adversarial columns)")
    g = p.add_argument_group("Model (default: the run's args.yaml; needed for a checkpoint file without one)")
    g.add_argument("--arch", default=None, help="architecture (default: the run's)")
    g.add_argument("--pretrained", default=None,
                   help="weights of the original model to compare with (default: the run's, i.e. its start)")
    g = p.add_argument_group("Attack (1/255 units; default: the run's test settings)")
    g.add_argument("--eps", type=float, default=None, help="PGD ε; for --trade_off: which evaluated ε to plot")
    g.add_argument("--steps", type=int, default=None, help="PGD steps")
    g.add_argument("--step_size", type=float, default=None, help="PGD step size")
    g.add_argument("--norm", default=None, choices=["l_inf", "l_2"], help="threat model")
    g = p.add_argument_group("Other figures")
    g.add_argument("--trade_off", nargs="+", default=None, metavar="RUN",
                   help="runs with results.jsonl: draws trade_off.png/.pdf (in --out or the first run)")
    g.add_argument("--loss_curve", default=None, metavar="RUN", help="redraw RUN/loss_curve.png from history.jsonl")
    g = p.add_argument_group("Output")
    g.add_argument("--out", default=None, help="output folder (default: the run folder)")
    g.add_argument("--dpi", type=int, default=150,
                   help="PNG resolution (the figures are drawn at their print size, at most a column wide)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if not (args.resume or args.trade_off or args.loss_curve):
        raise SystemExit("nothing to draw: give --resume RUN (attention grid), --trade_off RUN ... "
                         "and/or --loss_curve RUN")
    if not log.handlers:  # run as a script: our messages to stdout, open_clip's stay at WARNING
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    if args.loss_curve:
        log.info(f"loss curve -> {plot_loss_curve(args.loss_curve, args.out, args.dpi)}")
    if args.trade_off:
        make_trade_off(args.trade_off, args.out, args.eps, args.dpi, method_label)
    if args.resume:
        make_attention_grid(args.resume, args.dataset, args.root, args.split, args.n_images, args.image_seed,
                            args.eps, args.steps, args.step_size, args.norm, args.arch, args.pretrained,
                            args.device, args.out, args.dpi, args.attack_original)
    return 0


if __name__ == "__main__":
    sys.exit(main())

