"""The documentation covers what it says it covers, without building it (that is `.ci/run`'s job).

* the command-line reference renders the parser itself, every sub-command and flag of it;
* the API pages document every name of ``unlearn_lens.__all__``;
* the version is the same in the package, ``pyproject.toml``, the changelog and the citation files;
* the README is short, has no placeholder left, names every sub-command, and its links lead
  to files that exist.

None of these tests needs Sphinx: the reference's model of the parser
(``docs/_ext/cli_reference.py``) and the docstring clean-up (``docs/_ext/docstrings.py``)
import only the standard library until Sphinx loads them.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from conftest import file_module

import unlearn_lens as ul
from unlearn_lens.cli import _parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 200
PLACEHOLDERS = re.compile(r"TEST_NOW|\bTODO\b|\bTBD\b|\bFIXME\b|\bXXX\b|\?\?\?")


def _ext(name: str):
    """A module of docs/_ext, imported without Sphinx."""
    return file_module(DOCS / "_ext" / f"{name}.py", f"_docs_ext_{name}")


def _check_site():
    """``docs/check_site.py``, which .ci/run runs on the built site."""
    return file_module(DOCS / "check_site.py", "_docs_check_site")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def test_cli_page_renders_the_whole_parser() -> None:
    page = (DOCS / "cli.md").read_text()
    assert "```{cli-reference} unlearn_lens.cli:_parser" in page, "docs/cli.md must render the parser itself"


def test_cli_reference_covers_every_subcommand_and_flag() -> None:
    parser = _parser()
    described = _ext("cli_reference").describe(parser)
    subs = _subparsers(parser)
    assert [c.name for c in described.subcommands] == list(subs)
    for command in described.subcommands:
        sub = subs[command.name]
        assert command.summary and command.description, f"`{command.prog}` has no help or description to show"
        shown = {name for arg in command.arguments for name in arg.names}
        wanted = {
            name
            for action in sub._actions
            if not isinstance(action, argparse._HelpAction)
            for name in (action.option_strings or [action.metavar or action.dest])
        }
        assert wanted <= shown, f"`{command.prog}`: {sorted(wanted - shown)} missing from the reference"
        assert all(arg.help for arg in command.arguments), f"`{command.prog}` has a flag without help"
        assert command.usage.startswith(f"usage: {command.prog}")


def test_api_pages_document_every_public_name() -> None:
    text = "\n".join(p.read_text() for p in sorted((DOCS / "api").glob("*.md")))
    documented = set(re.findall(r"\.\. auto(?:function|class|data|exception|module):: ([\w.]+)", text))
    missing = _check_site().undocumented(documented)
    assert not missing, f"docs/api/*.md: {missing}"


def _version_in(path: Path, pattern: str) -> str:
    found = re.search(pattern, path.read_text(), re.MULTILINE)
    assert found, f"no version in {path.relative_to(ROOT)}"
    return found.group(1)


def test_version_is_the_same_everywhere() -> None:
    versions = {
        "pyproject.toml": _version_in(ROOT / "pyproject.toml", r'^version = "([^"]+)"'),
        "CITATION.cff": _version_in(ROOT / "CITATION.cff", r"^version: ([\w.]+)"),
        "CHANGELOG.md (latest entry)": _version_in(ROOT / "CHANGELOG.md", r"^## (\d[\w.]*)"),
        "docs/citing.md": _version_in(DOCS / "citing.md", r"version = \{([^}]+)\}"),
    }
    assert all(v == ul.__version__ for v in versions.values()), (ul.__version__, versions)
    date = _version_in(ROOT / "CHANGELOG.md", rf"^## {re.escape(ul.__version__)} — (\d{{4}}-\d\d-\d\d)")
    assert _version_in(ROOT / "CITATION.cff", r'^date-released: "([^"]+)"') == date


def test_readme_is_short_and_complete() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, f"{README.name}: {len(text.splitlines())} lines"
    assert not PLACEHOLDERS.findall(text), f"{README.name} has placeholders: {PLACEHOLDERS.findall(text)}"
    for name in _subparsers(_parser()):
        assert f"unlearn-lens {name}" in text, f"{README.name} does not name `unlearn-lens {name}`"
    assert "arXiv:2403.01267" in text


def test_readme_and_docs_links_lead_to_files() -> None:
    """Relative links of the README (written from the repository root) and of the pages point at files."""
    docs = [p for p in DOCS.rglob("*.md") if "_build" not in p.parts and p != README]
    pages = [(README, ROOT)] + [(p, p.parent) for p in docs]
    broken = []
    for page, base in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (base / target.split("#")[0]).resolve()
            if path.parent == DOCS / "tutorials" and path.suffix == ".ipynb":
                path = ROOT / "tutorials" / path.name  # the build copies the notebooks there
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("mean |x| on forget", r"mean \|x\| on forget"),
        ("``sum|x|`` and |x|", r"``sum|x|`` and \|x\|"),
        (r"already \|x\| escaped", r"already \|x\| escaped"),
    ],
)
def test_docstring_bars_are_escaped_outside_literals(line: str, expected: str) -> None:
    assert _ext("docstrings").escape_bars(line) == expected


def test_docstring_clean_up_keeps_literal_blocks_and_joins_name_lists() -> None:
    plain_text = _ext("docstrings").plain_text
    lines = ["Example::", "", "    a = |x|", "", "Args:", "    a, b,", "        c: what they are.", "", "|y|"]
    assert plain_text(lines) == [
        "Example::",
        "",
        "    a = |x|",
        "",
        "Args:",
        "    a, b, c: what they are.",
        "",
        r"\|y\|",
    ]


def test_site_check_finds_broken_links_and_fetched_resources(tmp_path: Path) -> None:
    """docs/check_site.py, which .ci/run runs on the built site, reports what is wrong, one line each."""
    (tmp_path / "api").mkdir()
    (tmp_path / "index.html").write_text(
        '<html><body id="top"><a href="api/page.html#run">ok</a> <a href="#top">ok</a>'
        ' <a href="https://example.org/">a reader may click this</a>'
        ' <a href="missing.html">broken</a> <a href="api/page.html#nowhere">broken</a>'
        ' <script src="https://cdn.example.org/x.js"></script> <img src="_static/here.png"></body></html>'
    )
    (tmp_path / "api" / "page.html").write_text('<p id="run">x</p><link rel="stylesheet" href="../_static/s.css">')
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "here.png").write_bytes(b"")
    (tmp_path / "_static" / "s.css").write_text("")
    problems = _check_site().check_links(tmp_path)
    assert problems == [
        "index.html: fetches https://cdn.example.org/x.js from another host",
        "index.html: missing.html leads to no file",
        "index.html: api/page.html#nowhere names no element of api/page.html",
    ]


def test_site_check_reads_the_inventory_and_names_undocumented_api(tmp_path: Path) -> None:
    import zlib

    site = _check_site()
    documented = [f"unlearn_lens.{n}" for n in ul.__all__ if n not in ("__version__", "selective_prune")]
    documented += [getattr(ul, n).__name__ for n in ul.__all__ if isinstance(getattr(ul, n), type(ul))]
    body = "".join(f"{name} py:function 1 api.html#$ -\n" for name in documented)
    header = b"# Sphinx inventory version 2\n# Project: x\n# Version: 0\n# compressed with zlib.\n"
    (tmp_path / "objects.inv").write_bytes(header + zlib.compress(body.encode()))
    assert site.inventory(tmp_path) == set(documented)
    assert site.check_api(tmp_path) == ["unlearn_lens.selective_prune has no entry in the API pages"]
