"""The package's shape: imports point one way between its parts, and no module imports in a circle.

The paper's stages sit flat at the top of the package; ``checks/``, ``report/`` and
``demo/`` are sub-packages named for their role. ``checks`` and ``report`` may import
the stages, never the reverse; ``report`` may import ``checks``; ``demo`` is package
data with the code that reads it and imports nothing but the error type and ``_io``;
nothing imports ``cli``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import unlearn_lens as ul

PACKAGE = Path(ul.__file__).parent
MODULES = sorted(
    ".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py") if p.stem != "__main__"
)


def part_of(module: str) -> str:
    """The part of the package a module belongs to: its sub-package, ``cli``, or ``stages`` (the top level)."""
    head = module.split(".")[0]
    if head in ("checks", "report", "demo", "cli"):
        return head
    return "stages"


# Which parts each part may import (itself included).
ALLOWED = {
    "demo": {"demo", "stages"},  # only DEMO_MAY_IMPORT among the stages
    "stages": {"stages", "demo"},
    "checks": {"checks", "stages", "demo"},
    "report": {"report", "checks", "stages", "demo"},
    "cli": {"cli", "report", "checks", "stages", "demo"},
}
DEMO_MAY_IMPORT = {"errors", "_io"}


def _path(module: str) -> Path:
    parts = module.split(".")
    if parts[-1] == "__init__":
        return PACKAGE.joinpath(*parts[:-1], "__init__.py")
    return PACKAGE.joinpath(*parts).with_suffix(".py")


def _resolve(name: str) -> str | None:
    """``unlearn_lens.a.b`` (or ``unlearn_lens.a.b.name``) as the module it names, or None outside the package."""
    if name != "unlearn_lens" and not name.startswith("unlearn_lens."):
        return None
    parts = name.split(".")[1:]
    while parts:
        dotted = ".".join(parts)
        if dotted in MODULES:
            return dotted
        if f"{dotted}.__init__" in MODULES:
            return f"{dotted}.__init__"
        parts = parts[:-1]
    return "__init__"


def imports_of(module: str) -> set[str]:
    """Every package module that ``module`` imports, at module level or inside a function."""
    tree = ast.parse(_path(module).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                target = _resolve(f"{node.module}.{alias.name}")
                if target is not None:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found.update(t for a in node.names if (t := _resolve(a.name)) is not None)
    return found - {module}


def test_modules_are_found():
    assert {"stats", "pipeline", "checks.relearn", "report.viz", "demo.corpus", "cli"} <= set(MODULES)


@pytest.mark.parametrize("module", [m for m in MODULES if m != "__init__"])
def test_imports_point_one_way(module):
    part = part_of(module)
    wrong = sorted(dep for dep in imports_of(module) if dep == "__init__" or part_of(dep) not in ALLOWED[part])
    assert not wrong, f"{module} ({part}) imports {wrong}"
    if part == "demo":
        outside = {d for d in imports_of(module) if part_of(d) != "demo"}
        assert outside <= DEMO_MAY_IMPORT, f"{module} imports {sorted(outside - DEMO_MAY_IMPORT)}"


def test_nothing_imports_cli():
    assert not [m for m in MODULES if m != "cli" and "cli" in imports_of(m)]


def test_no_import_circle():
    graph = {m: imports_of(m) for m in MODULES}
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for dep in sorted(graph[m]):
            if dep.endswith("__init__"):
                continue  # a package's __init__ only re-exports its modules
            if state.get(dep) == "open":
                pytest.fail(f"import circle: {' -> '.join(path + [m, dep])}")
            if dep not in state:
                visit(dep, path + [m])
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            visit(m, [])


def test_viz_runs_no_model():
    assert not imports_of("report.viz") & {"stats", "pruning", "pipeline", "report.cards", "evaluate"}


def test_no_javascript_or_css_in_python():
    """HTML, CSS and JavaScript live in ``report/templates`` and ``report/static``, not in Python strings."""
    markers = ("<style", "<script", "function(", "=> {", "document.", "font-family:", "border-radius:")
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found = [m for m in markers if m in node.value]
                assert not found, f"{path.relative_to(PACKAGE)} line {node.lineno} holds {found}"


API_SNAPSHOT = Path(__file__).parent / "public_api.json"


def test_public_api_is_the_reviewed_snapshot():
    """``unlearn_lens.__all__`` changes only with this file: a change to the public API is a deliberate edit."""
    assert sorted(ul.__all__) == json.loads(API_SNAPSHOT.read_text())
    for name in ul.__all__:
        assert hasattr(ul, name), name
