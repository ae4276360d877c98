"""The report's other languages: Jinja2 templates, static CSS and JavaScript, and JSON for the page.

HTML lives in ``report/templates/*.html.j2`` (rendered autoescaped: every value is escaped
unless it is a :class:`markupsafe.Markup`), CSS and JavaScript in ``report/static/``, all
shipped as package data and read with :mod:`importlib.resources`. Python hands data to a
page as JSON inside a ``script`` element of type ``application/json``, made safe there by
:func:`script_json`.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

if TYPE_CHECKING:
    from jinja2 import Environment

__all__ = ["fragment", "render", "script_json", "static_text"]


@functools.cache
def _environment() -> Environment:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(
        loader=PackageLoader("unlearn_lens.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context: Any) -> str:
    """Render ``report/templates/<template>`` (autoescaped) with ``context``."""
    return _environment().get_template(template).render(**context)


def fragment(template: str, macro: str, **arguments: Any) -> Markup:
    """One macro of ``report/templates/<template>``, rendered alone (autoescaped)."""
    return Markup(getattr(_environment().get_template(template).module, macro)(**arguments))


@functools.cache
def static_text(name: str) -> Markup:
    """The text of ``report/static/<name>`` (a style sheet or script), as markup to put in a page as it is."""
    return Markup((resources.files("unlearn_lens.report") / "static" / name).read_text(encoding="utf-8"))


def script_json(data: Any) -> Markup:
    """``data`` as JSON that can sit inside a ``script`` element: ``<``, ``>`` and ``&`` are escaped.

    NaN and infinities are refused (``ValueError``): JSON has no such numbers.
    """
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
