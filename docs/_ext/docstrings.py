"""Read the package's docstrings as the plain text they are written as, before napoleon and autodoc parse them.

Two habits of the docstrings mean something else in reStructuredText:

* ``|x|`` is an absolute value, not a substitution reference: every ``|`` outside inline
  literals and literal blocks is escaped (one already escaped is left as it is);
* an ``Args:`` entry may name several arguments over two lines (``n_steps, lr,`` then,
  indented, ``topk: see ...``): such a continued list of names is joined into one line.
"""

from __future__ import annotations

import re
from typing import Any

_LITERAL = re.compile(r"(``.+?``)")
_BAR = re.compile(r"(?<!\\)\|")
_NAMES_CONTINUED = re.compile(r"^(\s+)[\w*]+(?:,\s*[\w*]+)*,\s*$")
_SECTION = re.compile(r"^\s*(Args|Arguments|Attributes|Parameters|Keyword Args|Other Parameters):\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def escape_bars(line: str) -> str:
    """``line`` with every unescaped ``|`` outside double-backquoted literals escaped."""
    parts = _LITERAL.split(line)
    return "".join(part if i % 2 else _BAR.sub(r"\\|", part) for i, part in enumerate(parts))


def join_name_lists(lines: list[str]) -> list[str]:
    """Join an argument entry whose list of names goes on to the next, more indented, line."""
    out: list[str] = []
    in_args = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if _SECTION.match(line):
            in_args = True
        elif line.strip() and _indent(line) == 0:
            in_args = False
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if in_args and _NAMES_CONTINUED.match(line) and nxt.strip() and _indent(nxt) > _indent(line):
            out.append(line.rstrip() + " " + nxt.strip())
            i += 2
            continue
        out.append(line)
        i += 1
    return out


def plain_text(lines: list[str]) -> list[str]:
    """The docstring ``lines`` made safe for reStructuredText (see the module docstring)."""
    out: list[str] = []
    literal_indent: int | None = None  # inside a literal block: the indent of the line that opened it
    opener: int | None = None
    for line in join_name_lists(lines):
        if literal_indent is not None and line.strip() and _indent(line) <= literal_indent:
            literal_indent = None
        if literal_indent is None and opener is not None and line.strip():
            literal_indent, opener = (opener, None) if _indent(line) > opener else (None, None)
        if literal_indent is not None or line.lstrip().startswith(">>>"):
            out.append(line)
        else:
            out.append(escape_bars(line))
        if literal_indent is None and line.rstrip().endswith("::"):
            opener = _indent(line)
    return out


def _process(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    lines[:] = plain_text(lines)


def setup(app: Any) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", _process, priority=100)  # before napoleon (500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
