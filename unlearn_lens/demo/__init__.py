"""The bundled demo: the demo model and its pinned corpora, as package data.

``load_model("demo")`` loads the model in ``model/``; ``load_texts("demo:code")`` and
``load_texts("demo:prose")`` read the pinned test texts in ``data/`` (see
:mod:`unlearn_lens.demo.corpus` for how the corpora are cut from the standard library).
"""

from __future__ import annotations

from unlearn_lens.demo.corpus import (
    DEMO_DOMAINS,
    DEMO_MODEL_DIR,
    DEMO_SPLITS,
    PINNED_DIR,
    PINNED_SPLITS,
    build_demo_corpus,
    demo_model_dir,
    demo_texts,
    docstring_prose,
    pin_heldout_corpus,
    pinned_rows,
    split_source,
    write_pinned_rows,
)

__all__ = [
    "DEMO_DOMAINS",
    "DEMO_MODEL_DIR",
    "DEMO_SPLITS",
    "PINNED_DIR",
    "PINNED_SPLITS",
    "build_demo_corpus",
    "demo_model_dir",
    "demo_texts",
    "docstring_prose",
    "pin_heldout_corpus",
    "pinned_rows",
    "split_source",
    "write_pinned_rows",
]
