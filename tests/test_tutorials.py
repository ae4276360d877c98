"""The tutorials in tutorials/ run top to bottom offline, and are committed without outputs.

Each notebook is executed in a fresh ``python3`` kernel (ipykernel, from the same
environment as the tests) with the working directory set to ``tutorials/``, by the
documentation's own executor (``docs/_ext/tutorials.py``): the kernel inherits this
process's environment, made offline (``HF_HUB_OFFLINE=1`` and friends) and single-threaded
(``OMP_NUM_THREADS=1``) for the run; two notebooks run at once. The executed copies are the
ones the documentation shows.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import file_module

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
MAX_BYTES = 200_000


# Spellings of the old API that code cells must not use (the markdown may still mention them).
REMOVED = {
    r"\bff_frac\b": "PruneConfig(mlp_frac=...)",
    r"\bstop_at_forget_top1\b": "PruneConfig(stop_at_forget=...)",
    r"\breference\s*=": "ul.random_baseline(model, forget, retain, run)",
    r"\bbaseline\s*=\s*[\"']random[\"']": "ul.random_baseline(model, forget, retain, run)",
    (
        r"ul\.(?:evaluate|collect_stats)\((?:[^()]|\([^()]*\))*"
        r"\b(?:masks|ablation|means)\s*="
    ): "nesting inside `with ul.pruned(model, masks, ...):`",
    r"\.to_json\(": "run.save(run_dir)",
    r"--ff-frac\b|--steps\b|--stop-at\b(?!-)": "--mlp-frac, --n-steps, --stop-at-forget",
}


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def _code(path: Path) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")


def test_tutorials_exist() -> None:
    names = [p.name for p in NOTEBOOKS]
    assert len(names) >= 4, names
    assert names[0].startswith("01_"), names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_clean(path: Path) -> None:
    """No outputs, no execution counts, small, valid nbformat, runs on the python3 kernel."""
    import nbformat

    size = path.stat().st_size
    assert size < MAX_BYTES, f"{path.name} is {size} bytes (limit {MAX_BYTES}); clear its outputs"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", nb.metadata.get("kernelspec")
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs or execution counts; clear them before committing"
    assert not nb.metadata.get("widgets"), f"{path.name} stores widget state"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), f"{path.name} should open with a title"
    headings = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert any(h.lstrip().startswith("## What we saw") for h in headings), f"{path.name} lacks a 'What we saw' section"
    assert nb.cells[-1].cell_type == "code", f"{path.name} should end with a code cell that prints its summary"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_uses_current_api(path: Path) -> None:
    """Every `ul.X`, `ul.cards.X` and `viz.X` the code cells name is public, and no old spelling is left."""
    import unlearn_lens as ul
    from unlearn_lens import cards, viz

    source = _code(path)
    public = {"ul.cards": set(cards.__all__), "viz": set(viz.__all__), "ul": set(ul.__all__)}
    unknown = [
        f"{prefix}.{name}"
        for prefix, names in public.items()
        for name in re.findall(rf"(?<![\w.]){re.escape(prefix)}\.(\w+)", source)
        if name not in names
    ]
    assert not unknown, f"{path.name} uses names that unlearn_lens does not export: {sorted(set(unknown))}"
    stale = [f"{m.group(0)!r} (use {use})" for pattern, use in REMOVED.items() for m in re.finditer(pattern, source)]
    assert not stale, f"{path.name} uses the old API: {stale}"


def _docs_tutorials():
    """``docs/_ext/tutorials.py``, which executes the notebooks for the tests and the documentation alike."""
    return file_module(Path(__file__).resolve().parents[1] / "docs" / "_ext" / "tutorials.py", "_docs_ext_tutorials")


@pytest.fixture(scope="module")
def executed(request: pytest.FixtureRequest) -> dict[str, tuple[float, str, Path]]:
    """Every selected notebook, executed offline on its own single-threaded kernel, two at a time.

    Returns ``{name: (seconds, error, executed_path)}``. The executed copies are written to
    ``docs/tutorials/`` (ignored by git), where the documentation's build finds them, so that
    it does not execute the notebooks a second time.
    """
    wanted = sorted(
        {
            item.callspec.params["path"]
            for item in request.session.items
            if item.originalname == "test_notebook_executes" and hasattr(item, "callspec")
        }
    )
    tutorials = _docs_tutorials()
    return {
        src.name: (seconds, error, tutorials.TARGET / src.name) for src, seconds, error in tutorials.execute(wanted)
    }


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_executes(path: Path, executed: dict[str, tuple]) -> None:
    """Every cell runs in order on a fresh kernel, offline; any exception fails the test."""
    import nbformat

    _, error, dst = executed[path.name]
    assert not error, f"{path.name} failed:\n{error}"
    nb = nbformat.read(dst, as_version=4)
    print(f"{path.name}: executed in {nb.metadata['executed_in_s']:.1f} s")
    assert all(cell.get("execution_count") for cell in nb.cells if cell.cell_type == "code")
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
    # The notebook on disk is left untouched: executing works on a copy.
    on_disk = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in on_disk.cells if c.cell_type == "code")
