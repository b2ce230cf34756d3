"""Model cards (docs/evaluation.md): `model_card.json` beside each evaluation's `results.jsonl`, and the
leaderboard built from cards.

A card is RobustBench-like: what was evaluated (name, source, architecture, activation, sha256 of
the weights file, training method and arguments when the weights are a run of this project), then
one entry per evaluation setting found in the results of those weights: protocol, threat model,
ε, attacks, precisions, per-dataset clean / robust accuracy (and each attack's own), the mean over
the paper's 16 datasets, the strict zero-shot mean over 15 (TinyImageNet left out: it is the
training set's domain), the harmonic mean of clean and robust, the datasets whose clean accuracy
is at chance level (e.g. PCAM), then the date, the tool's version and the git revision. What an evaluation
is not is said on it: `stopped` (weights of a training stopped before its schedule, 'stopped at step N of
M', also on the card's model) and `partial` (test sets short of their release, 'partial (30 / 27 000)').
No torch.

The leaderboard ranks models within one full evaluation setting (`setting`: every GROUP_KEYS value of the
results rows and the precision, so ε, steps, step size, attacks, precisions and samples all match), titled
as the challenge table titles it.

    python report.py leaderboard checkpoints/          # every model_card.json below, ranked
"""
from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

from engine.results import GROUP_KEYS, SETTING_DEFAULTS, group_key, read_results, setting
from reports.tables import PRECISION_GAP_FLAG, group_title

CARD_NAME = "model_card.json"
TOOL = "tga_zsr.py evaluator (TGA-ZSR reference implementation)"
SIXTEEN = ("tinyImageNet", "cifar10", "cifar100", "STL10", "Food101", "oxfordpet", "flowers102", "dtd", "EuroSAT",
           "fgvc_aircraft", "Caltech101", "Caltech256", "StanfordCars", "PCAM", "ImageNet", "SUN397")
NOT_ZERO_SHOT = ("tinyImageNet",)  # the fine-tuning data of the TGA-ZSR protocol
THREAT = {"l_inf": "Linf", "l_2": "L2"}


def harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def at_chance(clean_acc: float, classes: int, n: int) -> bool:
    """Clean accuracy no better than guessing: within two binomial standard deviations of 1/C
    (at n = 32 768 PCAM images, 50 % ± 0.55 points; with few images the band widens accordingly)."""
    if not classes or not n:
        return False
    p = 1.0 / classes
    return clean_acc <= 100 * (p + 2 * math.sqrt(p * (1 - p) / n))


def _mean(rows: dict, names, key: str) -> float:
    return sum(rows[d][key] for d in names) / len(names)


def summarise(rows: list[dict]) -> dict:
    """One evaluation setting: per-dataset numbers and the means a card reports."""
    per = {r["dataset"]: r for r in rows}  # later rows win (a re-evaluation)
    r0 = rows[-1]
    data = {}
    for name, r in per.items():
        data[name] = {"clean": r["clean_acc"], "robust": r["robust_acc"], "n": r.get("n"),
                      "classes": r.get("classes"), "at_chance": at_chance(r["clean_acc"], r.get("classes"), r.get("n"))}
        if r.get("attack_acc"):
            data[name]["attack_acc"] = r["attack_acc"]
        if r.get("aa_checks"):
            data[name]["autoattack_checks"] = r["aa_checks"]
        if r.get("partial"):
            data[name]["partial"] = r["partial"]
    names = list(per)
    means = {"all": {"clean": _mean(data, names, "clean"), "robust": _mean(data, names, "robust"),
                     "datasets": len(names)}}
    if all(d in per for d in SIXTEEN):
        means["16_datasets"] = {"clean": _mean(data, SIXTEEN, "clean"), "robust": _mean(data, SIXTEEN, "robust")}
        strict = [d for d in SIXTEEN if d not in NOT_ZERO_SHOT]
        means["strict_zero_shot_15"] = {"clean": _mean(data, strict, "clean"), "robust": _mean(data, strict, "robust")}
    head = means.get("16_datasets", means["all"])
    stopped = sorted({r["stopped"] for r in per.values() if r.get("stopped")})
    marks = {"stopped": "; ".join(stopped)} if stopped else {}
    partial = [f"{d} {v['partial']}" for d, v in data.items() if v.get("partial")]
    if partial:
        marks["partial"] = partial
    return {
        "protocol": setting(r0, "protocol"), "threat_model": THREAT.get(r0.get("norm"), r0.get("norm")),
        "eps": r0.get("eps"), "eps_unit": "1/255", "attacks": str(r0.get("attack")).split(","),
        "autoattack_version": setting(r0, "aa_version"), "steps": r0.get("steps"), "step_size": r0.get("step_size"),
        "precision": r0.get("precision"), "attack_precision": setting(r0, "attack_precision"),
        "transform": setting(r0, "transform"), "n_samples": r0.get("n_samples"),
        "batch_stride": setting(r0, "batch_stride"), "restarts": setting(r0, "restarts"),
        "templates": setting(r0, "templates"), "seed": r0.get("seed"),
        "datasets": data, "means": means, "headline": {**head, "harmonic": harmonic(head["clean"], head["robust"])},
        "at_chance": [d for d, v in data.items() if v["at_chance"]],
        "setting": {**{k: setting(r0, k) for k in GROUP_KEYS}, "precision": r0.get("precision")}, **marks,
    }


def precision_gaps(evaluations: list[dict]) -> None:
    """Record, on each low-precision evaluation that has an fp32 twin, the robust-accuracy gap."""
    def twin_key(e):
        return tuple(v for k, v in e["_key"] if k != "attack_precision") + (e["precision"],)
    fp32 = {twin_key(e): e for e in evaluations if e["attack_precision"] == "fp32"}
    for e in evaluations:
        ref = fp32.get(twin_key(e))
        if ref is None or e is ref:
            continue
        common = [d for d in e["datasets"] if d in ref["datasets"]]
        if common:
            gap = sum(e["datasets"][d]["robust"] - ref["datasets"][d]["robust"] for d in common) / len(common)
            e["precision_gap"] = {"vs": "fp32", "points": round(gap, 2), "datasets": len(common),
                                  "possible_gradient_masking": gap > PRECISION_GAP_FLAG}


def build_card(rows: list[dict], model: dict, environment: dict | None = None) -> dict:
    """The card of one model: `model` describes it (name, source, arch, ...), `rows` are its results."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(group_key(r) + (r.get("precision"),), []).append(r)
    evaluations = []
    for key, group in groups.items():
        e = summarise(group)
        e["_key"] = tuple(zip(GROUP_KEYS + ("precision",), key))
        evaluations.append(e)
    precision_gaps(evaluations)
    for e in evaluations:
        del e["_key"]
    env = environment or {}
    stopped = sorted({e["stopped"] for e in evaluations if e.get("stopped")})
    if stopped:  # the weights themselves: a training that did not finish
        model = {**model, "stopped": "; ".join(stopped)}
    return {"card_version": 1, "model": model, "evaluations": evaluations,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tool": {"name": TOOL, "git_revision": env.get("git"),
                     "versions": {k: env.get(k) for k in ("torch", "open_clip", "python") if env.get(k)}}}


def write_card(run_dir: str | Path, checkpoint: str, model: dict, environment: dict | None = None) -> Path:
    """`<run>/model_card.json` from every results row of the weights `checkpoint` in the run folder."""
    run_dir = Path(run_dir)
    rows = [r for r in read_results(run_dir) if r.get("checkpoint") == checkpoint]
    path = run_dir / CARD_NAME
    path.write_text(json.dumps(build_card(rows, model, environment), indent=2) + "\n")
    return path


# --- leaderboard ----------------------------------------------------------------------------------------
def find_cards(folders: list[str]) -> list[Path]:
    cards = []
    for folder in folders:
        p = Path(folder)
        if p.is_file() and p.name == CARD_NAME:
            cards.append(p)
        elif p.is_dir():
            cards += sorted(p.rglob(CARD_NAME))
    return cards


# What a card written before evaluations carried `setting` holds under other names (card field -> setting key).
OLD_CARD_FIELDS = {"attack": "attacks", "aa_version": "autoattack_version"}


def evaluation_setting(e: dict) -> tuple:
    """The full setting of a card's evaluation (GROUP_KEYS, then the precision): what one ranking shares."""
    s = dict(e.get("setting") or {})
    if not s:  # an older card: the same values from its fields
        s = {k: e.get(OLD_CARD_FIELDS.get(k, k)) for k in GROUP_KEYS + ("precision",)}
        s["attack"] = ",".join(s["attack"] or [])
        s["norm"] = {v: k for k, v in THREAT.items()}.get(e.get("threat_model"), e.get("threat_model"))
        for k, default in SETTING_DEFAULTS.items():  # fields older still than the card's other fields
            if OLD_CARD_FIELDS.get(k, k) not in e:
                s[k] = default(s)
    return tuple(s.get(k) for k in GROUP_KEYS) + (s.get("precision"),)


def setting_title(e: dict) -> str:
    """The challenge table's title of this setting (reports/tables.py), e.g. 'PGD-100, ε = 1/255, step 1/255,
    l_inf, amp'."""
    key = evaluation_setting(e)
    return group_title(key[:-1], [key[-1]] if key[-1] else [])


def leaderboard(cards: list[dict]) -> str:
    """One ranking per full evaluation setting (and number of datasets), by headline robust accuracy (ties:
    clean). A model stopped before its schedule or measured on partial test sets says so in Notes."""
    boards: dict[tuple, list] = {}
    for card in cards:
        for e in card["evaluations"]:
            boards.setdefault((evaluation_setting(e), e["means"]["all"]["datasets"]), []).append((card, e))
    blocks = []
    for (key, n_datasets), entries in boards.items():
        title = f"{setting_title(entries[0][1])} | {n_datasets} datasets"
        entries.sort(key=lambda ce: (-ce[1]["headline"]["robust"], -ce[1]["headline"]["clean"]))
        lines = [f"### {title}", "", "| # | Model | Arch | Robust | Clean | Harmonic | Strict 15 robust | At chance | "
                 "Precision gap | Source | Notes |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for i, (card, e) in enumerate(entries, 1):
            m, h = card["model"], e["headline"]
            strict = e["means"].get("strict_zero_shot_15")
            gap = e.get("precision_gap")
            gap_text = (f"{gap['points']:+.2f}{' ⚠' if gap['possible_gradient_masking'] else ''}" if gap else "")
            strict_text = f"{strict['robust']:.2f}" if strict else "–"
            notes = ([e["stopped"]] if e.get("stopped") else []) + list(e.get("partial", []))
            lines.append(f"| {i} | {m.get('name')} | {m.get('arch')} | {h['robust']:.2f} | {h['clean']:.2f} | "
                         f"{h['harmonic']:.2f} | {strict_text} | "
                         f"{', '.join(e['at_chance']) or '–'} | {gap_text or '–'} | {m.get('source')} | "
                         f"{'; '.join(notes) or '–'} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else "no evaluations in these cards\n"


def leaderboard_main(folders: list[str]) -> int:
    paths = find_cards(folders)
    if not paths:
        raise SystemExit(f"no {CARD_NAME} under {' '.join(folders)}: evaluate first "
                         f"(python tga_zsr.py --eval_only ...), every evaluation writes one")
    cards = [json.loads(p.read_text()) for p in paths]
    print(leaderboard(cards), end="")
    print(f"({len(cards)} cards: {', '.join(str(p) for p in paths)})")
    return 0
