"""Every command printed in the documentation is pasteable as printed, and the docs keep their shape.

The commands are read from the fenced code blocks of README.md, docs/**/*.md, datasets/README.md and
checkpoints/README.md: ```bash, ```sh, ```shell and ```console blocks (console: the lines after `$ `),
and unlabelled blocks that hold a command. ```text, ```python, ```yaml and ```json blocks are not
commands. Each command is checked by the parser that would read it, without running anything:

* `python tga_zsr.py ARGS`, `torchrun [...] tga_zsr.py ARGS`: `engine.settings.parse_args(ARGS)`;
* `python X.py ARGS` for the other entry scripts and `python -m datasets.prepare ARGS`:
  `X.get_args_parser().parse_args(ARGS)` (report.py's parser has subcommands);
* `bash main.sh JOB ARGS`: JOB is one of the jobs `bash main.sh --help` lists (one job per line, the
  job's name first), and ARGS parse with the parser of the script the job passes them to;
* `python -m pytest ARGS` / `bash main.sh test ARGS`: the test files named exist;
* `python -c CODE`: CODE compiles.

A few lines are not project commands and are skipped by name (`SKIPPED`); anything else fails, so a
new command in the docs cannot escape the check. A placeholder such as `<run>` becomes the string
`RUN` (the parsers take any string there); the docs prefer pasteable names such as `checkpoints/RUN`.

    python -m pytest -q tests/test_docs.py
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300

# First words of lines that are not commands of this project: they are skipped, and nothing else is.
SKIPPED = {"pip", "git", "huggingface-cli", "export", "cd", "source"}
# Entry scripts: each has get_args_parser() (tga_zsr.py's is engine.settings.parse_args, layered defaults).
ENTRY_SCRIPTS = {"tga_zsr.py", "paper.py", "report.py", "visualize.py", "bench.py", "doctor.py",
                 "pretrain_tiny.py", "audit.py", "gpu_check.py", "wheelhouse.py"}
ENTRY_MODULES = {"datasets.prepare"}
# What main.sh passes a job's arguments to (the jobs of the method registry go to tga_zsr.py).
JOB_TARGET = {"smoke": "tga_zsr.py", "smoke-all": "tga_zsr.py", "mini": "tga_zsr.py", "all": "tga_zsr.py",
              "paper": "paper.py", "mini-paper": "paper.py", "doctor": "doctor.py", "audit": "audit.py",
              "gpu-check": "gpu_check.py",
              "test": "pytest", "help": None, "--help": None, "-h": None}
COMMAND_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)[^\n]*$")
PLACEHOLDER = re.compile(r"<[A-Za-z][\w .-]*>")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SPEC_MENTION = re.compile(r"\bSPEC\b")


@dataclass(frozen=True)
class Command:
    file: str
    line: int
    text: str

    def __str__(self):
        return f"{self.file}:{self.line}: {self.text}"


# --- reading the docs ---------------------------------------------------------------------------------------
def doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    files += [p for p in (ROOT / "datasets" / "README.md", ROOT / "checkpoints" / "README.md") if p.is_file()]
    return files


def code_blocks(text: str):
    """(language, first line number, lines) of every fenced block."""
    lines, i = text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        body, start = [], i + 2
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        yield lang, start, body


def looks_like_command(line: str) -> bool:
    words = line.strip().removeprefix("$ ").split()
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    return bool(words) and (words[0] in {"python", "python3", "bash", "torchrun", "sh"} | SKIPPED
                            or words[0].endswith("/python") or words[0].endswith(".py"))


# A block under this marker runs a method the reader has just added: tests/test_adding_a_method.py adds it
# to a copy of the repository and runs those commands there, so they are not parsed here.
RUN_ELSEWHERE = "<!-- run after adding the files above -->"


def commands_of(text: str, file: str = "<doc>") -> list[Command]:
    """The logical command lines of a Markdown text: continuations joined, blank and comment lines left out."""
    out = []
    lines = text.splitlines()
    for lang, start, body in code_blocks(text):
        if start >= 3 and lines[start - 3].strip() == RUN_ELSEWHERE:
            continue
        if lang == "console":
            body = [b[2:] if b.startswith("$ ") else "" for b in body]
        elif lang == "":
            if not any(looks_like_command(b) for b in body):
                continue  # an output example, not commands
        elif lang not in COMMAND_LANGS:
            continue
        pending, first = "", None
        for n, raw in enumerate(body):
            line = raw.rstrip()
            if first is None:
                first = start + n
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            full, pending = (pending + line).strip(), ""
            if full and not full.startswith("#"):
                out.append(Command(file, first, full))
            first = None
        if pending.strip():
            out.append(Command(file, first, pending.strip()))
    return out


def all_commands() -> list[Command]:
    return [c for f in doc_files() for c in commands_of(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]


def words_of(text: str) -> list[list[str]]:
    """shell words of each simple command of a line (split at && ; |), comments dropped, placeholders
    replaced by RUN, leading VAR=value assignments and a `$ ` prompt removed."""
    lexer = shlex.shlex(PLACEHOLDER.sub("RUN", text), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    parts, cur = [], []
    for w in lexer:
        if w and set(w) <= set(";&|"):
            parts.append(cur)
            cur = []
        else:
            cur.append(w)
    parts.append(cur)
    out = []
    for words in parts:
        while words and ENV_ASSIGNMENT.match(words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


# --- the parsers --------------------------------------------------------------------------------------------
def parse_with(target: str, args: list[str]) -> None:
    """Raise AssertionError with argparse's message if `args` do not parse for `target`."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if target == "tga_zsr.py":
                from engine.settings import parse_args
                parse_args(args)
            elif target == "paper.py" and "--" in args:  # flags after -- go to every tga_zsr.py command
                cut = args.index("--")
                parse_with("paper.py", args[:cut])
                parse_with("tga_zsr.py", args[cut + 1:])
            elif target == "pytest":
                missing = [a for a in args if a.startswith("tests") and not (ROOT / a.split("::")[0]).exists()]
                assert not missing, f"no such test file: {missing}"
            else:
                module = importlib.import_module(target.removesuffix(".py"))
                assert hasattr(module, "get_args_parser"), f"{target} has no get_args_parser()"
                module.get_args_parser().parse_args(args)
    except SystemExit as e:
        if e.code not in (0, None):  # --help exits 0 and is pasteable
            raise AssertionError(f"{target} {shlex.join(args)}: {err.getvalue().strip() or e}") from None
    except ModuleNotFoundError as e:
        raise AssertionError(f"{target}: cannot import it ({e})") from None


@functools.cache
def main_sh_help() -> tuple[int, str, str]:
    """`bash main.sh --help`, run once (in this environment: it must not create a .venv)."""
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    out = subprocess.run(["bash", "main.sh", "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    return out.returncode, out.stdout, out.stderr


def main_sh_jobs() -> list[str]:
    """The jobs `bash main.sh --help` lists: the first word of each line (after an optional `bash main.sh`)."""
    rc, stdout, stderr = main_sh_help()
    assert rc == 0, f"bash main.sh --help failed ({rc}): {stderr.strip()[-300:]}"
    jobs = []
    for line in stdout.splitlines():
        words = line.strip().split()
        if words[:1] == ["methods:"]:  # one job per method of the registry
            jobs += words[1:]
            continue
        if words[:2] == ["bash", "main.sh"]:
            words = words[2:]
        if words and re.fullmatch(r"-{0,2}[a-z][a-z0-9_-]*", words[0]):
            jobs.append(words[0])
    return jobs


def method_names() -> set[str]:
    from methods import available_methods
    return set(available_methods())


def check_python(words: list[str]) -> None:
    args = words[1:]
    assert args, "python with no script"
    if args[0] in ("-m", "-c"):
        assert len(args) > 1, f"python {args[0]} with nothing after it"
    if args[:1] == ["-m"]:
        module, rest = args[1], args[2:]
        if module == "pytest":
            return parse_with("pytest", rest)
        if module in ENTRY_MODULES:
            return parse_with(module, rest)
        if module == "torch.distributed.run":
            return check_torchrun(["torchrun", *rest])
        raise AssertionError(f"python -m {module}: not a module of this project's commands")
    if args[:1] == ["-c"]:
        compile(args[1], "<python -c>", "exec")
        return
    script = args[0]
    assert script in ENTRY_SCRIPTS, f"{script!r} is not an entry script ({sorted(ENTRY_SCRIPTS)})"
    assert (ROOT / script).is_file(), f"{script} does not exist"
    parse_with(script, args[1:])


def check_torchrun(words: list[str]) -> None:
    scripts = [i for i, w in enumerate(words) if w.endswith(".py")]
    assert scripts, "torchrun without a script"
    i = scripts[0]
    assert words[i] == "tga_zsr.py", f"torchrun runs {words[i]}, not tga_zsr.py"
    parse_with("tga_zsr.py", words[i + 1:])


def check_main_sh(words: list[str]) -> None:
    assert words[1:2] == ["main.sh"], f"bash {shlex.join(words[1:2])}: only main.sh is a project script"
    if len(words) == 2:
        return  # no job: prints the list of jobs
    job, args = words[2], words[3:]
    jobs = main_sh_jobs()
    assert job in jobs or job in ("--help", "-h"), f"job {job!r} is not listed by bash main.sh --help: {jobs}"
    if job in method_names():
        return parse_with("tga_zsr.py", ["--Method", job, *args])
    target = JOB_TARGET.get(job, "unknown")
    if target == "unknown":
        assert not args, f"bash main.sh {job} takes no arguments that this test knows how to check"
        return
    if target is None:
        return
    if job == "smoke":  # main.sh runs tga_zsr.py -c configs/smoke.yaml ARGS
        args = ["-c", "configs/smoke.yaml", *args]
    parse_with(target, args)


def check_command(cmd: Command) -> None:
    for words in words_of(cmd.text):
        head = words[0]
        if head in SKIPPED:
            continue
        if head in ("python", "python3") or head.endswith("/python"):
            check_python(words)
        elif head == "torchrun":
            check_torchrun(words)
        elif head in ("bash", "sh"):
            check_main_sh(words)
        else:
            raise AssertionError(f"{head!r} is neither a project command nor in the skip list {sorted(SKIPPED)}")


COMMANDS = all_commands()


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c.file}:{c.line}" for c in COMMANDS])
def test_doc_command_is_pasteable(cmd):
    try:
        check_command(cmd)
    except AssertionError as e:
        raise AssertionError(f"{cmd}\n    {e}") from None


# --- the extractor itself ----------------------------------------------------------------------------------
SAMPLE = """\
```bash
python tga_zsr.py --Method TGA-ZSR \\
    --Alpha 0.1   # a comment
# a comment line
NPROC=4 bash main.sh tga_zsr
```

```text
| not | a command |
```

```
python paper.py --list
```

```console
$ python visualize.py --loss_curve checkpoints/<run>
output line
```
"""


def test_extractor_reads_continuations_comments_and_block_kinds():
    cmds = [c.text for c in commands_of(SAMPLE)]
    assert cmds == ["python tga_zsr.py --Method TGA-ZSR      --Alpha 0.1   # a comment",
                    "NPROC=4 bash main.sh tga_zsr", "python paper.py --list",
                    "python visualize.py --loss_curve checkpoints/<run>"]
    assert words_of(cmds[0]) == [["python", "tga_zsr.py", "--Method", "TGA-ZSR", "--Alpha", "0.1"]]
    assert words_of(cmds[1]) == [["bash", "main.sh", "tga_zsr"]]
    assert words_of(cmds[3])[0][-1] == "checkpoints/RUN"


def test_unknown_commands_and_bad_flags_fail():
    for text in ("make all", "python train.py", "python tga_zsr.py --no_such_flag 1",
                 "python tga_zsr.py --protocol nonsense", "python -m pytest tests/test_nonexistent.py"):
        with pytest.raises(AssertionError):
            check_command(Command("<sample>", 1, text))
    check_command(Command("<sample>", 1, "python tga_zsr.py --Method TGA-ZSR --Alpha 0.1"))
    check_command(Command("<sample>", 1, "pip install -r requirements.txt && cd data"))


# --- the docs' shape ----------------------------------------------------------------------------------------
def test_readme_is_short():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move a topic into docs/"


LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(path: Path, anchors: bool = False) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return [t if anchors else t.split("#")[0] for t in LINK.findall(text)
            if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_readme_links_the_docs():
    docs = {t for t in relative_links(ROOT / "README.md") if t.startswith("docs/") and t.endswith(".md")}
    existing = {t for t in docs if (ROOT / t).is_file()}
    assert len(existing) >= 3, f"README.md links {sorted(existing)} under docs/: at least 3 topic pages expected"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = [t for t in relative_links(path) if t and not (path.parent / t).exists()]
    assert not broken, f"{path.relative_to(ROOT)} links files that do not exist: {broken}"
    targets = [t.split("#", 1) for t in relative_links(path, anchors=True) if "#" in t]
    bad = [f"{f}#{a}" for f, a in targets if f.endswith(".md") and (path.parent / f).is_file()
           and a not in heading_anchors(path.parent / f)]
    assert not bad, f"{path.relative_to(ROOT)} links headings that do not exist: {bad}"


def spec_mentions(files: list[str]) -> list[str]:
    found = []
    for f in files:
        try:
            text = (ROOT / f).read_text(encoding="utf-8")
        except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
            continue
        found += [f"{f}:{n}" for n, line in enumerate(text.splitlines(), 1) if SPEC_MENTION.search(line)]
    return found


def test_no_file_outside_tests_mentions_the_internal_specification():
    """Users do not have the internal specification: cite the paper, the original code or docs/ instead."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files = [f for f in files if not f.startswith("tests/")]
    assert "README.md" in files and len(files) > 20  # the check reads the repository, not an empty list
    assert SPEC_MENTION.search("the mean over 16 sets (SPEC §5)")  # and it finds a mention where there is one
    found = spec_mentions(files)
    assert not found, f"{len(found)} mention(s) of SPEC outside tests/: {found}"
