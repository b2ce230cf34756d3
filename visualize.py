"""Figures of a run: where the text-guided attention looks, the robust/clean trade-off, the losses.

* Attention grid (the paper's central picture, SPEC §1): for N images of a dataset, one row per
  image: the clean image, its PGD image (ε in 1/255 units, attacked white-box against the
  fine-tuned model; the perturbation amplified in an inset), and the text-guided attention map
  `A(F, T[y])` (min-max per image, SPEC §1 steps 1–5, with the *true* class's text feature) of
  the original CLIP on the clean image, of the original CLIP on the adversarial image and of the
  fine-tuned model on the adversarial image. Titles give each model's prediction.
  -> `<run>/attention_grid.png` and `.pdf`.
* Trade-off: mean robust vs mean clean accuracy over each run's `results.jsonl`, one labelled
  point per run, with iso-Average lines `(robust + clean) / 2 = const` (SPEC §5/§6).
  -> `trade_off.png` and `.pdf` (in `--out`, default the first run).
* Loss curve: every loss term of `<run>/history.jsonl` and the LR against the step; training
  writes it at the end of each epoch (train.Trainer.fit). -> `<run>/loss_curve.png`.

The "original CLIP" is the run's starting point: built from the run's `args.yaml` exactly as
tga_zsr.py builds it (seeded with the run's `--seed` right before `build_model`), so a run with
`--pretrained none` gets back its own random initial weights, not a fresh random draw. The
fine-tuned model is the same model with the checkpoint's visual tower loaded: the text tower is
never trained, so both models share the run's text features.

matplotlib is imported only when a figure is drawn, with the Agg backend (no display needed).

    python visualize.py --resume checkpoints/<run> --dataset cifar10 --n_images 4 --eps 1
    python visualize.py --trade_off checkpoints/<run_a> checkpoints/<run_b> --out figures/
    python tga_zsr.py --visualize --resume checkpoints/<run> --loss_curve checkpoints/<run>
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import sys
from collections import Counter
from pathlib import Path

import torch

log = logging.getLogger("tga_zsr")

# Paper-readable defaults: text at 11 pt when the figure is printed at its own size.
STYLE = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "xtick.labelsize": 9.5,
         "ytick.labelsize": 9.5, "legend.fontsize": 9.5, "figure.titlesize": 12, "pdf.fonttype": 42,
         "savefig.facecolor": "white"}
# One results row counts as the same evaluation setting as another when these agree.
TRADE_OFF_KEYS = ("attack", "norm", "eps", "steps", "step_size", "n_samples")
GRID_COLUMNS = ("clean image", "adversarial image", "original, clean", "original, adversarial",
                "fine-tuned, adversarial")
PANEL_IN, COLORBAR_IN = 2.2, 0.9          # attention grid: inches per panel, extra width for the bar
HISTORY_SKIP = ("step", "epoch", "img_per_s", "lr")
OVERLAY_ALPHA = 0.5
TRADE_OFF_SIZE = (5.0, 5.0)              # inches: a square axes box for the equal-aspect plot
MAP_CMAP = "jet"
TERM_TITLES = {"loss": "total loss", "lr": "learning rate", "ce": "CE", "ar": "L_AR (Alpha term, unweighted)",
               "amc": "L_AMC (Beta term, unweighted)"}


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use only."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, out_dir: Path, stem: str, dpi: int, pdf: bool = True, png_colors: int = 0) -> list[Path]:
    """PNG (and PDF) at the figure's own size (no tight bbox: the pixel size is figsize × dpi).

    `png_colors` > 0 stores the PNG with a dithered palette of that many colours: image panels
    full of pixel noise otherwise make multi-megabyte PNGs (the docs examples use it).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png"] + ([out_dir / f"{stem}.pdf"] if pdf else [])
    for p in paths:
        tmp = p.with_name(f".{p.stem}.tmp{p.suffix}")  # the suffix tells matplotlib the format
        if p.suffix == ".png" and png_colors > 0:
            from PIL import Image  # matplotlib's own dependency
            buf = io.BytesIO()
            fig.savefig(buf, dpi=dpi, format="png")
            rgb = Image.open(buf).convert("RGB")
            # an octree palette (keeps the colour map's hues) with Floyd–Steinberg dithering (no banding)
            palette = rgb.quantize(png_colors, method=Image.Quantize.FASTOCTREE)
            rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(tmp, format="png", optimize=True)
        else:
            fig.savefig(tmp, dpi=dpi)
        tmp.replace(p)  # a reader never sees half a file (the loss curve is rewritten each epoch)
    pyplot().close(fig)
    return paths


# --- models ------------------------------------------------------------------------------------
def run_args(resume: str | None, overrides: dict | None = None) -> argparse.Namespace:
    """The run's resolved flags (parser < method config < the run's args.yaml), then `overrides`."""
    from params import parse_args
    args = parse_args(["--resume", str(resume)] if resume else [])
    for k, v in (overrides or {}).items():
        if v is not None:
            setattr(args, k, v)
    return args


def original_model(args, device) -> torch.nn.Module:
    """The model a run started from: seeded and built exactly as tga_zsr.main does it."""
    from runtime import seed_everything
    from tga_zsr import build_model
    seed_everything(args.seed)
    return build_model(args, device)


def load_models(resume: str, args, device):
    """(original, fine-tuned) in eval mode; the fine-tuned one has `resume`'s visual tower."""
    from checkpoint import load_visual_weights, resolve_checkpoint
    original = original_model(args, device).eval()
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
    from attention import text_guided_attention
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
    from evaluate import attack_batch, frozen_params
    items = [data.dataset[i] for i in indices]
    x = torch.stack([im for im, _ in items]).to(device)
    y = torch.tensor([int(lbl) for _, lbl in items], device=device)
    idx = torch.tensor(indices)
    with torch.no_grad():
        text = finetuned.encode_text(data.prompts)  # the text tower is shared and never trained
    with frozen_params(finetuned):
        x_adv = attack_batch(finetuned, x, y, idx, text, settings).detach()
    x_adv_orig = x_adv
    if attack_original:
        with frozen_params(original):
            x_adv_orig = attack_batch(original, x, y, idx, text, settings).detach()
    out = {"image": x.cpu(), "adv": x_adv.cpu(), "adv_orig": x_adv_orig.cpu(), "delta": (x_adv - x).cpu(),
           "label": y.cpu(), "index": indices}
    for key, model, inp in (("orig_clean", original, x), ("orig_adv", original, x_adv_orig),
                            ("ft_adv", finetuned, x_adv)):
        out[f"map_{key}"], out[f"pred_{key}"] = _maps_and_predictions(model, inp, y, text)
    return out


def attention_grid_size(n_images: int) -> tuple[float, float]:
    """Figure size in inches: five panels per row plus the colour bar, one row per image."""
    return len(GRID_COLUMNS) * PANEL_IN + COLORBAR_IN, n_images * (PANEL_IN + 0.35) + 0.45


def _image(t: torch.Tensor):
    return t.permute(1, 2, 0).clamp(0, 1).numpy()


def _overlay(image: torch.Tensor, amap: torch.Tensor, cmap) -> "numpy.ndarray":
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

        def verdict(pred, y):
            return f"pred: {name(pred)} " + ("✓" if int(pred) == int(y) else "✗")

        for r in range(n):
            y = rows["label"][r]
            img, adv = rows["image"][r], rows["adv"][r]
            panels = [(_image(img), f"true: {name(y)}"),
                      (_image(adv), f"PGD-{steps} ε={eps255:g}/255"),
                      (_overlay(img, rows["map_orig_clean"][r], cmap), verdict(rows["pred_orig_clean"][r], y)),
                      (_overlay(rows["adv_orig"][r], rows["map_orig_adv"][r], cmap),
                       verdict(rows["pred_orig_adv"][r], y)),
                      (_overlay(adv, rows["map_ft_adv"][r], cmap), verdict(rows["pred_ft_adv"][r], y))]
            for c, (picture, caption) in enumerate(panels):
                ax = axes[r, c]
                ax.imshow(picture, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_xlabel(caption, labelpad=3)
                if r == 0:
                    ax.set_title(GRID_COLUMNS[c] if not (attack_original and c == 3)
                                 else "original, own PGD", fontweight="bold")
            inset = axes[r, 1].inset_axes([0.6, 0.6, 0.38, 0.38])
            inset.imshow(_image(0.5 + gain * rows["delta"][r]), interpolation="nearest")
            inset.set_xticks([])
            inset.set_yticks([])
            inset.text(0.5, 0.04, f"δ ×{gain:.0f}", transform=inset.transAxes, fontsize=8, color="white",
                       ha="center", va="bottom", bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
            for side in inset.spines.values():
                side.set_edgecolor("white")
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=axes[:, 2:].ravel().tolist(),
                           shrink=0.8, aspect=30, pad=0.02)
        bar.set_label("text-guided attention (min-max per image)")
        if title:
            fig.suptitle(title)
    return fig


def make_attention_grid(resume: str, dataset: str | None = None, root: str | None = None, split: str = "test",
                        n_images: int = 4, image_seed: int = 0, eps: float | None = None, steps: int | None = None,
                        step_size: float | None = None, norm: str | None = None, arch: str | None = None,
                        pretrained: str | None = None, device: str = "auto", out: str | None = None,
                        dpi: int = 150, attack_original: bool = False, png_colors: int = 0) -> list[Path]:
    """Build both models from the run, attack, draw and save `attention_grid.png/.pdf`."""
    import datasets as ds_registry
    from checkpoint import resolve_checkpoint
    from runtime import resolve_device
    args = run_args(resume, {"arch": arch, "pretrained": pretrained, "root": root, "test_eps": eps,
                             "test_numsteps": steps, "test_stepsize": step_size, "norm": norm})
    dev = resolve_device(device)
    dataset = dataset or list(args.testdata)[0]
    data = ds_registry.get_dataset(dataset, args.root, split)
    original, finetuned = load_models(resume, args, dev)
    settings = {"attack": "pgd", "norm": args.norm, "eps": args.test_eps, "steps": args.test_numsteps,
                "step_size": args.test_stepsize, "seed": args.seed}
    indices = pick_indices(len(data.dataset), n_images, image_seed)
    rows = attention_rows(original, finetuned, data, indices, settings, dev, attack_original)
    ckpt = resolve_checkpoint(resume)
    run_label = ckpt.parent.name if ckpt.name == "last.pt" else ckpt.name
    start = ("its random initial weights, seed " + str(args.seed) if str(args.pretrained).lower() in ("none", "")
             else f"pretrained {args.pretrained}")
    title = f"{data.name}: original model ({start}) vs fine-tuned {run_label}"
    fig = draw_attention_grid(rows, data.classnames, args.test_eps, args.test_numsteps, title, attack_original)
    out_dir = Path(out) if out else ckpt.parent
    paths = save_figure(fig, out_dir, "attention_grid", dpi, png_colors=png_colors)
    log.info(f"attention grid of {len(indices)} {data.name} images -> {paths[0]}")
    return paths


# --- trade-off ---------------------------------------------------------------------------------
def display_name(method: str) -> str:
    """The paper's spelling of a registered method (its first alias: tga_zsr -> TGA-ZSR)."""
    try:
        from methods import get_method
        m = get_method(method)
        return m.aliases[0] if m.aliases else m.name
    except SystemExit:  # not a registered method (e.g. a run folder name): shown as is
        return method


def trade_off_points(runs: list[str | Path], eps: float | None = None) -> list[dict]:
    """One point per run: mean clean and robust accuracy (%) over its datasets, in run order.

    A run evaluated under several settings contributes the setting given by `eps` (1/255 units),
    else the one with the most datasets (the latest on a tie); a dataset evaluated twice under
    that setting counts once, with its latest row.
    """
    from evaluate import read_results
    points = []
    for run in runs:
        rows = [r for r in read_results(run) if "clean_acc" in r and "robust_acc" in r]
        if eps is not None:
            rows = [r for r in rows if r.get("eps") is not None and abs(float(r["eps"]) - eps) < 1e-9]
        if not rows:
            raise SystemExit(f"{run}: no results.jsonl rows" + (f" at eps {eps:g}/255" if eps is not None else "")
                             + "; evaluate it first (python tga_zsr.py --eval_only --resume RUN)")
        key_of = [tuple(r.get(k) for k in TRADE_OFF_KEYS) for r in rows]
        datasets_per_key: dict = {}
        for key, r in zip(key_of, rows):
            datasets_per_key.setdefault(key, set()).add(r["dataset"])
        last_seen = {key: i for i, key in enumerate(key_of)}
        chosen = max(datasets_per_key, key=lambda k: (len(datasets_per_key[k]), last_seen[k]))
        latest = {r["dataset"]: r for key, r in zip(key_of, rows) if key == chosen}
        if len(datasets_per_key) > 1:
            log.info(f"{run}: {len(datasets_per_key)} evaluation settings; plotting "
                     f"{dict(zip(TRADE_OFF_KEYS, chosen))}")
        clean = sum(r["clean_acc"] for r in latest.values()) / len(latest)
        robust = sum(r["robust_acc"] for r in latest.values()) / len(latest)
        method = display_name(next((r["method"] for r in reversed(rows) if r.get("method")), Path(run).name))
        points.append({"run": Path(run).name, "method": method, "clean": clean, "robust": robust,
                       "average": (clean + robust) / 2, "datasets": sorted(latest),
                       **dict(zip(TRADE_OFF_KEYS, chosen))})
    names = [p["method"] for p in points]
    for p in points:  # two runs of one method: tell them apart by run name
        p["label"] = p["method"] if names.count(p["method"]) == 1 else f"{p['method']} ({p['run']})"
    if len({tuple(p["datasets"]) for p in points}) > 1:
        log.warning("the runs were evaluated on different datasets: their means are not comparable")
    if len({(p["eps"], p["steps"], p["attack"]) for p in points}) > 1:
        log.warning("the runs were attacked with different settings: "
                    + "; ".join(f"{p['label']}: {p['attack']} eps {p['eps']} steps {p['steps']}" for p in points))
    return points


LABELLED_POINTS = 6  # more points than this get a legend instead of labels next to them


def draw_trade_off(points: list[dict], title: str = ""):
    """Scatter of the points (one `scatter` call, in the order given) with iso-Average lines."""
    plt = pyplot()
    with plt.rc_context(STYLE):
        w, h = TRADE_OFF_SIZE
        fig, ax = plt.subplots(figsize=(w if len(points) <= LABELLED_POINTS else w + 3.2, h), layout="constrained")
        xs = [p["clean"] for p in points]
        ys = [p["robust"] for p in points]
        cmap = plt.get_cmap("tab10" if len(points) <= 10 else "tab20")
        colours = [cmap(i % cmap.N) for i in range(len(points))]
        ax.scatter(xs, ys, c=colours, s=60, zorder=3, edgecolors="black", linewidths=0.6)
        if len(points) <= LABELLED_POINTS:
            for i, (p, x, y) in enumerate(zip(points, xs, ys)):
                # points on (nearly) the same spot get their labels stacked, not printed over each other
                below = sum(abs(x - xs[j]) < 1.0 and abs(y - ys[j]) < 1.0 for j in range(i))
                ax.annotate(p["label"], (x, y), xytext=(6, 5 + 13 * below), textcoords="offset points", fontsize=10)
        else:  # a whole table's worth of methods crowd together: a legend stays readable
            for p, colour in zip(points, colours):
                ax.scatter([], [], color=colour, s=60, edgecolors="black", linewidths=0.6,
                           label=f"{p['label']} ({p['clean']:.1f}, {p['robust']:.1f})")
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, frameon=False,
                      title="method (clean, robust)", title_fontsize=9)
        # A square view with equal aspect, so the iso-Average lines run at −45° and read as such.
        span = min(104.0, max(20.0, 1.3 * max(max(xs) - min(xs), max(ys) - min(ys))))
        x0 = min(max(-2.0, (max(xs) + min(xs) - span) / 2), 102.0 - span)
        y0 = min(max(-2.0, (max(ys) + min(ys) - span) / 2), 102.0 - span)
        x1, y1 = x0 + span, y0 + span
        # iso-Average lines robust = 2k − clean, on a step that gives a handful inside the box
        lo, hi = (x0 + y0) / 2, (x1 + y1) / 2
        step = next(s for s in (1, 2, 5, 10, 20, 50) if (hi - lo) / s <= 10)
        k = step * int(lo // step)
        while k <= hi + step:
            ax.plot([x0, x1], [2 * k - x0, 2 * k - x1], ls="--", lw=0.8, color="0.6", zorder=1)
            # label at the line's point nearest the centre of the view, if well inside it
            xm = (2 * k - (y0 + y1) / 2 + (x0 + x1) / 2) / 2
            margin = 0.06 * span
            if x0 + margin < xm < x1 - margin and y0 + margin < 2 * k - xm < y1 - margin:
                ax.text(xm, 2 * k - xm, f"avg {k:g}", fontsize=8, color="0.4", rotation=-45,
                        ha="center", va="center", rotation_mode="anchor",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
            k += step
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_aspect("equal")
        ax.set_xlabel("mean clean accuracy (%)")
        ax.set_ylabel("mean robust accuracy (%)")
        ax.grid(alpha=0.25)
        if title:
            ax.set_title(title)
    return fig


def make_trade_off(runs: list[str], out: str | None = None, eps: float | None = None, dpi: int = 150,
                   png_colors: int = 0) -> list[Path]:
    points = trade_off_points(runs, eps)
    p0 = points[0]
    n_sets = len(p0["datasets"])
    title = (f"{p0['attack'].upper()}-{p0['steps']}, ε={p0['eps']:g}/255, "
             f"mean over {n_sets} dataset{'s' if n_sets != 1 else ''}")
    fig = draw_trade_off(points, title)
    paths = save_figure(fig, Path(out) if out else Path(runs[0]), "trade_off", dpi, png_colors=png_colors)
    for p in points:
        log.info(f"{p['label']}: clean {p['clean']:.2f}  robust {p['robust']:.2f}  average {p['average']:.2f}")
    log.info(f"trade-off of {len(points)} run(s) -> {paths[0]}")
    return paths


# --- loss curve --------------------------------------------------------------------------------
def read_history(run: str | Path) -> list[dict]:
    """history.jsonl rows sorted by step; a step logged twice (a resume that redid it) keeps the last."""
    path = Path(run) / "history.jsonl"
    by_step = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if isinstance(row, dict) and "step" in row:
                by_step[int(row["step"])] = row
    return [by_step[s] for s in sorted(by_step)]


def loss_terms(history: list[dict]) -> list[str]:
    """Numeric columns to plot: the total loss first, then the method's terms in logged order."""
    seen = []
    for row in history:
        for k, v in row.items():
            if k not in HISTORY_SKIP and k not in seen and isinstance(v, (int, float)) and not isinstance(v, bool):
                seen.append(k)
    return sorted(seen, key=lambda k: k != "loss")


def plot_loss_curve(run: str | Path, out: str | Path | None = None, dpi: int = 120, png_colors: int = 0) -> Path:
    """`loss_curve.png`: one panel per loss term (the run's averages per print_freq) and the LR."""
    history = read_history(run)
    if not history:
        raise FileNotFoundError(f"{Path(run) / 'history.jsonl'} has no rows yet")
    plt = pyplot()
    terms = loss_terms(history) + (["lr"] if any("lr" in r for r in history) else [])
    ncols = min(3, len(terms))
    nrows = -(-len(terms) // ncols)
    steps = [r["step"] for r in history]
    # the first step of each epoch after the first: where the epoch boundaries fall
    starts = [r["step"] for prev, r in zip(history, history[1:]) if r.get("epoch") != prev.get("epoch")]
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(3.4 * ncols, 2.6 * nrows + 0.4), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, term in zip(axes, terms):
            pts = [(s, r[term]) for s, r in zip(steps, history) if isinstance(r.get(term), (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None,
                    ms=3, lw=1.4, color="tab:orange" if term == "lr" else "tab:blue")
            for s in starts:
                ax.axvline(s, color="0.7", ls=":", lw=0.9)
            ax.set_title(TERM_TITLES.get(term, term))
            ax.set_xlabel("step")
            ax.grid(alpha=0.25)
            if term == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        for ax in axes[len(terms):]:
            ax.set_visible(False)
        fig.suptitle(f"{Path(run).name}: training losses (means over print_freq steps; dotted: epochs)")
    return save_figure(fig, Path(out) if out else Path(run), "loss_curve", dpi, pdf=False, png_colors=png_colors)[0]


# --- command line ------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("TGA-ZSR figures: attention grid, trade-off plot, loss curve")
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
    g.add_argument("--dpi", type=int, default=150, help="PNG resolution")
    g.add_argument("--png_colors", type=int, default=0,
                   help="store PNGs with a dithered palette of N colours (0: full colour); for small files")
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
        log.info(f"loss curve -> {plot_loss_curve(args.loss_curve, args.out, args.dpi, args.png_colors)}")
    if args.trade_off:
        make_trade_off(args.trade_off, args.out, args.eps, args.dpi, args.png_colors)
    if args.resume:
        make_attention_grid(args.resume, args.dataset, args.root, args.split, args.n_images, args.image_seed,
                            args.eps, args.steps, args.step_size, args.norm, args.arch, args.pretrained,
                            args.device, args.out, args.dpi, args.attack_original, args.png_colors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
