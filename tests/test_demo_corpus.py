"""The demo corpora: extraction rules, determinism and the train/held-out split."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
from pathlib import Path

import pytest
from conftest import file_module

import unlearn_lens as ul
from unlearn_lens import demo
from unlearn_lens.demo import corpus, demo_texts

SOURCE = '''"""Module docstring: tools for adding numbers together."""
# A comment that explains the next function in words.

import os  # short


def add(a, b):
    """Return the sum of the two numbers given."""
    total = a + b  # keep the running total of both values here
    return total


class Box:
    """A small container that holds exactly one item.

    Example::

        box = Box(3)
        box.get()

    >>> Box(1).get()
    1
    """

    def get(self):
        return "# not a comment"
'''


def test_split_source_separates_code_and_prose():
    code, prose = demo.split_source(SOURCE)
    assert '"""' not in code and "A comment" not in code and "running total" not in code
    assert "def add(a, b):" in code and "total = a + b" in code and 'return "# not a comment"' in code
    assert "import os" in code and "short" not in code
    paragraphs = prose.split("\n\n")
    assert "Module docstring: tools for adding numbers together." in paragraphs
    assert "A comment that explains the next function in words." in paragraphs
    assert "keep the running total of both values here" in paragraphs
    assert "short" not in prose  # fewer than four words
    assert "box.get()" not in prose and ">>>" not in prose  # literal blocks and doctests are code
    assert any(p.startswith("A small container") for p in paragraphs)


RST = """\
:mod:`json` --- JSON encoder and decoder
========================================

.. module:: json
   :synopsis: Encode and decode the JSON format.

.. _json-intro:

The :mod:`json` module reads :ref:`JSON text <json-grammar>` written by
`other programs <https://json.org>`_ and ``returns`` **plain** Python *objects*.

Encoding a few basic objects::

    >>> json.dumps([1, 2])
    '[1, 2]'

.. function:: dumps(obj, *, indent=None)
              dump(obj, fp)
   :noindex:

   Serialize the given object to a string in the JSON format.

   .. versionchanged:: 3.6 Every keyword argument of this function is keyword-only now.

   .. note::
      Keys of the mapping are always converted to strings by this function.

.. code-block:: python

   data = json.loads(text)   # parsed into plain objects

>>> json.loads("[1, 2]")
[1, 2]

+-------+---------+
| JSON  | Python  |
+=======+=========+

.. this comment is never prose
   nor is its second line at all
"""


def test_rst_prose_keeps_the_english_and_drops_code_and_markup():
    paragraphs = _script("rst_prose").rst_prose(RST).split("\n\n")
    assert paragraphs == [
        "json --- JSON encoder and decoder",
        "The json module reads JSON text written by other programs and returns plain Python objects.",
        "Encoding a few basic objects:",
        "Serialize the given object to a string in the JSON format.",
        "Every keyword argument of this function is keyword-only now.",
        "Keys of the mapping are always converted to strings by this function.",
    ]


def test_docs_prose_drops_paragraphs_shared_with_an_evaluation_text(tmp_path):
    script = _training_script()
    evaluated = demo.pinned_rows("prose", "test")[0]["text"].split("\n\n")[0]
    assert len(script.word_runs(evaluated)) > 0
    fresh = "This paragraph was written for the test and appears in no evaluation text at all."
    (tmp_path / "docs" / "c-api").mkdir(parents=True)
    (tmp_path / "docs" / "page.rst").write_text(f"{fresh}\n\n{evaluated}\n")
    (tmp_path / "docs" / "c-api" / "skipped.rst").write_text(f"{fresh}\n")
    texts, record = script.docs_prose([str(tmp_path / "docs")])
    assert texts == [fresh]
    assert record == [{"folder": "docs", "files": 1, "prose_chars": len(fresh), "dropped_paragraphs": 1}]


def test_split_is_by_file_hash_and_stable():
    assert corpus._split_of("json/decoder.py") == corpus._split_of("json/decoder.py")
    splits = [corpus._split_of(f"pkg/mod{i}.py") for i in range(2000)]
    assert 0.07 < splits.count("heldout") / len(splits) < 0.13


@pytest.fixture(scope="module")
def built():
    """The demo corpus built afresh from this interpreter's standard library (no cache)."""
    return demo.build_demo_corpus()


def test_demo_texts_are_deterministic_and_disjoint(built):
    for domain in ("code", "prose"):
        train, held = demo_texts(domain, "train"), demo_texts(domain, "heldout")
        assert len(train) > 5 * len(held) > 0
        assert not set(train) & set(held)
    assert ul.load_texts("demo:code") == demo_texts("code", "test")
    assert ul.load_texts("demo:prose:train", limit=3) == demo_texts("prose", "train")[:3]
    assert built["code"]["heldout"] == demo_texts("code", "heldout")


def test_bad_demo_names():
    with pytest.raises(ul.UnlearnLensError, match="unknown demo domain"):
        ul.load_texts("demo:poetry")
    with pytest.raises(ul.UnlearnLensError, match="unknown demo split"):
        demo_texts("code", "dev")


def test_pinned_splits_match_the_model_card():
    """Validation and test ship with the package, the same bytes on every Python, as the model card records."""
    card = (demo.demo_model_dir() / "README.md").read_text()
    recorded = dict(re.findall(r"`unlearn_lens/demo/data/([\w-]+\.jsonl\.gz)` \| \d+ \| `([0-9a-f]{64})`", card))
    assert sorted(recorded) == sorted(
        f"{d}-{p}.jsonl.gz" for d in demo.DEMO_DOMAINS for p in (*demo.PINNED_SPLITS, "outside")
    )
    for name, digest in recorded.items():
        with gzip.open(demo.PINNED_DIR / name, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, name
    for domain in demo.DEMO_DOMAINS:
        validation, test = (demo.pinned_rows(domain, p) for p in demo.PINNED_SPLITS)
        assert not {r["path"] for r in validation} & {r["path"] for r in test}
        assert demo.demo_texts(domain) == [r["text"] for r in test]  # the default split is test
        assert sorted(demo.demo_texts(domain, "heldout")) == sorted(r["text"] for r in validation + test)
    assert ul.load_texts("demo:code:validation") == demo.demo_texts("code", "validation")
    outside = demo.pinned_rows("code", "outside")
    assert {r["path"].split("-")[0] for r in outside} >= {"jinja2", "click", "idna"}
    assert not {r["text"] for r in outside} & set(demo.demo_texts("code", "heldout"))
    licences = sorted(p.name for p in (demo.PINNED_DIR / "LICENSES").glob("*.txt"))
    assert len(licences) == 7 and all((demo.PINNED_DIR / "LICENSES" / n).read_text().strip() for n in licences)


@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7), reason="the pinned splits were cut from CPython 3.11.7")
def test_pinned_splits_are_this_interpreters_held_out_files(tmp_path, built):
    checksums = demo.pin_heldout_corpus(tmp_path)
    for name in checksums:
        assert (tmp_path / name).read_bytes() == (demo.PINNED_DIR / name).read_bytes(), name
    for domain in demo.DEMO_DOMAINS:
        assert demo.demo_texts(domain, "heldout") == built[domain]["heldout"]


SCRIPTS = Path(__file__).parents[1] / "scripts"


def _script(name: str):
    """A module of ``scripts/``, imported as the script imports its neighbours (``scripts/`` on the path)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return file_module(SCRIPTS / f"{name}.py", name)


def _training_script():
    return _script("train_demo_model")


def test_model_card_is_the_one_the_training_script_writes():
    """The shipped card is `train_demo_model.py`'s card for the shipped `training.json`, checksums included,
    so retraining rewrites every section of it (and a stale split checksum shows up here)."""
    script = _training_script()
    model_dir = demo.demo_model_dir()
    info = json.loads((model_dir / "training.json").read_text())
    assert script.model_card(info) == (model_dir / "README.md").read_text()
    assert info["heldout"]["code"]["top1"] > info["heldout"]["prose"]["top1"] > 0.25
