"""The code's layout (README "How the code is laid out"): imports flow one way, no project module is
imported inside a function, no module outside tests/ is over 450 lines.

    python -m pytest -q tests/test_layout.py
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450
PACKAGES = ("datasets", "methods", "engine", "reports")


def project_modules() -> dict[str, Path]:
    """Module name -> file, for the root scripts and the datasets package."""
    mods = {p.stem: p for p in ROOT.glob("*.py")}
    for package in PACKAGES:
        for p in (ROOT / package).glob("*.py"):
            mods[package if p.stem == "__init__" else f"{package}.{p.stem}"] = p
    return mods


def imported_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return []


def project_imports(tree: ast.AST, mods: dict) -> set[str]:
    return {n for node in ast.walk(tree) for n in imported_names(node) if n in mods}


def test_imports_form_no_cycle():
    mods = project_modules()
    graph = {m: project_imports(ast.parse(p.read_text()), mods) - {m} for m, p in mods.items()}
    # the package `datasets` may import its submodules (it re-exports them); nothing else may import up
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_function_level_import_of_a_project_module():
    mods = project_modules()
    offenders = []
    for name, path in mods.items():
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    hits = [n for n in imported_names(node) if n in mods]
                    if hits:
                        offenders.append(f"{path.name}:{node.lineno} {hits[0]}")
    assert not offenders, offenders


def test_no_module_over_the_line_limit():
    long = {p.name: n for p in project_modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_checker_sees_a_cycle_and_a_late_import(tmp_path):
    """The two checks above can fail: a toy tree with a cycle and a function-level import."""
    a = ast.parse("import b\ndef f():\n    import c\n")
    mods = {"a": None, "b": None, "c": None}
    assert project_imports(a, mods) == {"b", "c"}
    late = [n for fn in ast.walk(a) if isinstance(fn, ast.FunctionDef) for node in ast.walk(fn)
            for n in imported_names(node) if n in mods]
    assert late == ["c"]
