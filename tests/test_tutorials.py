"""The tutorials in tutorials/ run top to bottom offline, and are committed without outputs.

Each notebook is executed in a fresh ``python3`` kernel (ipykernel, from the same
environment as the tests) with the working directory set to ``tutorials/``. The kernel
inherits this process's environment, which is made offline (``HF_HUB_OFFLINE=1`` and
friends) and single-threaded (``OMP_NUM_THREADS=1``) for the run.
"""

from __future__ import annotations

import time
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


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


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
    dirty = [i for i, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs or execution counts; clear them before committing"
    assert not nb.metadata.get("widgets"), f"{path.name} stores widget state"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), f"{path.name} should open with a title"
    headings = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert any(h.lstrip().startswith("## What we saw") for h in headings), f"{path.name} lacks a 'What we saw' section"
    assert nb.cells[-1].cell_type == "code", f"{path.name} should end with a code cell that prints its summary"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_executes(path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run every cell in order on a fresh kernel, offline; any exception fails the test."""
    import nbformat
    from nbclient import NotebookClient

    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    # Keep Jupyter's runtime files (connection files) out of the user's directories.
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(TUTORIALS)}},
        allow_errors=False,
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    print(f"{path.name}: executed in {elapsed:.1f} s")

    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if out.get("output_type") == "error"]
    assert not errors, errors
    # The notebook on disk is left untouched: executing works on the in-memory copy.
    on_disk = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in on_disk.cells if c.cell_type == "code")

