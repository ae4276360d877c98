"""The tutorials in tutorials/ run top to bottom offline, and are committed without outputs.

Each notebook is executed in a fresh ``python3`` kernel (ipykernel, from the same
environment as the tests) with the working directory set to ``tutorials/``. The kernel
inherits this process's environment, which is made offline (``HF_HUB_OFFLINE=1`` and
friends) and single-threaded (``OMP_NUM_THREADS=1``) for the run; two notebooks run at once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
MAX_BYTES = 200_000
CELL_TIMEOUT_S = 600

OFFLINE_ENV = {
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


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


# Executes one notebook in a fresh kernel and writes the executed copy; the test reads that copy.
_EXECUTE = """
import sys, time, nbformat
from nbclient import NotebookClient
src, dst, cwd, timeout = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
nb = nbformat.read(src, as_version=4)
start = time.perf_counter()
NotebookClient(nb, kernel_name="python3", timeout=timeout, startup_timeout=120,
               resources={"metadata": {"path": cwd}}, allow_errors=False).execute()
nb.metadata["executed_in_s"] = time.perf_counter() - start
nbformat.write(nb, dst)
"""


@pytest.fixture(scope="module")
def executed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Every selected notebook, executed offline on its own single-threaded kernel, two at a time.

    Returns ``{name: (returncode, stderr, executed_path)}``. The kernels run one torch thread
    each, so two of them use both cores without slowing each other down.
    """
    wanted = {
        item.callspec.params["path"]
        for item in request.session.items
        if item.originalname == "test_notebook_executes" and hasattr(item, "callspec")
    }
    out = tmp_path_factory.mktemp("notebooks")
    env = {**os.environ, **OFFLINE_ENV, "JUPYTER_RUNTIME_DIR": str(out / "jupyter-runtime")}

    def run(path: Path) -> tuple:
        dst = out / path.name
        proc = subprocess.run(
            [sys.executable, "-c", _EXECUTE, str(path), str(dst), str(TUTORIALS), str(CELL_TIMEOUT_S)],
            env=env,
            capture_output=True,
            text=True,
        )
        return proc.returncode, proc.stderr, dst

    # the longest notebooks (the later ones) first, so the two workers finish close together
    order = sorted(wanted, reverse=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return {path.name: result for path, result in zip(order, pool.map(run, order))}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_executes(path: Path, executed: dict[str, tuple]) -> None:
    """Every cell runs in order on a fresh kernel, offline; any exception fails the test."""
    import nbformat

    returncode, stderr, dst = executed[path.name]
    assert returncode == 0, f"{path.name} failed:\n{stderr[-4000:]}"
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
