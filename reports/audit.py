"""The protocol audit's report (docs/audit.md): Δ robust accuracy of every row against the reference
with a 95 % interval from a paired bootstrap over the same images, the worst case over the attacks,
the sanity checks for gradient masking, and the table as Markdown, JSON and a figure. No torch: it
reads the per-image outcomes the evaluator wrote (engine/evaluate.py `per_sample`: one character per
image, "1" correct, "0" wrong, "-" not evaluated).

**The paired bootstrap.** Two rows were evaluated on the same images, so their difference is judged
image by image: each image contributes −1, 0 or +1 (robust in the reference only, in both or neither,
in the row only). A bootstrap resample draws the images of each test set with replacement, the same
draw for both rows; Δ is the mean over the sets of the per-set difference in accuracy, and the interval
the 2.5 and 97.5 percentiles of Δ over the resamples. The mean of a resample depends only on how many
images of each of the three kinds it holds, which is a multinomial draw: the same distribution as
resampling images one by one, at the cost of one draw per set and resample.

**The checks** (Carlini et al. 2019, "On Evaluating Adversarial Robustness", §5; Athalye et al. 2018):
robust accuracy must not rise with more steps or restarts, must fall with ε and reach ~0 at a large ε,
the worst case must not lie above any single attack, an attack in fp16 / bf16 must not find more
robustness than in fp32, and random noise must not be stronger than the white-box attack. A rise (or a
fall, for the noise) counts as a warning when its whole interval lies on the wrong side of 0, i.e.
when it is larger than the noise of the image sample; within noise it is reported as such.

    from reports.audit import build_report, to_markdown
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from reports.plots import STYLE, pyplot, save_figure

N_BOOT = 2000
NEAR_ZERO = 1.0   # robust accuracy (%) at the large ε that counts as "~0"
LOW_PRECISIONS = ("amp", "bf16")
_CHAR = {"1": 1, "0": 0}


def parse(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(evaluated, correct) boolean arrays of one per-image outcome string."""
    a = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return a != ord("-"), a == ord("1")


def outcomes(results: list[dict], kind: str = "robust") -> dict[str, str]:
    """{dataset: per-image outcomes} of one row's results rows (`kind`: clean, robust)."""
    return {r["dataset"]: r["per_sample"][kind] for r in results}


def paired_delta(a: dict[str, str], b: dict[str, str], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Δ = accuracy of `b` − accuracy of `a`, in points, over the sets both have and the images both
    evaluated, with the 95 % paired-bootstrap interval (module docstring)."""
    delta, boots, sets = bootstrap_deltas(a, b, n_boot, seed)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"delta": delta, "ci": [float(lo), float(hi)], "datasets": sets}


def bootstrap_deltas(a: dict[str, str], b: dict[str, str], n_boot: int = N_BOOT,
                     seed: int = 0) -> tuple[float, np.ndarray, list[str]]:
    """(Δ, the `n_boot` bootstrap values of Δ, the shared sets), in points."""
    sets = sorted(set(a) & set(b))
    if not sets:
        raise ValueError("the two rows share no test set")
    rng = np.random.default_rng(seed)
    means, boots = [], np.zeros(n_boot)
    for d in sets:
        (ea, ca), (eb, cb) = parse(a[d]), parse(b[d])
        if len(ea) != len(eb):
            raise ValueError(f"{d}: the rows were evaluated on different image sets ({len(ea)} vs {len(eb)} positions)")
        both = ea & eb
        diff = cb[both].astype(np.int64) - ca[both].astype(np.int64)
        n = diff.size
        if n == 0:
            raise ValueError(f"{d}: no image was evaluated in both rows")
        counts = np.array([(diff == -1).sum(), (diff == 0).sum(), (diff == 1).sum()])
        draws = rng.multinomial(n, counts / n, size=n_boot)
        boots += (draws[:, 2] - draws[:, 0]) / n
        means.append(diff.mean())
    boots *= 100.0 / len(sets)
    return 100.0 * float(np.mean(means)), boots, sets


def worst_case(entries: list[dict]) -> dict[str, str]:
    """Per set, the images robust to every attack row that has the set (the evaluator's comma list
    counts an image as robust the same way)."""
    out: dict[str, np.ndarray] = {}
    evaluated: dict[str, np.ndarray] = {}
    for e in entries:
        for d, text in outcomes(e["results"]).items():
            ev, ok = parse(text)
            out[d] = ok if d not in out else out[d] & ok
            evaluated[d] = ev if d not in evaluated else evaluated[d] & ev
    return {d: "".join("1" if ok else ("0" if ev else "-") for ev, ok in zip(evaluated[d], out[d])) for d in out}


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _row_summary(e: dict) -> dict:
    res = e["results"]
    return {"key": e["key"], "knob": e["knob"], "value": e["value"],
            "clean": _mean(r["clean_acc"] for r in res), "robust": _mean(r["robust_acc"] for r in res),
            "seconds": sum(r.get("seconds", 0) for r in res), "n": {r["dataset"]: r["n"] for r in res},
            "settings": [{k: v for k, v in r.items() if k != "per_sample"}
                         for r in res],
            "aa_checks": sorted({m for r in res for m in r.get("aa_checks", [])})}


def _accuracy(text: str) -> float:
    ev, ok = parse(text)
    return 100.0 * ok[ev].sum() / max(1, ev.sum())


def build_report(entries: list[dict], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """`entries`: the audit's rows in plan order, each {key, knob, value, attack, results}, the
    reference first; `attack`: the name of the one attack of a row the worst case is taken over. Returns {rows (reference first, then by |Δ|), check_rows, checks}."""
    ref = entries[0]
    ref_robust = outcomes(ref["results"])
    rows = []
    for e in entries:
        s = _row_summary(e)
        s.update(paired_delta(ref_robust, outcomes(e["results"]), n_boot, seed))
        rows.append(s)
    attack_entries = [e for e in entries if e.get("attack")]
    if len(attack_entries) > 1:
        worst = worst_case(attack_entries)
        clean = outcomes(ref["results"], "clean")
        s = {"key": "attack=worst", "knob": "attack",
             "value": "worst case of " + ", ".join(e["attack"] for e in attack_entries),
             "clean": _mean(_accuracy(clean[d]) for d in worst), "robust": _mean(_accuracy(t) for t in worst.values()),
             "seconds": None, "n": {d: int(parse(t)[0].sum()) for d, t in worst.items()},
             "settings": [{"worst_of": [e["key"] for e in attack_entries],
                           "attacks": [e["attack"] for e in attack_entries]}], "aa_checks": [],
             "per_sample": worst}
        s.update(paired_delta(ref_robust, worst, n_boot, seed))
        rows.append(s)
    by_key = {r["key"]: r for r in rows}
    robust_of = {e["key"]: outcomes(e["results"]) for e in entries}
    if "attack=worst" in by_key:
        robust_of["attack=worst"] = by_key["attack=worst"].pop("per_sample")
    checks = sanity_checks(by_key, robust_of, n_boot, seed)
    main = [r for r in rows if r["knob"] != "check"]
    ordered = main[:1] + sorted(main[1:], key=lambda r: -abs(r["delta"]))
    return {"rows": ordered, "check_rows": [r for r in rows if r["knob"] == "check"], "checks": checks,
            "bootstrap": n_boot}


def _setting(row: dict, key: str):
    return row["settings"][0].get(key)


def _verdict(d: dict, wrong_side: str) -> str:
    """ok / warning for a difference that must not be > 0 (`wrong_side` "above") or < 0 ("below")."""
    lo, hi = d["ci"]
    if (wrong_side == "above" and lo > 0) or (wrong_side == "below" and hi < 0):
        return "warning"
    return "ok"


def _fmt(d: dict) -> str:
    return f"{d['delta']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]"


def _series_check(name: str, rows: list[dict], robust_of: dict, key: str, n_boot: int, seed: int,
                  unit: str) -> dict:
    """Robust accuracy must not rise from each row to the next in the order of setting `key`."""
    rows = sorted(rows, key=lambda r: _setting(r, key))
    if len(rows) < 2:
        return {"check": name, "status": "not run", "detail": f"needs two values of {key}"}
    worst, parts = "ok", []
    for a, b in zip(rows, rows[1:]):
        d = paired_delta(robust_of[a["key"]], robust_of[b["key"]], n_boot, seed)
        v = _verdict(d, "above")
        worst = "warning" if v == "warning" else worst
        note = "" if d["delta"] <= 0 else (" rises beyond noise" if v == "warning" else " (rise within noise)")
        parts.append(f"{_setting(a, key):g}→{_setting(b, key):g}{unit}: {_fmt(d)}{note}")
    return {"check": name, "status": worst, "detail": "; ".join(parts)}


def sanity_checks(by_key: dict, robust_of: dict, n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """The gradient-masking checks of the module docstring, each {check, status, detail}; status is
    ok, warning, or "not run" when the audit has no rows for it (a knob left out)."""
    ref = by_key["reference"]
    knob_rows = lambda knob: [r for r in by_key.values() if r["knob"] == knob]  # noqa: E731
    checks = []
    ref_auto = _setting(ref, "attack") == "autoattack"
    steps = [] if ref_auto else [ref] + knob_rows("steps")
    checks.append(_series_check("more steps do not raise robust accuracy", steps, robust_of, "steps", n_boot,
                                seed, " steps"))
    restarts = [] if ref_auto else [ref] + knob_rows("restarts")
    checks.append(_series_check("more restarts do not raise robust accuracy", restarts, robust_of, "restarts",
                                n_boot, seed, " restarts"))
    large = by_key.get("check=large_eps")
    eps_rows = [ref] + knob_rows("eps") + ([large] if large else [])
    checks.append(_series_check("robust accuracy falls with ε", eps_rows, robust_of, "eps", n_boot, seed, "/255"))
    if large:
        ok = large["robust"] <= NEAR_ZERO
        checks.append({"check": f"robust accuracy reaches ~0 at ε = {_setting(large, 'eps'):g}/255",
                       "status": "ok" if ok else "warning",
                       "detail": f"{large['robust']:.2f} % robust (≤ {NEAR_ZERO:g} % counts as ~0)"
                                 + ("" if ok else ": an attack that cannot reach 0 at a large budget is blocked "
                                                  "(masked gradients, or too few steps for that ε)")})
    else:
        checks.append({"check": "robust accuracy reaches ~0 at a large ε", "status": "not run",
                       "detail": "the eps knob was not audited"})
    worst = by_key.get("attack=worst")
    if worst:
        singles = [r for r in by_key.values() if r["key"] in worst["settings"][0]["worst_of"]]
        above = []
        for r in singles:
            d = paired_delta(robust_of[r["key"]], robust_of["attack=worst"], n_boot, seed)
            if d["delta"] > 0:
                above.append(f"{r['value']}: {_fmt(d)}")  # an image robust in the worst case and fooled by one
        checks.append({"check": "the worst case is not above any single attack",
                       "status": "warning" if above else "ok",
                       "detail": "; ".join(above) if above else
                       f"{worst['robust']:.2f} % ≤ " + ", ".join(f"{a} {r['robust']:.2f} %" for a, r in
                                                                  zip(worst["settings"][0]["attacks"], singles))})
    else:
        checks.append({"check": "the worst case is not above any single attack", "status": "not run",
                       "detail": "the attack knob was not audited"})
    fp32 = next((r for r in [ref] + knob_rows("precision") if _setting(r, "attack_precision") == "fp32"), None)
    low = [r for r in [ref] + knob_rows("precision") if _setting(r, "attack_precision") in LOW_PRECISIONS]
    if fp32 and low:
        parts, status = [], "ok"
        for r in low:
            d = paired_delta(robust_of[fp32["key"]], robust_of[r["key"]], n_boot, seed)
            v = _verdict(d, "above")
            status = "warning" if v == "warning" else status
            parts.append(f"{_setting(r, 'attack_precision')} − fp32: {_fmt(d)}"
                         + (" more robust beyond noise: zero or lost gradients in low precision" if v == "warning"
                            else ""))
        checks.append({"check": "a low-precision attack finds no more robustness than fp32", "status": status,
                       "detail": "; ".join(parts)})
    else:
        checks.append({"check": "a low-precision attack finds no more robustness than fp32", "status": "not run",
                       "detail": "needs an fp32 row and an amp or bf16 row (the precision knob, on a device "
                                 "that runs them)"})
    noise = by_key.get("check=noise")
    if noise:
        d = paired_delta(robust_of["reference"], robust_of["check=noise"], n_boot, seed)
        v = _verdict(d, "below")
        checks.append({"check": "random noise is not stronger than the white-box attack", "status": v,
                       "detail": f"noise − reference: {_fmt(d)}"
                                 + (": noise fools more images than the gradient attack" if v == "warning" else "")})
    else:
        checks.append({"check": "random noise is not stronger than the white-box attack", "status": "not run",
                       "detail": "the attack knob was not audited"})
    return checks


# --- output ----------------------------------------------------------------------------------------
def _cells(r: dict, ref_sets: int) -> list[str]:
    share = "" if len(r["datasets"]) == ref_sets else f" ({len(r['datasets'])} of {ref_sets} sets)"
    seconds = "derived" if r["seconds"] is None else f"{r['seconds']:.1f}"
    return [r["knob"], r["value"] + share, f"{r['clean']:.2f}", f"{r['robust']:.2f}",
            f"{r['delta']:+.2f} [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]", seconds]


def to_markdown(report: dict) -> str:
    ref = report["rows"][0]
    sets = len(ref["datasets"])
    n = ", ".join(f"{d} {k}" for d, k in ref["n"].items())
    lines = [f"**Protocol audit of {report['model']}** (reference: {ref['value']}; images: {n}; Δ robust against "
             f"the reference with its 95 % interval, a paired bootstrap of {report['bootstrap']} resamples of "
             f"the same images; rows by |Δ|)", "",
             "| knob | value | clean | robust | Δ robust [95 % CI] | time (s) |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_cells(r, sets)) + " |" for r in report["rows"]]
    if report.get("notes"):
        lines += [""] + [f"* {note}" for note in report["notes"]]
    lines += ["", "**Sanity checks** (gradient masking)", "", "| check | status | detail |", "|---|---|---|"]
    lines += [f"| {c['check']} | {c['status']} | {c['detail']} |" for c in report["checks"]]
    if report["check_rows"]:
        lines += ["", "Rows of the checks only:", "", "| row | clean | robust | Δ robust [95 % CI] | time (s) |",
                  "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(_cells(r, sets)[1:]) + " |" for r in report["check_rows"]]
    checked = [m for r in report["rows"] + report["check_rows"] for m in r["aa_checks"]]
    lines += [""] + [f"AutoAttack: {m}" for m in dict.fromkeys(checked)] if checked else []
    return "\n".join(lines) + "\n"


def write_json(report: dict, path: Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path


def plot_deltas(report: dict, out_dir: Path, stem: str = "audit_delta", dpi: int = 150) -> list[Path]:
    """Δ robust of every knob row with its 95 % interval, largest |Δ| on top -> STEM.png (true colour) and .pdf."""
    plt = pyplot()
    rows = report["rows"][1:][::-1]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(9.0, 1.6 + 0.3 * max(1, len(rows))))
        y = np.arange(len(rows))
        delta = np.array([r["delta"] for r in rows])
        lo, hi = np.array([r["ci"][0] for r in rows]), np.array([r["ci"][1] for r in rows])
        ax.errorbar(delta, y, xerr=[delta - lo, hi - delta], fmt="o", color="#1f77b4", ecolor="#1f77b4",
                    capsize=3, markersize=4)
        ax.axvline(0, color="0.4", linewidth=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels([r["value"] if r["value"].startswith(("ε", "step", "template")) else
                            f"{r['knob']}: {r['value']}" for r in rows])
        ax.set_xlabel("Δ robust accuracy vs the reference (points, 95 % CI)")
        title = textwrap.fill(f"Protocol audit of {report['model']}; reference: {report['rows'][0]['value']}", 95)
        ax.set_title(title, fontsize=8)
        fig.tight_layout()
    return save_figure(fig, out_dir, stem, dpi)
