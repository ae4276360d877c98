"""Sphinx configuration of the unlearn_lens documentation.

Build (offline, warnings as errors, as ``.ci/run`` does)::

    pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html

The pages are Markdown (MyST); the API reference comes from the docstrings (autodoc,
Google style through napoleon); the command-line reference from the argument parser
itself (``_ext/cli_reference.py``); the tutorials are the notebooks of ``tutorials/``,
executed during the build on the bundled demo model (``_ext/tutorials.py``) and rendered
with their outputs by myst-nb.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

from unlearn_lens import __version__  # noqa: E402

project = "unlearn_lens"
author = "the unlearn_lens authors"
copyright = "2026, the unlearn_lens authors"  # noqa: A001
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "myst_nb",
    "docstrings",
    "cli_reference",
    "mathml",
    "tutorials",
]

exclude_patterns = ["_build", "check_site.py", "generated", "**/.ipynb_checkpoints", "_ipython"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"

# --- Markdown ---------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist", "fieldlist"]
myst_heading_anchors = 3

# --- API reference from the docstrings --------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_class_signature = "separated"
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False
add_module_names = False
python_maximum_signature_line_length = 100

# --- Tutorials: the notebooks of tutorials/, executed offline on the demo model -----------
# _ext/tutorials.py executes them (two at a time, cached by content) into docs/tutorials/
# before the pages are read; myst-nb renders the executed copies as they are.
nb_execution_mode = "off"
nb_merge_streams = True

# --- HTML -------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"unlearn_lens {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_math_renderer = "mathml"  # formulas as MathML: no script, nothing fetched from the network
html_show_sourcelink = False
html_theme_options = {"navigation_with_keys": True}
