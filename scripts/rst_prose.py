"""The English prose of a reStructuredText page, for the demo model's training text.

``scripts/train_demo_model.py --prose-docs DIR`` adds the prose of reStructuredText
pages (the Python documentation) to the demo model's prose training text; this module
cuts it out of the markup, as :func:`unlearn_lens.demo.split_source` cuts docstrings.
"""

from __future__ import annotations

import re

from unlearn_lens.demo import docstring_prose

__all__ = ["rst_prose"]

_NON_PROSE_DIRECTIVES = {
    "code",
    "code-block",
    "sourcecode",
    "doctest",
    "testcode",
    "testoutput",
    "testsetup",
    "testcleanup",
    "productionlist",
    "literalinclude",
    "highlight",
    "toctree",
    "index",
    "csv-table",
    "list-table",
    "table",
    "raw",
    "image",
    "figure",
    "math",
    "include",
    "sectionauthor",
    "moduleauthor",
    "audit-event-table",
    "grammar-snippet",
}
# directives whose argument on the directive line is already prose (or a version, then prose)
_PROSE_DIRECTIVES = {
    "note",
    "warning",
    "seealso",
    "important",
    "tip",
    "caution",
    "attention",
    "hint",
    "danger",
    "admonition",
    "impl-detail",
    "topic",
    "rubric",
    "versionadded",
    "versionchanged",
    "deprecated",
    "deprecated-removed",
}
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:.-]+)::\s?(.*)$")
_EXPLICIT = re.compile(r"^(\s*)\.\.(\s|$)")  # a comment, target, footnote or substitution definition
_ADORNMENT = re.compile(r"^\s*([=\-~^\"'`#*+:.<>_])\1{3,}\s*$|^\s*=+( +=+)+\s*$|^\s*[+|]")
_INLINE = [
    (re.compile(r":[\w:.-]+:`[~!]?([^`<]*?)\s*<[^`>]*>`"), r"\1"),  # :role:`text <target>`
    (re.compile(r":[\w:.-]+:`[~!]?(?:[\w.]*\.)?([^`]*)`"), r"\1"),  # :role:`~a.b.name` -> name
    (re.compile(r"`([^`<]*?)\s*<[^`>]*>`__?"), r"\1"),  # `text <url>`_
    (re.compile(r"`([^`]+)`__?"), r"\1"),
    (re.compile(r"``([^`]+)``"), r"\1"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),
    (re.compile(r"\*([^*\s][^*]*)\*"), r"\1"),
    (re.compile(r"\s?\[#?[\w-]*\]_"), ""),  # footnote references
    (re.compile(r"\\ "), ""),
]


def _directive(match: re.Match[str], indent: int) -> tuple[str | None, int | None, bool]:
    """What a directive line leaves: its prose (or None), the indent deeper than which its body is dropped
    (or None), and whether header lines follow it (an object description's signatures and options)."""
    name = match.group(2).split(":")[-1]
    if name in _NON_PROSE_DIRECTIVES:
        return None, indent, False
    if name in _PROSE_DIRECTIVES:
        argument = match.group(3)
        if name.startswith(("version", "deprecated")):
            argument = re.sub(r"^[\d.]+(\s+[\d.]+)?\s*", "", argument)
        return " " * indent + argument, None, False
    return None, None, True  # an object description: its signature lines and options are code


def rst_prose(text: str) -> str:
    """The English prose of a reStructuredText document, cut as :func:`split_source` cuts docstrings.

    Code (literal blocks, doctest examples, code and table directives), section
    adornments, tables, comments and directive lines are dropped; inline markup
    (roles, links, literals, emphasis) is reduced to its text. What remains is
    paragraphs separated by blank lines, each of four or more words that read as
    prose.

    Args:
        text: the reST source, e.g. one page of the Python documentation.

    Returns:
        The prose paragraphs, separated by blank lines ("" if there are none).
    """
    kept: list[str] = []
    skip_indent: int | None = None  # drop the lines indented deeper than this (a directive's body)
    in_header = False  # the lines right after a directive, before its first blank line
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if not stripped or indent > skip_indent:
                continue
            skip_indent = None
        if in_header:
            if stripped:
                continue
            in_header = False
        directive = _DIRECTIVE.match(line)
        if directive:
            prose, skip_indent, in_header = _directive(directive, indent)
            if prose is not None:
                kept.append(prose)
            continue
        if _EXPLICIT.match(line):
            skip_indent = indent
            continue
        if _ADORNMENT.match(line) or re.match(r"^\s*:[\w -]+:(\s|$)", line):
            continue
        if stripped.endswith("::"):  # a literal block follows: code
            skip_indent = indent
            body = line.rstrip()[:-2]  # "text::" reads "text:"; "text ::" and a lone "::" read as nothing more
            line = body.rstrip() if body.endswith(" ") or not body.strip() else body + ":"
        kept.append(line)
    body = "\n".join(kept)
    for pattern, repl in _INLINE:  # on the whole text: markup may span lines
        body = pattern.sub(repl, body)
    return docstring_prose(body)
