"""The package's boundaries hold: every module declares its public names, no module imports another's private
names, and the import graph has no cycle (not even one hidden in a function-level import)."""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

import leantorch

SRC = pathlib.Path(leantorch.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ("leantorch", *path.relative_to(SRC).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The leantorch modules an ``import from`` statement in ``module`` reads."""
    if node.level:
        base = module.split(".") if module in PACKAGES else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join([*base, node.module] if node.module else base)
    else:
        prefix = node.module or ""
    return [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]


def _runtime_imports(module: str) -> set[str]:
    """Every leantorch module ``module`` imports when it runs (top level or inside functions), except imports
    under ``if TYPE_CHECKING:``, which only type checkers follow."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                found.update(_resolve(module, child))
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != module}


def test_no_import_cycles() -> None:
    # Packages import their children by design (``leantorch/__init__.py`` re-exports); cycles are between modules.
    graph = {m: _runtime_imports(m) - PACKAGES for m in MODULES if m not in PACKAGES}
    cycles, state = [], dict.fromkeys(graph, 0)

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif state[nxt] == 0:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if state[start] == 0:
            walk(start, [start])
    assert cycles == []


def test_no_private_leantorch_name_is_imported_from_another_module() -> None:
    offenders = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("leantorch")):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                offenders += [f"{module}: {name}" for name in private]
    assert offenders == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m not in PACKAGES and not m.endswith("__main__")))
def test_every_module_declares_its_public_names(module: str) -> None:
    loaded = importlib.import_module(module)
    public = getattr(loaded, "__all__", None)
    assert public is not None, f"{module} has no __all__"
    assert [n for n in public if not hasattr(loaded, n)] == []
    assert len(set(public)) == len(public)
