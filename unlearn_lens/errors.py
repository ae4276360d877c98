"""The one exception type for user errors."""

from __future__ import annotations

__all__ = ["SourceCheckError", "UnlearnLensError"]


class UnlearnLensError(ValueError):
    """A problem with what the user asked for: a bad model, dataset, option or file.

    The message names the offending thing (model, hook, file, field or value).
    Subclasses ``ValueError`` so generic handlers still catch it.
    """


class SourceCheckError(UnlearnLensError):
    """A run's data sources, read again, are not the texts the run used (or cannot be checked).

    Raised before any of their text is shown or used: a run directory records a
    checksum of every token budget it used, and a source whose tokens differ (edited
    files, or a run directory that names a file it never used) is refused.
    """
