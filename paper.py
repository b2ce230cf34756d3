"""Every table of the paper with one command each (docs/paper_tables.md), beside the paper's own numbers.

A table is declared once in `configs/paper/<id>.yaml` (its rows, evaluations and layout; see
paper_tables.py). This script resolves its runs (paper_runs.py: shared between tables, never
computed twice), says what is done and what remains, runs what remains with tga_zsr.py (one
run after the other in this process, one run per GPU with `--gpus`, or a SLURM job array through
submitit with `--submitit slurm`), and prints the tables from whatever has finished: Markdown,
CSV and LaTeX in `<out>/tables/`, each cell "ours (paper, Δ)", pending cells marked.

    python paper.py --list                          # every table: what it varies, runs, data, mini form
    python paper.py T7 --plan                       # runs / evaluations needed, done, to do; hours, disk; missing data
    python paper.py T7 --dry_run                    # cost per table, then the tga_zsr.py commands of what remains
    python paper.py T7                              # run what remains, then print the tables (= bash main.sh paper T7)
    python paper.py T1 T3 T6 --gpus 0,1,2,3         # one run per GPU
    python paper.py T6 --mini --jobs 2              # two runs at once on the CPU, one thread each (2 cores)
    python paper.py all --submitit slurm --slurm_partition gpu --no_wait   # job array (sbatch needed); later: --table
    python paper.py all --submitit slurm --slurm_account proj --slurm_gres gpu:a100:1 --dry_run   # the sbatch line
    python paper.py T7 --table                      # print from whatever has finished
    python paper.py T7 --mini                       # the mini world on a CPU (= bash main.sh mini-paper T7)
    python paper.py T7 --mini --seeds 0 -- --max_steps 2 --n_samples 16   # after --: flags for every tga_zsr.py call
"""
from __future__ import annotations

import argparse
import os
import queue
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import tga_zsr
from methods import MINI_LR_FACTOR
from reports.paper_runs import (Run, add_evaluation, device_type, estimate, eval_status, flags_to_argv, make_run,
                        missing_data, results_of, table_costs, training_state)
from reports.paper_tables import (DeclarationError, build_view, directions, has_mini, load_declaration, load_paper_numbers,
                          load_protocols, table_ids, trade_off_figure, view_evals, write_outputs)
from reports.tables import group_title
from engine.settings import DefaultsShown
from engine.results import read_jsonl

ROOT = Path(__file__).resolve().parent


@dataclass
class CostJob:
    key: str
    argv: list
    path: Path


@dataclass
class Plan:
    protocol: str
    out: Path
    decls: list = field(default_factory=list)
    runs: dict = field(default_factory=dict)        # run key -> Run (each once, whatever tables share it)
    cells: dict = field(default_factory=dict)       # table -> row label -> eval name -> [(run key, eval key)]
    costs: dict = field(default_factory=dict)       # cost key -> CostJob
    datasets_of: dict = field(default_factory=dict)  # table -> eval name -> datasets
    titles: dict = field(default_factory=dict)      # table -> eval name -> attack title
    skipped: dict = field(default_factory=dict)     # table -> why it has no form in this protocol


def build_plan(ids: list[str], mini: bool, seeds=None, extra=(), out=None, dev_type: str = "cpu") -> Plan:
    proto = load_protocols()["mini" if mini else "full"]
    plan = Plan("mini" if mini else "full", Path(out or proto["output"]))
    base = (["-c", str(ROOT / proto["config"])] if proto.get("config") else []) + flags_to_argv(proto.get("flags"))
    default_dataset = make_run(base + ["--Method", "clip"], "protocols.yaml", None).settings.train.dataset
    for tid in ids:
        decl = load_declaration(tid)
        if mini and not has_mini(decl):
            plan.skipped[decl["id"]] = decl["mini"]
            continue
        plan.decls.append(decl)
        table_flags = {**decl.get("flags", {}), **(decl.get("mini_flags", {}) if mini else {})}
        needed = list(dict.fromkeys(e for v in decl.get("views", []) if v["layout"] != "cost" for e in view_evals(v)))
        for row in decl["rows"]:
            flags = {**row.get("flags", {}), **(row.get("mini_flags", {}) if mini else {})}
            if mini and "learning_rate" in flags:  # the mini world's rule: the paper's rate × 100
                flags["learning_rate"] = float(f"{float(flags['learning_rate']) * MINI_LR_FACTOR:.12g}")
            row_seeds = seeds or (proto["seeds"] if mini else row.get("seeds", proto["seeds"]))
            where = f"{decl['path']}, row '{row['label']}'"
            by_eval = plan.cells.setdefault(decl["id"], {}).setdefault(row["label"], {})
            for seed in row_seeds:
                argv = base + flags_to_argv(table_flags) + ["--Method", row["method"]] + flags_to_argv(flags) + \
                    ["--seed", str(seed)] + list(extra)
                run = make_run(argv, where, default_dataset)
                if any(v["layout"] == "cost" for v in decl.get("views", [])):
                    key = f"cost-{run.key}"
                    path = plan.out / "cost" / f"{run.name}_{dev_type}.json"
                    plan.costs.setdefault(key, CostJob(key, argv, path))
                    by_eval.setdefault("cost", []).append((key, None))
                    break  # a cost does not depend on the seed
                run = plan.runs.setdefault(run.key, run)
                run.rows.append((decl["id"], row["label"], seed))
                for name in needed:
                    spec = decl["evals"][name]
                    ev_flags = {**spec.get("flags", {}), **(spec.get("mini", {}) if mini else {})}
                    ev, names = add_evaluation(run, flags_to_argv(ev_flags) + list(extra), where)
                    by_eval.setdefault(name, []).append((run.key, ev.key))
                    plan.datasets_of.setdefault(decl["id"], {}).setdefault(name, names)
                    plan.titles.setdefault(decl["id"], {})[name] = group_title(ev.key, [])
    return plan


# --- status, plan, commands ---------------------------------------------------------------------------
def status(plan: Plan, dev_type: str) -> dict:
    """Per run: training state and, per evaluation, (done, to do) datasets; per cost job: done or not."""
    st = {"runs": {}, "costs": {k: j.path.is_file() for k, j in plan.costs.items()}}
    for key, run in plan.runs.items():
        state = training_state(run, plan.out)
        st["runs"][key] = {"train": state, "evals": {ek: eval_status(run, ev, plan.out, dev_type, state)
                                                     for ek, ev in run.evals.items()}}
    return st


def plan_gpus(opts) -> int:
    """The N of "wall clock on N GPUs": --plan_gpus, else the GPUs / jobs / array slots this command would
    use (--gpus, --jobs, --submitit slurm --parallel), else a node of 8."""
    if opts.plan_gpus:
        return opts.plan_gpus
    if opts.gpus:
        return len(opts.gpus.split(","))
    if opts.submitit == "slurm":
        return opts.parallel
    return opts.jobs if opts.jobs > 1 else 8


def cost_lines(plan: Plan, st: dict, opts) -> list[str]:
    unit = "CPU job" if plan.protocol == "mini" else "GPU"
    return ["Cost per table (runs, wall clock of what remains, disk when done):"] + \
        table_costs(plan.runs, st, [d["id"] for d in plan.decls], plan.out, plan_gpus(opts), opts.img_per_s, unit,
                    paper_speed=plan.protocol != "mini")


def print_plan(plan: Plan, st: dict, root_of, opts) -> None:
    print(f"# Plan: {', '.join(d['id'] for d in plan.decls) or '-'} ({plan.protocol} protocol) -> {plan.out}")
    for tid, why in plan.skipped.items():
        print(f"  {tid}: no mini form ({why})")
    counts = {"done": 0, "partial": 0, "todo": 0, "none": 0}
    for key, run in plan.runs.items():
        state, step = st["runs"][key]["train"]
        counts[state] += 1
        shared = f" shared by {', '.join(run.tables)}" if len(run.tables) > 1 else ""
        what = {"none": "no training", "partial": f"partial (step {step})"}.get(state, state)
        print(f"  [{what:>12}] {run.name}{shared}")
    print(f"Training runs: {len(plan.runs)} needed, each counted once: {counts['done']} done, {counts['partial']} "
          f"partial, {counts['todo']} to do; {counts['none']} evaluated from their weights (no training)")
    done = sum(len(e[0]) for r in st["runs"].values() for e in r["evals"].values())
    todo = sum(len(e[1]) for r in st["runs"].values() for e in r["evals"].values())
    print(f"Evaluations (run x attack setting x dataset): {done + todo} needed: {done} done, {todo} to do")
    if plan.costs:
        print(f"Cost measurements (bench.py --cost): {len(plan.costs)} needed, "
              f"{sum(st['costs'].values())} done")
    print("Estimated time of what remains:")
    print("\n".join(estimate(plan.runs, st, plan.out)))
    print("\n".join(cost_lines(plan, st, opts)))
    needs = set()
    for key, run in plan.runs.items():
        if st["runs"][key]["train"][0] in ("todo", "partial"):
            needs.add((run.settings.train.dataset, "train"))
        for ek, ev in run.evals.items():
            needs.update((d, "test") for d in st["runs"][key]["evals"][ek][1])
    problems = missing_data(sorted(needs), root_of)
    print("Missing data:" + ("" if problems else " none"))
    for p in problems:
        print(f"  - {p}")


def run_commands(run: Run, plan: Plan, st: dict, device) -> list[list[str]]:
    """The tga_zsr.py argument lists that finish `run`: train (or resume), then each evaluation."""
    out, dev = str(plan.out), (["--device", device] if device else [])
    state = st["runs"][run.key]["train"][0]
    cmds = []
    if state in ("todo", "partial"):
        resume = ["--resume", str(plan.out / run.name)] if state == "partial" else []
        cmds.append(run.argv + ["--output_dir", out, "--name", run.name, "--no_eval"] + resume + dev)
    for ek, ev in run.evals.items():
        todo = st["runs"][run.key]["evals"][ek][1]
        if todo:
            where = ["--resume", str(plan.out / run.name)] if run.trains else []
            cmds.append(ev.argv + ["--testdata", *todo, "--output_dir", out, "--name", run.name, "--eval_only"]
                        + where + dev)
    return cmds


def cost_command(job: CostJob, device) -> list[str]:
    return [sys.executable, str(ROOT / "bench.py"), "--cost", "--json", str(job.path), *job.argv] + \
        (["--device", device] if device else [])


# --- running ----------------------------------------------------------------------------------------------
def _call(argv: list[str], name: str) -> bool:
    print(f"[paper] python tga_zsr.py {shlex.join(argv)}", flush=True)
    try:
        return tga_zsr.main(argv) == 0
    except SystemExit as e:  # a missing dataset, a bad flag: say it, keep going with the other runs
        print(f"[paper] {name}: {e}", flush=True)
        return False


def run_status(run: Run, plan: Plan, dev_type: str) -> dict:
    train = training_state(run, plan.out)
    return {"runs": {run.key: {"train": train, "evals": {ek: eval_status(run, ev, plan.out, dev_type, train)
                                                         for ek, ev in run.evals.items()}}}}


def execute(key: str, plan: Plan, device) -> bool:
    """Finish one run (or cost job) in this process; True when everything it needed succeeded."""
    if key in plan.costs:
        plan.costs[key].path.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.run(cost_command(plan.costs[key], device)).returncode == 0
    run, dev_type = plan.runs[key], device_type(device, False)
    cmds = run_commands(run, plan, run_status(run, plan, dev_type), device)
    if cmds and "--no_eval" in cmds[0]:  # train first: the evaluations need the final checkpoint's step
        if not _call(cmds[0], run.name):
            return False
        cmds = run_commands(run, plan, run_status(run, plan, dev_type), device)
    return all(_call(argv, run.name) for argv in cmds)


class SubmititRun:
    """One run as a submitit job. On preemption or timeout submitit calls `checkpoint`, which requeues
    the same job: it starts again from the plan, so training resumes exactly from last.pt and the
    evaluations already in results.jsonl are skipped."""

    def __init__(self, argv: list[str]):
        self.argv = list(argv)

    def __call__(self) -> int:
        rc = main(self.argv)
        if rc:
            raise RuntimeError(f"python paper.py {shlex.join(self.argv)} exited with {rc}")
        return rc

    def checkpoint(self, *args, **kwargs):
        import submitit  # optional dependency: only --submitit needs it
        return submitit.helpers.DelayedSubmission(SubmititRun(self.argv))


def child_argv(opts, key: str, device) -> list[str]:
    argv = [*opts.tables, "--out", str(opts.out_resolved), "--only", key]
    argv += (["--mini"] if opts.mini else []) + (["--seeds", *map(str, opts.seeds)] if opts.seeds else [])
    return argv + (["--device", device] if device else []) + ["--", *opts.extra]


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity; a container's limit), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def work_slots(opts) -> list[tuple[str, dict, str]]:
    """(name, environment, device) of each worker: one per GPU of `--gpus`, or `--jobs N` on the CPU, each
    with its share of the cores as torch threads (the tiny model gains little from a second thread, so two
    runs at once on two cores finish a mini table sooner than one run after the other on both)."""
    if opts.gpus:
        return [(f"GPU {g}", {"CUDA_VISIBLE_DEVICES": g}, opts.device or "cuda:0") for g in opts.gpus.split(",")]
    threads = max(1, usable_cpus() // opts.jobs)
    return [(f"job {i}", {"OMP_NUM_THREADS": str(threads)}, opts.device or "cpu") for i in range(opts.jobs)]


def in_parallel(keys: list[str], opts) -> list[str]:
    """Independent runs at once: a worker per slot takes the next run and runs `paper.py --only KEY` on it."""
    todo, failed = queue.Queue(), []
    for k in keys:
        todo.put(k)
    logs = opts.out_resolved / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def worker(name: str, env: dict, device: str):
        while True:
            try:
                k = todo.get_nowait()
            except queue.Empty:
                return
            log = logs / f"{k}.log"
            with open(log, "w") as f:
                rc = subprocess.run([sys.executable, str(ROOT / "paper.py"), *child_argv(opts, k, device)],
                                    env={**os.environ, **env}, stdout=f, stderr=subprocess.STDOUT).returncode
            print(f"[paper] {name}: {k} " + ("done" if rc == 0 else f"failed (exit {rc}), see {log}"), flush=True)
            if rc:
                failed.append(k)

    threads = [threading.Thread(target=worker, args=slot) for slot in work_slots(opts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failed


JOB_NAME = "tga_zsr_paper"
SLURM_OPTIONS = ("partition", "account", "qos", "mem", "gres", "constraint")  # --slurm_<name>, as sbatch names them


def check_submitit(opts) -> None:
    """`--submitit slurm` means SLURM: without `sbatch` on PATH it is refused, never run here instead
    (submitit's AutoExecutor falls back to local processes when it finds no cluster); the --slurm_*
    options are refused without it (they would be ignored)."""
    given = [f"--slurm_{k}" for k in SLURM_OPTIONS + ("additional",) if vars(opts)[f"slurm_{k}"]]
    if given and opts.submitit != "slurm":
        raise SystemExit(f"{', '.join(given)}: SLURM options, for --submitit slurm only (they would be ignored)")
    if opts.submitit == "slurm" and shutil.which("sbatch") is None:
        raise SystemExit("--submitit slurm: sbatch is not on PATH, so this machine cannot submit SLURM jobs. "
                         "Run paper.py on a login node of the cluster (`which sbatch` finds it there; some clusters "
                         "need `module load slurm`). To run the jobs as processes on this machine instead, say so: "
                         "--submitit local, or --gpus 0,1,...")


def slurm_additional(items: list[str]) -> dict:
    """`--slurm_additional KEY=VALUE ... FLAG`: sbatch options submitit has no parameter for (a bare name is
    a flag, e.g. `exclusive`)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise SystemExit(f"--slurm_additional {item!r}: give sbatch options as NAME=VALUE or NAME")
        out[key] = value if sep else True
    return out


def slurm_parameters(opts) -> dict:
    """The sbatch parameters of every job, in submitit's SlurmExecutor names: one GPU per job (or the
    --slurm_gres given), --cpus, --time_min, --parallel jobs of the array at once, the --slurm_* options."""
    params = {"job_name": JOB_NAME, "time": opts.time_min, "cpus_per_task": opts.cpus,
              "array_parallelism": opts.parallel}
    if not opts.slurm_gres:
        params["gpus_per_node"] = 1
    params.update({k: vars(opts)[f"slurm_{k}"] for k in SLURM_OPTIONS if vars(opts)[f"slurm_{k}"]})
    if opts.slurm_additional:
        params["additional_parameters"] = slurm_additional(opts.slurm_additional)
    return params


def submitit_module():
    try:
        import submitit  # optional dependency: only --submitit needs it
    except ImportError:
        raise SystemExit("--submitit needs the submitit package: pip install submitit")
    return submitit


def sbatch_line(opts, n_jobs: int) -> str:
    """The sbatch command of the job array, with the options submitit writes into its job file (rendered by
    submitit itself, so that the line is the one a job gets)."""
    folder = opts.out_resolved / "submitit"
    text = submitit_module().slurm.slurm._make_sbatch_string(command="true", folder=folder, map_count=n_jobs,
                                                             **slurm_parameters(opts))
    flags = [line[len("#SBATCH "):] for line in text.splitlines() if line.startswith("#SBATCH ")]
    return "sbatch " + " ".join(flags) + f" JOB_FILE  # JOB_FILE: the script submitit writes in {folder}"


def with_submitit(keys: list[str], opts) -> list[str]:
    """A SLURM job array (`--submitit slurm`) or local processes (`--submitit local`) through submitit."""
    submitit = submitit_module()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    folder = str(opts.out_resolved / "submitit")
    if opts.submitit == "slurm":  # SLURM itself, never AutoExecutor's guess
        try:
            ex = submitit.SlurmExecutor(folder=folder)
        except RuntimeError as e:  # e.g. srun missing beside sbatch
            raise SystemExit(f"--submitit slurm: {e}")
        ex.update_parameters(**slurm_parameters(opts))
    else:
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        ex.update_parameters(timeout_min=opts.time_min, name=JOB_NAME)
    with ex.batch():
        jobs = [ex.submit(SubmititRun(child_argv(opts, k, opts.device))) for k in keys]
    print(f"[paper] submitted {len(jobs)} job(s): {', '.join(str(j.job_id) for j in jobs)} "
          f"(logs in {opts.out_resolved / 'submitit'})", flush=True)
    if opts.no_wait:
        return []
    failed = []
    for k, j in zip(keys, jobs):
        try:
            j.result()
        except Exception as e:  # submitit re-raises the job's failure here
            print(f"[paper] job {j.job_id} ({k}) failed: {str(e).splitlines()[-1] if str(e) else type(e).__name__}")
            failed.append(k)
    return failed


# --- tables -------------------------------------------------------------------------------------------------
def print_tables(plan: Plan, dev_type: str) -> list[Path]:
    numbers, written = load_paper_numbers(), []
    out_dir = plan.out / "tables"
    for decl in plan.decls:
        tid, ours = decl["id"], {}
        for label, by_eval in plan.cells.get(tid, {}).items():
            for ev_name, pairs in by_eval.items():
                if ev_name == "cost":
                    ours.setdefault(label, {})["cost"] = [
                        (read_jsonl(plan.costs[k].path) or [None])[-1] for k, _ in pairs]
                    continue
                ours.setdefault(label, {})[ev_name] = [
                    results_of(plan.runs[rk], plan.runs[rk].evals[ek], plan.out, dev_type) for rk, ek in pairs]
        tables, headline = [], {}
        for view in decl.get("views", []):
            t, h = build_view(decl, view, ours, plan.datasets_of.get(tid, {}), numbers, plan.protocol == "mini",
                              plan.titles.get(tid, {}))
            tables += t
            headline = headline or h
        if not tables:
            continue
        stem = f"{tid}_mini" if plan.protocol == "mini" else tid
        written += write_outputs(tables, out_dir, stem)
        lines, _ = directions(decl, headline)
        md = (out_dir / f"{stem}.md").read_text()
        if lines:
            md += "\n### Direction: the change of the mean between rows, paper vs ours\n\n" + "\n".join(lines) + "\n"
            (out_dir / f"{stem}.md").write_text(md)
        if decl.get("figure") == "trade_off":
            written += trade_off_figure(headline, out_dir, f"{tid} ({plan.protocol} protocol): ours filled, paper hollow",
                                        f"{stem}_trade_off")
        print(f"\n## {tid}: {decl['title']} ({plan.protocol} protocol)\n\n{md}")
    print("\n".join(f"written: {p}" for p in written if p.suffix in (".md", ".png")))
    return written


# --- command line -------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("paper.py", description="every table of the paper, beside the paper's numbers",
                                epilog="flags after -- go to every tga_zsr.py command of the tables",
                                formatter_class=DefaultsShown, allow_abbrev=False)
    p.add_argument("tables", nargs="*", help="table ids (T1 T3 T4 T5 T6 T7 T8 T9 T11 T13 T14 T18 T20 CT) or all")
    p.add_argument("--list", action="store_true", help="every table: what it varies, its runs and data, its mini form")
    p.add_argument("--mini", action="store_true", help="the mini world on a CPU (bash main.sh mini-paper)")
    p.add_argument("--plan", action="store_true", help="say what is needed, done and to do, and stop")
    p.add_argument("--dry_run", action="store_true", help="print the commands of what remains, and stop")
    p.add_argument("--table", action="store_true", help="print the tables from what has finished, run nothing")
    p.add_argument("--out", default=None, help="where runs and tables go (default: the protocol's output folder)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of every row (default: protocol's)")
    p.add_argument("--device", default=None, help="device of every run (default: each run's --device, auto)")
    p.add_argument("--gpus", default=None, help="comma-separated GPU ids: independent runs go one per GPU")
    p.add_argument("--jobs", type=int, default=1,
                   help="on the CPU: this many independent runs at once, the cores shared out as their threads")
    p.add_argument("--submitit", choices=["slurm", "local"], default=None,
                   help="submit each run as a submitit job: 'slurm' a SLURM job array (refused where sbatch is "
                        "not on PATH), 'local' processes on this machine")
    p.add_argument("--time_min", type=int, default=24 * 60, help="submitit: time limit per job (minutes)")
    p.add_argument("--cpus", type=int, default=8, help="submitit: CPUs per job")
    p.add_argument("--parallel", type=int, default=16, help="submitit: jobs of the array running at once")
    g = p.add_argument_group("SLURM (--submitit slurm; --dry_run prints the sbatch line)")
    g.add_argument("--slurm_partition", default=None, help="sbatch --partition")
    g.add_argument("--slurm_account", default=None, help="sbatch --account (the project the hours are billed to)")
    g.add_argument("--slurm_qos", default=None, help="sbatch --qos (quality of service)")
    g.add_argument("--slurm_mem", default=None, help="sbatch --mem: memory per node, e.g. 64G")
    g.add_argument("--slurm_gres", default=None,
                   help="sbatch --gres, e.g. gpu:a100:1 (in place of the default one GPU per job, --gpus-per-node=1)")
    g.add_argument("--slurm_constraint", default=None, help="sbatch --constraint, e.g. a100")
    g.add_argument("--slurm_additional", nargs="+", default=None, metavar="NAME=VALUE",
                   help="any other sbatch option, e.g. reservation=week exclusive (a bare NAME is a flag)")
    p.add_argument("--no_wait", action="store_true", help="submitit: submit and return (print later with --table)")
    g = p.add_argument_group("Cost of a plan (--plan, --dry_run)")
    g.add_argument("--plan_gpus", type=int, default=None, metavar="N",
                   help="the wall clock is given on 1 and on N GPUs (default: the count of --gpus, --jobs or "
                        "--parallel with --submitit slurm, else 8)")
    g.add_argument("--img_per_s", type=float, default=None,
                   help="the speed to project with: TGA-ZSR training images/s of one GPU (bash main.sh doctor "
                        "measures it); default: the speed of earlier runs under --out, else the paper's RTX 3090")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one run key: the jobs of --gpus/--jobs/--submitit
    return p


def print_list() -> None:
    full = build_plan(table_ids(), mini=False)
    protocols = load_protocols()
    print(f"Protocols: full = {protocols['full']['description']}; mini = {protocols['mini']['description']}\n")
    for decl in [load_declaration(t) for t in table_ids()]:
        tid = decl["id"]
        runs = [r for r in full.runs.values() if tid in r.tables]
        shared = [r for r in runs if len(r.tables) > 1]
        data = sorted({str(r.settings.train.dataset) for r in runs if r.trains}
                      | {d for ds in full.datasets_of.get(tid, {}).values() for d in ds})
        evals = "; ".join(f"{n}: {full.titles[tid][n]}" for n in full.titles.get(tid, {}))
        print(f"{tid}: {decl['title']}\n    varies: {decl.get('varies', '')}")
        if runs:
            print(f"    runs: {len(runs)} ({len(shared)} shared with other tables); evaluations: {evals}")
        else:
            print(f"    measurements: {len(decl['rows'])} rows with bench.py --cost on the device it runs on")
        print(f"    data: {', '.join(data) or 'the training set of each row'}")
        print(f"    mini form: {'yes: python paper.py ' + tid + ' --mini' if has_mini(decl) else 'none — ' + decl['mini']}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    opts = get_args_parser().parse_args(argv)
    opts.extra = extra
    check_submitit(opts)
    try:
        if opts.list:
            print_list()
            return 0
        if not opts.tables:
            raise SystemExit("name the tables (e.g. T7, or all); python paper.py --list shows them")
        ids = table_ids() if [t.lower() for t in opts.tables] == ["all"] else opts.tables
        dev_type = device_type(opts.device, bool(opts.gpus or opts.submitit == "slurm"))
        plan = build_plan(ids, opts.mini, opts.seeds, extra, opts.out, dev_type)
    except DeclarationError as e:
        print(f"paper.py: {e}", file=sys.stderr)
        return 2
    opts.out_resolved = plan.out
    if opts.only:
        return 0 if execute(opts.only, plan, opts.device) else 1
    st = status(plan, dev_type)
    root_of = (lambda name: next((r.settings.train.root for r in plan.runs.values()), "./data"))
    if opts.plan:
        print_plan(plan, st, root_of, opts)
        return 0
    pending = [k for k, r in st["runs"].items() if r["train"][0] in ("todo", "partial")
               or any(e[1] for e in r["evals"].values())] + [k for k, done in st["costs"].items() if not done]
    if opts.dry_run:
        print("\n".join(f"# {line}" for line in cost_lines(plan, st, opts)))
        if opts.submitit == "slurm" and pending:
            print(f"# one SLURM job array of {len(pending)} job(s) (each is a '# job:' line below), submitted as:")
            print(sbatch_line(opts, len(pending)))
        for k in pending:
            if opts.gpus or opts.submitit or opts.jobs > 1:
                print(f"# job: python paper.py {shlex.join(child_argv(opts, k, opts.device))}")
            if k in plan.costs:
                print(shlex.join(cost_command(plan.costs[k], opts.device)))
            else:
                for cmd in run_commands(plan.runs[k], plan, st, opts.device):
                    print("python tga_zsr.py " + shlex.join(cmd))
        return 0
    failed = []
    if not opts.table and pending:
        t0 = time.time()
        print(f"[paper] {len(pending)} run(s) to finish ({plan.protocol} protocol) -> {plan.out}", flush=True)
        if opts.submitit:
            failed = with_submitit(pending, opts)
        elif opts.gpus or opts.jobs > 1:
            failed = in_parallel(pending, opts)
        else:
            failed = [k for k in pending if not execute(k, plan, opts.device)]
        print(f"[paper] finished in {time.time() - t0:.0f} s; {len(failed)} failed", flush=True)
    print_tables(plan, dev_type)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
