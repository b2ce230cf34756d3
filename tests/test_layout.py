"""The code's layout (docs/layout.md): imports flow one way, from the entry scripts down through
reports/, engine/ and methods/ to the leaves (attacks.py, attention.py, datasets/), and no project
module is imported inside a function.

    python -m pytest -q tests/test_layout.py
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("datasets", "methods", "engine", "reports")
# What each part may import: its own layer and the layers below (root scripts other than the leaves are
# entry scripts, the top layer).
LAYERS = {"attacks": 0, "attention": 0, "datasets": 0, "methods": 1, "engine": 2, "reports": 3}
ENTRY = 4


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


def layer(module: str) -> int:
    return LAYERS.get(module.split(".")[0], ENTRY)


def test_imports_go_down_the_layers():
    mods = project_modules()
    upward = [f"{m} -> {n}" for m, p in mods.items() for n in project_imports(ast.parse(p.read_text()), mods)
              if layer(n) > layer(m)]
    assert not upward, upward


def test_the_checker_sees_a_cycle_a_late_import_and_an_upward_import(tmp_path):
    """The checks above can fail: a toy tree with a cycle, a function-level import, an upward import."""
    assert layer("engine.train") > layer("methods.tga_zsr") > layer("attacks") and layer("paper") == ENTRY
    a = ast.parse("import b\ndef f():\n    import c\n")
    mods = {"a": None, "b": None, "c": None}
    assert project_imports(a, mods) == {"b", "c"}
    late = [n for fn in ast.walk(a) if isinstance(fn, ast.FunctionDef) for node in ast.walk(fn)
            for n in imported_names(node) if n in mods]
    assert late == ["c"]
