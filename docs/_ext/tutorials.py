"""The tutorials: the notebooks of ``tutorials/``, executed offline, rendered with their outputs and figures.

The test suite executes every notebook (``tests/test_tutorials.py``) with :func:`execute`:
on a fresh ``python3`` kernel, offline, one torch thread per kernel, two kernels at a time,
with ``tutorials/`` as the working directory. The executed copy is written to
``docs/tutorials/`` (ignored by git) and records the SHA-256 of the notebook it was made
from. The site's build renders those copies with myst-nb as they are: after the test suite
has run, it executes nothing. A notebook whose copy is missing or out of date (a build
without the tests before it) is executed by the build in the same way, and a notebook that
fails stops the build with the error it raised. ``-D tutorials_execute=0`` builds the other
pages quickly, with such tutorials shown without outputs (and says so in a warning, so that
such a build never passes ``-W``).

Plotly figures: the kernels get an IPython start-up file (through ``IPYTHONDIR``) that
makes Plotly's default renderer write each figure as a ``<div>`` and a script that draws
it with ``Plotly.newPlot`` once the page is loaded, with no copy of plotly.js, no MathJax
and nothing fetched from a CDN. The plotly.js bundle of the installed ``plotly`` package is
copied into the site's ``_static/`` and loaded by the pages that hold a figure.

This module imports only the standard library until Sphinx loads it, so that the tests
can use :func:`execute` without Sphinx.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tutorials"
TARGET = ROOT / "docs" / "tutorials"
CELL_TIMEOUT_S = 600
WORKERS = 2
PLOTLY_JS = "plotly.min.js"
META = "unlearn_lens_docs"

OFFLINE_ENV = {
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

STARTUP = '''\
"""Plotly figures as a div and a script that draws it once the page has loaded plotly.js itself."""
import uuid

import plotly.io as pio


class _DocsRenderer(pio.base_renderers.MimetypeRenderer):
    def to_mimebundle(self, fig_dict):
        layout = fig_dict.get("layout", {}) if isinstance(fig_dict, dict) else fig_dict.to_dict()["layout"]
        height, width = layout.get("height") or 525, layout.get("width")
        div_id = f"plotly-{uuid.uuid4()}"
        figure = pio.to_json(fig_dict, validate=False).replace("<", "\\\\u003c")
        style = f"height:{height}px; width:{f'{width}px' if width else '100%'}; max-width:100%;"
        html = (
            f'<div id="{div_id}" class="plotly-graph-div" style="{style}"></div>'
            f'<script>window.addEventListener("DOMContentLoaded", function () {{'
            f" var f = {figure};"
            f' Plotly.newPlot("{div_id}", f.data, f.layout, {{"responsive": true}}); }});</script>'
        )
        return {"text/html": html}


pio.renderers["unlearn_lens_docs"] = _DocsRenderer()
pio.renderers.default = "unlearn_lens_docs"
'''

# Executes one notebook in a fresh kernel and writes the executed copy (run in a subprocess per notebook).
EXECUTE = """
import sys, time, nbformat
from nbclient import NotebookClient
src, dst, cwd, timeout = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
nb = nbformat.read(src, as_version=4)
start = time.perf_counter()
NotebookClient(nb, kernel_name="python3", timeout=timeout, startup_timeout=120,
               resources={"metadata": {"path": cwd}}, allow_errors=False).execute()
nb.metadata["executed_in_s"] = round(time.perf_counter() - start, 1)
nbformat.write(nb, dst)
"""


def digest(path: Path) -> str:
    """What an executed copy was made from: the notebook and the figure renderer."""
    return hashlib.sha256(path.read_bytes() + STARTUP.encode()).hexdigest()


def _up_to_date(src: Path, dst: Path) -> bool:
    if not dst.exists():
        return False
    import json

    try:
        meta = json.loads(dst.read_text()).get("metadata", {}).get(META, {})
    except ValueError:
        return False
    return meta.get("source_sha256") == digest(src)


def _execute(src: Path, env: dict[str, str]) -> tuple[Path, float, str]:
    """Execute ``src`` into its copy under TARGET; return the notebook, seconds, and the error ('' if none)."""
    import json

    dst = TARGET / src.name
    tmp = dst.with_suffix(".ipynb.tmp")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", EXECUTE, str(src), str(tmp), str(SOURCE), str(CELL_TIMEOUT_S)],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        return src, seconds, proc.stderr[-4000:]
    nb = json.loads(tmp.read_text())
    nb["metadata"][META] = {"source_sha256": digest(src)}
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, dst)
    return src, seconds, ""


def execute(notebooks: list[Path], workers: int = WORKERS) -> list[tuple[Path, float, str]]:
    """Execute ``notebooks`` into their copies under ``docs/tutorials/``, ``workers`` at a time.

    Returns one ``(notebook, seconds, error)`` per notebook, in the order given; ``error`` is
    the end of the kernel's stderr for a notebook that failed, and ``""`` otherwise.
    """
    TARGET.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="unlearn-lens-docs-") as tmp:
        startup = Path(tmp) / "ipython" / "profile_default" / "startup"
        startup.mkdir(parents=True)
        (startup / "00-plotly-docs.py").write_text(STARTUP)
        env = {**os.environ, **OFFLINE_ENV, "IPYTHONDIR": str(Path(tmp) / "ipython")}
        env["JUPYTER_RUNTIME_DIR"] = str(Path(tmp) / "runtime")
        # the longest notebooks (the later ones) first, so the workers finish close together
        order = sorted(notebooks, reverse=True)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = dict(zip(order, pool.map(lambda nb: _execute(nb, env), order)))
    return [done[nb] for nb in notebooks]


def execute_tutorials(app: Any) -> None:
    """Execute every notebook of tutorials/ whose copy is missing or out of date (see the module docstring)."""
    from sphinx.errors import ExtensionError
    from sphinx.util import logging

    log = logging.getLogger(__name__)
    TARGET.mkdir(exist_ok=True)
    stale = [nb for nb in sorted(SOURCE.glob("*.ipynb")) if not _up_to_date(nb, TARGET / nb.name)]
    if not stale:
        log.info("the executed copies of the tutorials are up to date: nothing to execute")
        return
    if not app.config.tutorials_execute:  # a quick build of the other pages: the notebooks without outputs
        for nb in stale:
            shutil.copyfile(nb, TARGET / nb.name)
        log.warning("tutorials_execute is off: the tutorials are shown without their outputs")
        return
    log.info("executing %d tutorial notebooks, %d at a time ...", len(stale), WORKERS)
    for src, seconds, error in execute(stale):
        if error:
            raise ExtensionError(f"tutorials/{src.name} failed ({seconds:.0f} s):\n{error}")
        log.info("executed tutorials/%s in %.0f s", src.name, seconds)


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / PLOTLY_JS


def _page(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    if "plotly-graph-div" in context.get("body", ""):
        app.add_js_file(PLOTLY_JS)


def _copy_plotly_js(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        shutil.copyfile(_plotly_js(), Path(app.outdir) / "_static" / PLOTLY_JS)


def setup(app: Any) -> dict[str, Any]:
    app.add_config_value("tutorials_execute", True, "env", bool)
    app.connect("builder-inited", execute_tutorials)
    app.connect("html-page-context", _page)
    app.connect("build-finished", _copy_plotly_js)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
