"""The layout holds: imports only point down the layers, no module imports itself back
round a circle, the math packages import no Flower, and no function of server/ or
clients/ grows past 60 lines.

Imports are read from the source (ast), lazy ones inside functions included: a lazy
import is still a dependency, only a later one.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("scenarios", "strategies", "clients", "server")

# Lowest first. A module may import its own unit and the units of lower layers only.
LAYERS: tuple[set[str], ...] = (
    {"scenarios"},
    {"strategies"},
    {"clients.models", "clients.node"},
    {"clients.data"},
    {"clients.training"},
    {"clients.checks", "clients.app"},
    {"server.runs", "server.security"},
    {"server.tracking"},
    {"server.serverapp", "server.orchestration"},
    {"server.api"},
    {"server.cli"},
)
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}
PURE = ("clients.training", "clients.models")  # math and models: no Flower, no web
LONGEST_FUNCTION = 60


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = modules()


def owner(target: str) -> str | None:
    """The project module `target` (a dotted import) names, or None outside the project."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def imported(path: Path) -> set[str]:
    """Every top-level name and project module the file imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def project_imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for target in imported(path):
            module = owner(target) if target.split(".")[0] in PACKAGES else None
            # A package's own __init__ is its parent, not a dependency of its modules.
            if module and module != name and not name.startswith(module + "."):
                edges[name].add(module)
    return edges


def unit_of(module: str) -> str:
    parts = module.split(".")
    for size in (2, 1):
        if ".".join(parts[:size]) in LEVEL:
            return ".".join(parts[:size])
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: place it")


def test_imports_point_down_the_layers() -> None:
    upward = [f"{a} -> {b}" for a, targets in project_imports().items() for b in targets
              if unit_of(b) != unit_of(a) and LEVEL[unit_of(b)] >= LEVEL[unit_of(a)]]
    assert upward == []


def test_no_import_circle() -> None:
    edges, state, circles = project_imports(), {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [module, target]))
            elif target not in state:
                visit(target, path + [module])
        state[module] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [])
    assert circles == []


@pytest.mark.parametrize("unit", PURE)
def test_math_imports_no_flower_and_no_web(unit: str) -> None:
    offending = {f"{name}: {target}" for name, path in MODULES.items()
                 if name.startswith(unit + ".") for target in imported(path)
                 if target.split(".")[0] in {"flwr", "fastapi", "uvicorn"}}
    assert offending == set()


def test_no_function_longer_than_60_lines() -> None:
    long = []
    for name, path in MODULES.items():
        if name.split(".")[0] not in ("server", "clients"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


def test_the_layout_check_sees_an_upward_import(tmp_path, monkeypatch) -> None:
    """The check itself can fail: a models module importing the ClientApp is caught."""
    fake = tmp_path / "upward.py"
    fake.write_text("def f():\n    from clients.app import app\n")
    monkeypatch.setitem(MODULES, "clients.models.upward", fake)
    with pytest.raises(AssertionError, match="clients.models.upward -> clients.app"):
        test_imports_point_down_the_layers()
