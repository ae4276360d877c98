"""Atomic file output and checked safetensors input."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from unlearn_lens.errors import UnlearnLensError

__all__ = ["atomic_write", "read_safetensors", "write_json", "write_text"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A failure or interruption leaves no file at ``path`` (or the previous one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_safetensors(
    path: str | os.PathLike, fmt: str, device: torch.device | str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read all tensors and the metadata of a safetensors file written with ``format=fmt``.

    Raises:
        UnlearnLensError: the file is missing, unreadable, or of another format.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UnlearnLensError(f"file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt", device=str(device or "cpu")) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise UnlearnLensError(f"file {str(path)!r} is not a readable safetensors file: {exc}") from exc
    if metadata.get("format") != fmt:
        raise UnlearnLensError(f"file {str(path)!r} is not an {fmt} file (its format is {metadata.get('format')!r})")
    return tensors, metadata
