"""Atomic file and directory output, and checked safetensors input."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from unlearn_lens.errors import UnlearnLensError

__all__ = [
    "atomic_dir",
    "atomic_write",
    "check_output_dir",
    "read_json",
    "read_safetensors",
    "write_json",
    "write_safetensors",
    "write_text",
]


def _fresh_name(directory: Path, name: str, suffix: str) -> Path:
    """A hidden name beside ``name`` that nothing uses yet."""
    while True:
        candidate = directory / f".{name}.{uuid.uuid4().hex[:12]}{suffix}"
        if not candidate.exists():
            return candidate


def _temp_file(directory: Path, name: str) -> Path:
    """Create an empty file beside ``name`` with the permissions a plain ``open`` would give.

    ``os.open`` with mode 0o666 lets the kernel apply the process umask, so the umask
    never has to be read (reading it means setting it, which races other threads).
    """
    while True:
        tmp = _fresh_name(directory, name, ".tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - taken between the check and the open
            continue


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A failure or interruption leaves no file at ``path`` (or the previous one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_file(path.parent, path.name)
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Fail unless a directory could be written at ``path`` (call it before long work).

    Args:
        path: the directory to create or write into.
        overwrite: an existing non-empty directory is fine (it will be replaced or added to).

    Raises:
        UnlearnLensError: ``path`` is a file, is a non-empty directory (without
            ``overwrite``), or its nearest existing parent cannot be written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UnlearnLensError(f"output path {str(path)!r} is a file; it must be a directory")
    if path.exists() and not overwrite and any(path.iterdir()):
        raise UnlearnLensError(
            f"output directory {str(path)!r} already exists and is not empty; choose another, "
            "or replace it (overwrite=True, --overwrite)"
        )
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UnlearnLensError(
            f"cannot write {str(path)!r}: {str(parent)!r} is not writable (not a directory, or no permission)"
        )


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name beside ``path``; rename it into place on success.

    Yields the temporary directory to write into. If the block fails or is
    interrupted, the temporary directory is removed and ``path`` is untouched.

    Args:
        path: the directory to create.
        overwrite: replace an existing directory (it is removed only once the new one is complete).

    Raises:
        UnlearnLensError: see :func:`check_output_dir`.
    """
    path = Path(path)
    check_output_dir(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_name(path.parent, path.name, ".tmp")
    os.mkdir(tmp, 0o777)  # the kernel applies the umask, as for any new directory
    old: Path | None = None
    try:
        yield tmp
        if path.exists():
            old = _fresh_name(path.parent, path.name, ".old")
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file.

    Raises:
        UnlearnLensError: the file is missing or is not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise UnlearnLensError(f"file {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnlearnLensError(f"file {str(path)!r} is not readable JSON: {exc}") from exc


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically, byte-identical for the same tensors and metadata.

    The safetensors writer orders the metadata by a per-process hash, so the header
    is rewritten with sorted keys (same length, same data offsets); the file gets the
    permissions a plain ``open`` would give, like every other output.
    """
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    if len(header) > n:  # pragma: no cover - the writer's header is compact JSON already
        raise RuntimeError("safetensors header grew when sorted")
    data = data[:8] + header.ljust(n) + data[8 + n :]
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


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
