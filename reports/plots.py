"""Plots of what runs wrote: the robust/clean trade-off of results.jsonl files and the loss curve
of history.jsonl. No model is loaded here (visualize.py draws the attention grid).

* Trade-off: mean robust vs mean clean accuracy over each run's `results.jsonl`, one labelled
  point per run (its results' label), with iso-Average lines `(robust + clean) / 2 = const`
  (the paper's Fig. 3). -> `trade_off.png` and `.pdf` (in `--out`, default the first run).
* Loss curve: every loss term of `<run>/history.jsonl` and the LR against the step; training
  writes it at the end of each epoch (tga_zsr.py hands it to the trainer). -> `<run>/loss_curve.png` and `.pdf`.

Every figure is made to go into a paper as it is: a true-colour PNG (RGB, never a palette) and a vector PDF
(text as text, TrueType fonts embedded), at most COLUMN_IN wide with no text under MIN_FONT_PT, so that it
stays readable placed at the column width (`print_font_pt` measures it; `save_figure` warns below it).
matplotlib is imported only when a figure is drawn, with the Agg backend (no display needed).

    python visualize.py --trade_off checkpoints/<run_a> checkpoints/<run_b> --out figures/
    python visualize.py --loss_curve checkpoints/<run>
"""
from __future__ import annotations

import io
import logging
import textwrap
from pathlib import Path

from engine.results import GROUP_KEYS, group_key, read_jsonl, read_results, row_label

log = logging.getLogger("tga_zsr")

# The width a figure is placed at (NeurIPS' text width, the paper's venue, in inches) and the smallest text
# readable in print there (points): figures are drawn at most that wide, at their print size.
COLUMN_IN, MIN_FONT_PT = 5.5, 7.0
STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
         "legend.fontsize": 7, "legend.title_fontsize": 7, "figure.titlesize": 8, "pdf.fonttype": 42,
         "savefig.facecolor": "white"}
HISTORY_SKIP = ("step", "epoch", "img_per_s", "lr")
TRADE_OFF_SIZE = (3.6, 3.6)              # inches: a square axes box for the equal-aspect plot
LEGEND_IN = COLUMN_IN - TRADE_OFF_SIZE[0]  # the legend beside it, for a whole table's methods
LOSS_PANEL = (COLUMN_IN / 3, 1.55)       # inches per loss-curve panel: three across the column
TERM_TITLES = {"loss": "total loss", "lr": "learning rate", "ce": "CE", "ar": "L_AR (unweighted)",
               "amc": "L_AMC (unweighted)"}


def wrapped(text: str, width_in: float, size_pt: float) -> str:
    """`text` broken into lines that fit `width_in` at `size_pt` (an average glyph is ~0.55 em wide)."""
    return textwrap.fill(text, max(8, int(width_in * 72 / (0.55 * size_pt))))


def print_font_pt(fig) -> float:
    """The smallest text of `fig` in points once it is placed at COLUMN_IN wide (a narrower figure keeps
    its own size): what a reader of the paper sees."""
    from matplotlib.text import Text
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes) * min(1.0, COLUMN_IN / fig.get_figwidth()) if sizes else float("inf")


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use only."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, out_dir: Path, stem: str, dpi: int) -> list[Path]:
    """`stem.png` (true colour: RGB, the white background opaque) and `stem.pdf` (vector) at the figure's
    own size (no tight bbox: the pixel size is figsize × dpi)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    smallest = print_font_pt(fig)
    if smallest < MIN_FONT_PT - 1e-9:
        log.warning(f"{stem}: text of {smallest:.1f} pt at {COLUMN_IN:g} in wide, under {MIN_FONT_PT:g} pt")
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for p in paths:
        _save(fig, p, dpi)
    pyplot().close(fig)
    return paths


def _save(fig, p: Path, dpi: int) -> None:
    # STYLE at save time too: pdf.fonttype 42 embeds TrueType fonts (text stays text, no Type 3 glyphs,
    # which some publishers' PDF checks refuse); it is read when the PDF is written, not when drawn
    with pyplot().rc_context(STYLE):
        tmp = p.with_name(f".{p.stem}.tmp{p.suffix}")  # the suffix tells matplotlib the format
        if p.suffix == ".png":
            from PIL import Image  # matplotlib's own dependency
            buf = io.BytesIO()
            fig.savefig(buf, dpi=dpi, format="png")
            # RGBA with an all-opaque alpha is RGB; dropping the channel keeps every pixel's colour
            Image.open(buf).convert("RGB").save(tmp, format="png", optimize=True)
        else:
            fig.savefig(tmp, dpi=dpi)
        tmp.replace(p)  # a reader never sees half a file (the loss curve is rewritten each epoch)



# --- trade-off ---------------------------------------------------------------------------------
def trade_off_points(runs: list[str | Path], eps: float | None = None, label_of=None) -> list[dict]:
    """One point per run: mean clean and robust accuracy (%) over its datasets, in run order.

    A run evaluated under several settings contributes the setting given by `eps` (1/255 units),
    else the one with the most datasets (the latest on a tie); a dataset evaluated twice under
    that setting counts once, with its latest row.
    """
    points = []
    for run in runs:
        rows = [r for r in read_results(run) if "clean_acc" in r and "robust_acc" in r]
        if eps is not None:
            rows = [r for r in rows if r.get("eps") is not None and abs(float(r["eps"]) - eps) < 1e-9]
        if not rows:
            raise SystemExit(f"{run}: no results.jsonl rows" + (f" at eps {eps:g}/255" if eps is not None else "")
                             + "; evaluate it first (python tga_zsr.py --eval_only --resume RUN)")
        key_of = [group_key(r) for r in rows]
        datasets_per_key: dict = {}
        for key, r in zip(key_of, rows):
            datasets_per_key.setdefault(key, set()).add(r["dataset"])
        last_seen = {key: i for i, key in enumerate(key_of)}
        chosen = max(datasets_per_key, key=lambda k: (len(datasets_per_key[k]), last_seen[k]))
        latest = {r["dataset"]: r for key, r in zip(key_of, rows) if key == chosen}
        if len(datasets_per_key) > 1:
            log.info(f"{run}: {len(datasets_per_key)} evaluation settings; plotting "
                     f"{dict(zip(GROUP_KEYS, chosen))}")
        clean = sum(r["clean_acc"] for r in latest.values()) / len(latest)
        robust = sum(r["robust_acc"] for r in latest.values()) / len(latest)
        method = next((row_label(r, label_of) for r in reversed(rows) if r.get("method")), Path(run).name)
        points.append({"run": Path(run).name, "method": method, "clean": clean, "robust": robust,
                       "average": (clean + robust) / 2, "datasets": sorted(latest),
                       **dict(zip(GROUP_KEYS, chosen))})
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


def draw_trade_off(points: list[dict], title: str = "", reference: list[dict] | None = None):
    """Scatter of the points (one `scatter` call, in the order given) with iso-Average lines.

    `reference`: other points for the same labels (the paper's numbers), drawn hollow in the point's
    colour and joined to it by a dotted line."""
    plt = pyplot()
    reference = reference or []
    with plt.rc_context(STYLE):
        w, h = TRADE_OFF_SIZE
        wide = len(points) > LABELLED_POINTS or bool(reference)
        fig, ax = plt.subplots(figsize=(w + LEGEND_IN if wide else w, h), layout="constrained")
        xs = [p["clean"] for p in points]
        ys = [p["robust"] for p in points]
        cmap = plt.get_cmap("tab10" if len(points) <= 10 else "tab20")
        colours = [cmap(i % cmap.N) for i in range(len(points))]
        ax.scatter(xs, ys, c=colours, s=60, zorder=3, edgecolors="black", linewidths=0.6)
        colour_of = {p["label"]: c for p, c in zip(points, colours)}
        by_label = {p["label"]: p for p in points}
        for r in reference:
            c = colour_of.get(r["label"], "0.3")
            ax.scatter([r["clean"]], [r["robust"]], s=60, zorder=3, facecolors="none", edgecolors=[c], linewidths=1.4)
            if r["label"] in by_label:
                p = by_label[r["label"]]
                ax.plot([r["clean"], p["clean"]], [r["robust"], p["robust"]], ls=":", lw=0.9, color=c, zorder=2)
        xs_all, ys_all = xs + [r["clean"] for r in reference], ys + [r["robust"] for r in reference]
        if not wide:
            for i, (p, x, y) in enumerate(zip(points, xs, ys)):
                # points on (nearly) the same spot get their labels stacked, not printed over each other
                below = sum(abs(x - xs[j]) < 1.0 and abs(y - ys[j]) < 1.0 for j in range(i))
                ax.annotate(p["label"], (x, y), xytext=(5, 4 + 10 * below), textcoords="offset points",
                            fontsize=MIN_FONT_PT + 0.5)
        else:  # a whole table's worth of methods crowd together: a legend stays readable
            for p, colour in zip(points, colours):
                ax.scatter([], [], color=colour, s=60, edgecolors="black", linewidths=0.6,
                           label=f"{p['label']} ({p['clean']:.1f}, {p['robust']:.1f})")
            if reference:
                ax.scatter([], [], s=60, facecolors="none", edgecolors="0.3", linewidths=1.4, label="hollow: the paper")
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, title="method (clean, robust)",
                      borderaxespad=0, handletextpad=0.3)
        # A square view with equal aspect, so the iso-Average lines run at −45° and read as such.
        xs, ys = xs_all, ys_all
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
                ax.text(xm, 2 * k - xm, f"avg {k:g}", fontsize=MIN_FONT_PT, color="0.4", rotation=-45,
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
            ax.set_title(wrapped(title, fig.get_figwidth(), STYLE["axes.titlesize"]))
    return fig


def make_trade_off(runs: list[str], out: str | None = None, eps: float | None = None, dpi: int = 150,
                   label_of=None) -> list[Path]:
    points = trade_off_points(runs, eps, label_of)
    p0 = points[0]
    n_sets = len(p0["datasets"])
    title = (f"{p0['attack'].upper()}-{p0['steps']}, ε={p0['eps']:g}/255, "
             f"mean over {n_sets} dataset{'s' if n_sets != 1 else ''}")
    fig = draw_trade_off(points, title)
    paths = save_figure(fig, Path(out) if out else Path(runs[0]), "trade_off", dpi)
    for p in points:
        log.info(f"{p['label']}: clean {p['clean']:.2f}  robust {p['robust']:.2f}  average {p['average']:.2f}")
    log.info(f"trade-off of {len(points)} run(s) -> {paths[0]}")
    return paths


# --- loss curve --------------------------------------------------------------------------------
def read_history(run: str | Path) -> list[dict]:
    """history.jsonl rows sorted by step; a step logged twice (a resume that redid it) keeps the last."""
    by_step = {int(row["step"]): row for row in read_jsonl(Path(run) / "history.jsonl") if "step" in row}
    return [by_step[s] for s in sorted(by_step)]


def loss_terms(history: list[dict]) -> list[str]:
    """Numeric columns to plot: the total loss first, then the method's terms in logged order."""
    seen = []
    for row in history:
        for k, v in row.items():
            if k not in HISTORY_SKIP and k not in seen and isinstance(v, (int, float)) and not isinstance(v, bool):
                seen.append(k)
    return sorted(seen, key=lambda k: k != "loss")


def plot_loss_curve(run: str | Path, out: str | Path | None = None, dpi: int = 150) -> Path:
    """`loss_curve.png` (and `.pdf`): one panel per loss term (the run's averages per print_freq) and the LR."""
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
        fig = plt.figure(figsize=(LOSS_PANEL[0] * ncols, LOSS_PANEL[1] * nrows + 0.4), layout="constrained")
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
        fig.suptitle(wrapped(f"{Path(run).name}: training losses (means over print_freq steps; dotted: epochs)",
                             fig.get_figwidth(), STYLE["figure.titlesize"]))
    return save_figure(fig, Path(out) if out else Path(run), "loss_curve", dpi)[0]
