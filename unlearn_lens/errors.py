"""The one exception type for user errors."""

from __future__ import annotations

__all__ = ["UnlearnLensError"]


class UnlearnLensError(ValueError):
    """A problem with what the user asked for: a bad model, dataset, option or file.

    The message names the offending thing (model, hook, file, field or value).
    Subclasses ``ValueError`` so generic handlers still catch it.
    """
