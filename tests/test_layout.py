"""The package's shape: imports point one way (no circle, also inside functions), modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import unlearn_lens as ul

PACKAGE = Path(ul.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))


def imports_of(module: str) -> set[str]:
    """Every ``unlearn_lens`` module that ``module`` imports, at module level or inside a function."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unlearn_lens"):
            if node.module == "unlearn_lens":
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("unlearn_lens."))
    return found - {module}


def test_no_import_circle():
    graph = {m: imports_of(m) for m in MODULES}
    unknown = {m: sorted(deps - set(MODULES)) for m, deps in graph.items() if deps - set(MODULES)}
    assert not unknown, f"imports of the package itself or of missing modules: {unknown}"
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for dep in sorted(graph[m]):
            if state.get(dep) == "open":
                pytest.fail(f"import circle: {' -> '.join(path + [m, dep])}")
            if dep not in state:
                visit(dep, path + [m])
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            visit(m, [])


# Bottom to top: a module may import only modules before it.
LAYERS = ["errors", "_version", "_io", "demo", "models", "sources", "data", "distributed", "kernels", "stats", "ablations", "masks", "scoring", "pruning", "evaluate", "config",
          "results", "pipeline", "relearn", "membership", "overlap", "sweep", "checks", "bands", "summary", "tables", "viz", "cards", "explorer", "report", "cli"]


def test_layers_cover_the_package():
    assert sorted(LAYERS) == MODULES


@pytest.mark.parametrize("module", LAYERS)
def test_imports_point_down(module):
    above = set(LAYERS[LAYERS.index(module):])
    assert not imports_of(module) & above, f"{module} imports {sorted(imports_of(module) & above)}"


def test_viz_runs_no_model():
    assert not imports_of("viz") & {"stats", "pruning", "pipeline", "cards", "evaluate"}


@pytest.mark.parametrize("module", MODULES)
def test_modules_stay_small(module):
    lines = len((PACKAGE / f"{module}.py").read_text().splitlines())
    assert lines <= 500, f"{module}.py has {lines} lines"


def test_public_api_is_small_and_exists():
    assert len(ul.__all__) <= 27
    for name in ul.__all__:
        assert hasattr(ul, name), name
