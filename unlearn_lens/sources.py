"""Where texts come from: lists, the demo corpora, local files and folders, Hub datasets.

Every source is opened the same way, by :func:`iter_texts`, as a lazy
:class:`TextStream` of non-empty texts: nothing is read before it is asked for, so a
source's cost does not grow with its size (Hub datasets and local tables are
streamed through ``datasets``). :func:`load_texts` reads a source into a list, for
small ones. Local files are ``.txt`` (each file one text), ``.jsonl``, ``.json``,
``.parquet`` and ``.csv``; a glob of data files (local, or ``hf://`` for a Hub
dataset's own files) is streamed the same way; a Hub dataset id may name a config as
``"name:config"``.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from unlearn_lens.demo import demo_texts
from unlearn_lens.errors import UnlearnLensError

__all__ = ["TextStream", "iter_texts", "load_texts"]

_LOCAL_FORMATS = {
    ".txt": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}


def _field_error(source: str, text_field: str, columns: Iterable[str]) -> UnlearnLensError:
    return UnlearnLensError(
        f"dataset {source!r} has no text field {text_field!r}; its fields are {sorted(columns)} "
        "(choose one with text_field=... or --text-field)"
    )


class TextStream(Iterator[str]):
    """The non-empty texts of a source, read lazily, one at a time.

    Nothing is read before the first ``next()``, and only as many rows as are asked
    for are ever read, so a stream over an endless dataset is fine as long as its
    consumer stops (as :func:`tokenize_texts` does at ``max_tokens``).

    Attributes:
        name: the source, for messages.
        n_rows: rows read from the source so far (empty rows are read and skipped).
        n_texts: non-empty texts handed out so far.
        reader: the stream that reads the source: this one, or for a shuffled
            stream the one that fills its buffer (its counts are what was read).
    """

    def __init__(self, rows: Iterator[Any], name: str, text_field: str | None = None):
        self._rows = rows
        self.name = name
        self.text_field = text_field
        self.n_rows = 0
        self.n_texts = 0
        self.reader = self

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        while True:
            try:
                row = next(self._rows)
            except (StopIteration, UnlearnLensError):
                raise
            except Exception as exc:
                if _caused_by(exc, UnicodeDecodeError):
                    raise UnlearnLensError(
                        f"dataset {self.name!r} is not valid UTF-8 text (after row {self.n_rows}): {exc}"
                    ) from exc
                raise UnlearnLensError(f"could not read dataset {self.name!r} (row {self.n_rows + 1}): {exc}") from exc
            self.n_rows += 1
            if isinstance(row, dict):
                if self.text_field not in row:
                    raise _field_error(self.name, str(self.text_field), row)
                row = row[self.text_field]
                if not isinstance(row, str):
                    what = "no value (null)" if row is None else f"a {type(row).__name__}, not text"
                    raise UnlearnLensError(
                        f"row {self.n_rows} of dataset {self.name!r} has {what} in its text field {self.text_field!r}"
                    )
            if isinstance(row, str) and row.strip():
                self.n_texts += 1
                return row


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` or an exception it was raised from or during is a ``kind``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _buffer_shuffled(items: Iterator[str], seed: int, buffer_size: int) -> Iterator[str]:
    """The items in a seeded random order, holding at most ``buffer_size`` of them at a time."""
    rng = random.Random(seed)
    buffer: list[str] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        i = rng.randrange(buffer_size)
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def iter_texts(
    source: str | os.PathLike | Iterable[str],
    *,
    split: str = "train",
    text_field: str = "text",
    shuffle_seed: int | None = None,
    buffer_size: int = 10_000,
) -> TextStream:
    """Open a text source for lazy reading.

    The source is checked at once (a missing file, a wrong format, an unreachable
    dataset, a field the dataset's schema lacks); rows are read only as the stream is
    consumed, so the cost of a source does not grow with its size.

    Args:
        source: an iterable of strings; ``"demo:code"`` / ``"demo:prose"`` (the demo's
            test texts; ``"demo:code:validation"``, ``"demo:code:heldout"`` (both),
            ``"demo:code:train"`` and ``"demo:code:outside"`` for its other splits); a local
            ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file, or a
            folder of such files (each ``.txt`` file is one text); a glob of such
            data files, local or ``hf://datasets/org/name/path/*.parquet`` (a Hub
            dataset's files, read without its loading script; ``.gz``/``.zst``
            etc. compression allowed); or a Hugging Face dataset id, streamed (needs
            the network), optionally with a config as ``"name:config"``.
        split: the dataset split (Hub datasets; local files are one ``train`` split).
        text_field: the column holding the text (``.txt`` files have ``text``).
        shuffle_seed: shuffle the texts in a seeded buffer (the first rows of a dump
            are rarely representative); None keeps their order.
        buffer_size: texts held by the shuffle buffer.

    Returns:
        A :class:`TextStream` of the non-empty texts.

    Raises:
        UnlearnLensError: the source does not exist or cannot be opened.
    """
    if buffer_size < 1:
        raise UnlearnLensError(f"buffer_size must be positive, got {buffer_size}")
    if isinstance(source, TextStream):
        stream = source
    elif not isinstance(source, (str, os.PathLike)):
        stream = TextStream(iter(source), "the given texts")
    elif str(source).startswith("demo:"):
        parts = str(source).split(":")
        stream = TextStream(iter(demo_texts(parts[1], parts[2] if len(parts) > 2 else "test")), str(source))
    else:
        stream = TextStream(_open_dataset(str(source), split, text_field), str(source), text_field)
    if shuffle_seed is None:
        return stream
    shuffled = TextStream(_buffer_shuffled(stream, shuffle_seed, buffer_size), stream.name)
    shuffled.reader = stream.reader
    return shuffled


def load_texts(
    source: str | os.PathLike | Iterable[str],
    *,
    split: str = "train",
    text_field: str = "text",
    limit: int | None = None,
) -> list[str]:
    """Load the texts of a source into a list (see :func:`iter_texts` for the sources).

    For large or endless sources, give :func:`iter_texts` to :func:`tokenize_texts`
    with a token budget instead: it reads only what the budget needs.

    Args:
        source: a list of strings, ``"demo:code"``, a local file or folder, or a Hub dataset id.
        split: the dataset split.
        text_field: the column holding the text.
        limit: keep at most this many texts (only these are read).

    Returns:
        The non-empty texts, in order.

    Raises:
        UnlearnLensError: the source does not exist, has no such field, or is empty.
    """
    if limit is not None and limit <= 0:
        raise UnlearnLensError(f"limit must be positive, got {limit}")
    stream = iter_texts(source, split=split, text_field=text_field)
    texts = list(itertools.islice(stream, limit))
    if not texts:
        raise UnlearnLensError(f"dataset {stream.name!r} has no non-empty texts")
    return texts


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[Any]:
    """``datasets`` with its logging at ERROR and no progress bars, restored on exit.

    The library's global settings are the user's: they are changed only while a
    dataset is opened.
    """
    import datasets
    from datasets.utils import logging as ds_logging

    verbosity = ds_logging.get_verbosity()
    bars_were_off = datasets.utils.are_progress_bars_disabled()
    ds_logging.set_verbosity_error()
    datasets.utils.disable_progress_bars()
    try:
        yield datasets
    finally:
        ds_logging.set_verbosity(verbosity)
        if not bars_were_off:
            datasets.utils.enable_progress_bars()


def _read_text_files(files: Sequence[Path]) -> Iterator[str]:
    for file in files:
        try:
            yield file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UnlearnLensError(f"file {str(file)!r} is not UTF-8 text: {exc}") from exc


_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4")


def _reason(exc: BaseException) -> str:
    """What an exception says, or what it is when it says nothing.

    ``datasets`` raises a bare ``StopIteration`` for data files without a row.
    """
    text = str(exc).strip()
    if text:
        return text
    return "no rows to read" if isinstance(exc, StopIteration) else type(exc).__name__


def _blank(file: Path) -> bool:
    """Whether a local file holds nothing but whitespace (read only up to its first other byte)."""
    with open(file, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _open_data_files(pattern: str, text_field: str) -> Iterator[Any]:
    """Rows of data files named by a glob or an ``hf://`` path (e.g. a Hub dataset's parquet files), streamed."""
    name = pattern.rsplit("/", 1)[-1]
    suffixes = [x for x in Path(name).suffixes if x not in _COMPRESSION]
    kind = _LOCAL_FORMATS.get(suffixes[-1] if suffixes else "")
    if kind is None or kind == "text":
        raise UnlearnLensError(
            f"cannot tell the format of {pattern!r}: name files ending in .jsonl, .json, .parquet or "
            ".csv (optionally compressed)"
        )
    remote = pattern.startswith("hf://")
    if not remote:
        files = sorted(Path(f) for f in glob.glob(os.path.expanduser(pattern), recursive=True))
        if not files:
            raise UnlearnLensError(f"the pattern {pattern!r} matched no file")
        plain = kind != "parquet" and not any(f.suffix in _COMPRESSION for f in files)
        if plain and all(_blank(f) for f in files):
            return iter(())  # files without a row: a dataset with no texts
    try:
        with _quiet_datasets() as datasets:
            ds = datasets.load_dataset(kind, data_files=pattern, split="train", streaming=True)
    except Exception as exc:
        hint = " (is the network reachable?)" if remote else ""
        raise UnlearnLensError(f"could not read the {kind} files {pattern!r}{hint}: {_reason(exc)}") from exc
    features = getattr(ds, "features", None)
    if features is not None and text_field not in features:
        raise _field_error(pattern, text_field, features)
    return iter(ds)


def _open_dataset(source: str, split: str, text_field: str) -> Iterator[Any]:
    """Rows of a local file or folder, or of a Hub dataset, as a lazy iterator (strings or dicts)."""
    path = Path(source).expanduser()
    if source.startswith("hf://") or (not path.exists() and any(c in source for c in "*?[")):
        return _open_data_files(source, text_field)
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.suffix in _LOCAL_FORMATS) if path.is_dir() else [path]
        if not files:
            raise UnlearnLensError(f"folder {source!r} has no {'/'.join(_LOCAL_FORMATS)} files")
        kinds = {_LOCAL_FORMATS.get(p.suffix) for p in files}
        if None in kinds or len(kinds) != 1:
            raise UnlearnLensError(
                f"cannot read {source!r}: files must all be one of {', '.join(_LOCAL_FORMATS)} "
                f"(found {sorted({p.suffix for p in files})})"
            )
        kind = kinds.pop()
        if kind == "text":
            return _read_text_files(files)
        if kind != "parquet" and all(_blank(f) for f in files):
            return iter(())  # files without a row: a dataset with no texts
        try:
            with _quiet_datasets() as datasets:
                ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train", streaming=True)
        except Exception as exc:
            raise UnlearnLensError(f"could not read {source!r} as {kind}: {_reason(exc)}") from exc
    else:
        if source.startswith((".", "/", "~")) or source.count("/") > 1:
            raise UnlearnLensError(f"data file or folder {source!r} does not exist")
        name, _, config = source.partition(":")
        try:
            with _quiet_datasets() as datasets:
                ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
        except Exception as exc:
            raise UnlearnLensError(
                f"could not load dataset {source!r} (split {split!r}) from the Hub (is the network reachable?): "
                f"{_reason(exc)}"
            ) from exc
    features = getattr(ds, "features", None)
    if features is not None and text_field not in features:
        raise _field_error(source, text_field, features)
    return iter(ds)
