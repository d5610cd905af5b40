"""The package's shape, checked: layers import only downwards, no import cycles, no probing of
models by attribute outside their own modules, and long files say why they are long."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "genrec"

# layer -> genrec subpackages it must never import (lower layers never import higher ones)
FORBIDDEN = {
    "models": {"data", "training", "evaluation", "experiments", "serving", "cli", "recommender", "checkpoint"},
    "data": {"models", "training", "evaluation", "experiments", "serving", "cli", "recommender", "checkpoint"},
    "evaluation": {"training", "experiments", "serving", "cli", "recommender"},
    "checkpoint": {"training", "evaluation", "experiments", "serving", "cli", "recommender"},
    "training": {"experiments", "serving", "cli", "recommender"},
    "recommender": {"training", "experiments", "serving", "cli"},
    "experiments": {"serving", "cli"},
}
PROBING_ALLOWED = {"config.py", "__init__.py", "training/sharded_table.py"}  # config fields, lazy API, TorchRec state


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, module: str, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("genrec")}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_layers_import_only_downwards():
    bad = []
    for module, path in _modules().items():
        banned = FORBIDDEN.get(_layer(module), set())
        for imported in _imports(path, module, top_level_only=False):
            if _layer(imported) in banned:
                bad.append(f"{module} imports {imported}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    modules = _modules()
    graph = {m: {i for i in _imports(p, m, top_level_only=True) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ importing its own submodules is not a cycle through the package
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if n.startswith(m + "."):
                continue
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_attribute_probing_outside_models():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("models/") or rel in PROBING_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr"):
                bad.append(f"{rel}:{node.lineno}")
    assert not bad, f"hasattr/getattr outside models/: {bad}"


def test_long_files_say_why():
    bad = []
    for path in SRC.rglob("*.py"):
        lines = path.read_text().splitlines()
        if len(lines) > 350 and "on purpose" not in "\n".join(lines[:15]):
            bad.append(f"{path.relative_to(SRC)} ({len(lines)} lines)")
    assert not bad, f"files over 350 lines without a reason at the top: {bad}"
