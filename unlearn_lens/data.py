"""Text sources and token batches.

Texts come from a Hugging Face dataset id, a local file or folder (``.txt``,
``.jsonl``, ``.json``, ``.parquet``, ``.csv``, read through ``datasets``), the demo
corpora (``"demo:code"``, ``"demo:prose"``) or a plain list of strings.

Tokenising packs the texts, each followed by the end-of-text token, into rows of
``seq_len`` tokens that each start with a BOS token: ``[BOS, t_1, ..., t_{seq_len-1}]``.
Only the last row can be short; it is right-padded. A boolean ``valid`` mask
``[batch pos]`` marks the positions that count for statistics: real tokens other
than the BOS position. Right padding needs no attention mask in a causal model,
since no real token attends to a later position.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Int

from unlearn_lens.demo import demo_texts
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import model_name

__all__ = [
    "TextStream",
    "TokenBatch",
    "TokenSet",
    "as_token_set",
    "default_seq_len",
    "iter_texts",
    "load_texts",
    "mix_token_sets",
    "tokenize_texts",
]

logger = logging.getLogger(__name__)

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
        n_rows: rows read from the source so far.
        n_texts: non-empty texts handed out so far.
    """

    def __init__(self, rows: Iterator[Any], name: str, text_field: str | None = None):
        self._rows = rows
        self.name = name
        self.text_field = text_field
        self.n_rows = 0
        self.n_texts = 0

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        while True:
            try:
                row = next(self._rows)
            except (StopIteration, UnlearnLensError):
                raise
            except Exception as exc:
                raise UnlearnLensError(f"could not read dataset {self.name!r} (row {self.n_rows + 1}): {exc}") from exc
            self.n_rows += 1
            if isinstance(row, dict):
                if self.text_field not in row:
                    raise _field_error(self.name, str(self.text_field), row)
                row = row[self.text_field]
            if isinstance(row, str) and row.strip():
                self.n_texts += 1
                return row


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
        source: an iterable of strings; ``"demo:code"`` / ``"demo:prose"`` (held-out
            demo texts; ``"demo:code:train"`` for the training split); a local
            ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file, or a
            folder of such files (each ``.txt`` file is one text); or a Hugging Face
            dataset id, streamed (needs the network), optionally with a config as
            ``"name:config"``.
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
        stream = TextStream(iter(demo_texts(parts[1], parts[2] if len(parts) > 2 else "heldout")), str(source))
    else:
        stream = TextStream(_open_dataset(str(source), split, text_field), str(source), text_field)
    if shuffle_seed is None:
        return stream
    shuffled = TextStream(_buffer_shuffled(stream, shuffle_seed, buffer_size), stream.name)
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


def _open_dataset(source: str, split: str, text_field: str) -> Iterator[Any]:
    """Rows of a local file or folder, or of a Hub dataset, as a lazy iterator (strings or dicts)."""
    path = Path(source).expanduser()
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
        try:
            with _quiet_datasets() as datasets:
                ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train", streaming=True)
        except Exception as exc:
            raise UnlearnLensError(f"could not read {source!r} as {kind}: {exc}") from exc
    else:
        if source.startswith((".", "/", "~")) or source.count("/") > 1:
            raise UnlearnLensError(f"data file or folder {source!r} does not exist")
        name, _, config = source.partition(":")
        try:
            with _quiet_datasets() as datasets:
                ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
        except Exception as exc:
            raise UnlearnLensError(
                f"could not load dataset {source!r} (split {split!r}) from the Hub (is the network reachable?): {exc}"
            ) from exc
    features = getattr(ds, "features", None)
    if features is not None and text_field not in features:
        raise _field_error(source, text_field, features)
    return iter(ds)


@dataclass
class TokenBatch:
    """One batch of packed rows.

    Attributes:
        tokens: token ids ``[batch pos]``; each row starts with BOS.
        valid: ``[batch pos]``, True where a real token other than BOS stands.
    """

    tokens: Int[torch.Tensor, "batch pos"]
    valid: Bool[torch.Tensor, "batch pos"]


@dataclass
class TokenSet:
    """Packed rows of a dataset, ready to be cut into batches.

    Attributes:
        tokens: ``[n_rows pos]`` token ids.
        valid: ``[n_rows pos]`` bool, see :class:`TokenBatch`.
        n_texts: texts read from the source to make them (None when unknown).
    """

    tokens: Int[torch.Tensor, "batch pos"]
    valid: Bool[torch.Tensor, "batch pos"]
    n_texts: int | None = None

    @property
    def n_tokens(self) -> int:
        """Tokens that count (real tokens other than BOS)."""
        return int(self.valid.sum())

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batches(self, batch_size: int, device: torch.device | str | None = None) -> Iterator[TokenBatch]:
        """Consecutive batches of ``batch_size`` rows, moved to ``device``."""
        for start in range(0, len(self), batch_size):
            yield TokenBatch(
                self.tokens[start : start + batch_size].to(device),
                self.valid[start : start + batch_size].to(device),
            )

    def split(self, n_tokens: int) -> tuple[TokenSet, TokenSet]:
        """The first ``n_tokens`` counted tokens, and the rest.

        A row that straddles the boundary appears in both parts, with complementary
        ``valid`` masks: its earlier tokens still serve as context for the later ones.
        """
        position = self.valid.reshape(-1).cumsum(0).view_as(self.valid)
        first = self.valid & (position <= n_tokens)
        second = self.valid & (position > n_tokens)
        in_first, in_second = first.any(1), second.any(1)
        return (
            TokenSet(self.tokens[in_first], first[in_first]),
            TokenSet(self.tokens[in_second], second[in_second]),
        )

    @classmethod
    def concat(cls, parts: Sequence[TokenSet]) -> TokenSet:
        """The rows of several token sets of one row length, in order."""
        widths = {p.tokens.shape[1] for p in parts}
        if len(widths) != 1:
            raise UnlearnLensError(f"cannot join token sets of different row lengths {sorted(widths)}")
        n_texts = [p.n_texts for p in parts]
        return cls(torch.cat([p.tokens for p in parts]), torch.cat([p.valid for p in parts]),
                   n_texts=None if None in n_texts else sum(n_texts))


def mix_token_sets(
    model: Any,
    sources: Sequence[Iterable[str] | TokenSet],
    shares: Sequence[float] | None,
    budgets: Sequence[int],
    *,
    seq_len: int | None = None,
) -> TokenSet:
    """Several sources as one dataset, each contributing its share of every budget.

    With ``budgets=[collect, eval]`` the result's first ``collect`` counted tokens
    hold ``share_i * collect`` tokens of each source, and the next ``eval`` tokens
    ``share_i * eval`` of each, so splitting it at ``collect`` (as the pruning loop
    does) gives both parts the same mix and never shares a token between them.

    Args:
        model: the model whose tokenizer and context to use.
        sources: texts, lazy streams (only what the budgets need is read) or token sets.
        shares: token share of each source (normalised; default equal shares).
        budgets: token budgets, in order (e.g. statistics then evaluation tokens).
        seq_len: row length (default: the model's context, at most 256).

    Returns:
        The mixed :class:`TokenSet` (``n_texts``: texts read from all sources).

    Raises:
        UnlearnLensError: no sources, shares that do not fit them, or a source shorter than its share.
    """
    if not sources:
        raise UnlearnLensError("no sources to mix")
    if len(sources) == 1 and shares is None:
        return as_token_set(model, sources[0], seq_len=seq_len, max_tokens=sum(budgets))
    shares = [1.0] * len(sources) if shares is None else [float(x) for x in shares]
    if len(shares) != len(sources) or any(not x > 0 for x in shares):
        raise UnlearnLensError(f"need one positive share per source ({len(sources)} sources), got {list(shares)}")
    weights = [x / sum(shares) for x in shares]
    split_budgets = [[round(w * b) for w in weights[:-1]] for b in budgets]
    for row, b in zip(split_budgets, budgets):
        row.append(b - sum(row))  # the last source takes the rounding
    per_source = list(zip(*split_budgets))  # per source: its tokens in each budget
    pieces: list[list[TokenSet]] = [[] for _ in budgets]
    for source, counts in zip(sources, per_source):
        tokens = as_token_set(model, source, seq_len=seq_len, max_tokens=sum(counts))
        name = getattr(source, "name", "a source")
        if tokens.n_tokens < sum(counts):
            raise UnlearnLensError(f"dataset {name!r} has {tokens.n_tokens:,} tokens, fewer than its share "
                                   f"({sum(counts):,}) of the budgets {list(budgets)}")
        for j, n in enumerate(counts):
            part, tokens = tokens.split(n) if j < len(counts) - 1 else (tokens, tokens)
            pieces[j].append(part)
    mixed = TokenSet.concat([p for budget in pieces for p in budget if p.n_tokens])
    read = [getattr(s, "n_texts", None) for s in sources]
    mixed.n_texts = None if None in read else sum(read)
    return mixed


def _special_ids(tokenizer: Any) -> tuple[int, int, int]:
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    if bos is None:
        bos = eos
    if eos is None:
        eos = bos
    if bos is None:
        raise UnlearnLensError("the tokenizer has neither a BOS nor an EOS token; cannot mark text boundaries")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return int(bos), int(eos), int(pad)


def tokenize_texts(
    tokenizer: Any,
    texts: Iterable[str],
    *,
    seq_len: int,
    max_tokens: int | None = None,
) -> TokenSet:
    """Tokenise texts and pack them into BOS-led rows of ``seq_len`` tokens.

    Texts are read from ``texts`` a few dozen at a time and reading stops once
    ``max_tokens`` tokens are packed, so ``texts`` may be a lazy stream
    (:func:`iter_texts`) over a source of any size.

    Args:
        tokenizer: a Hugging Face tokenizer (the model's ``tokenizer``).
        texts: the texts, in order (a list, or any iterable).
        seq_len: row length including the BOS token (at least 2).
        max_tokens: stop once this many counted tokens (BOS excluded) are packed.

    Returns:
        A :class:`TokenSet` (with ``n_texts``, the texts read); only its last row may be padded.

    Raises:
        UnlearnLensError: no texts, or a bad ``seq_len`` / ``max_tokens``.
    """
    if isinstance(texts, str):
        raise UnlearnLensError("texts must be a list of strings, not one string (wrap it in a list)")
    if seq_len < 2:
        raise UnlearnLensError(f"seq_len must be at least 2, got {seq_len}")
    if max_tokens is not None and max_tokens <= 0:
        raise UnlearnLensError(f"max_tokens must be positive, got {max_tokens}")
    bos, eos, pad = _special_ids(tokenizer)
    body = seq_len - 1
    stream: list[int] = []
    texts = iter(texts)
    n_texts = 0
    while max_tokens is None or len(stream) < max_tokens:
        chunk = list(itertools.islice(texts, 64))
        if not chunk:
            break
        n_texts += len(chunk)
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
    if n_texts == 0:
        name = getattr(texts, "name", None)
        raise UnlearnLensError(f"dataset {name!r} has no non-empty texts" if name else
                               "no texts to tokenise (empty dataset)")
    if max_tokens is not None:
        stream = stream[:max_tokens]
    if not stream:
        raise UnlearnLensError("the texts produced no tokens")
    n_rows = -(-len(stream) // body)
    flat = torch.full((n_rows * body,), pad, dtype=torch.long)
    flat[: len(stream)] = torch.tensor(stream, dtype=torch.long)
    tokens = torch.cat([torch.full((n_rows, 1), bos, dtype=torch.long), flat.view(n_rows, body)], dim=1)
    valid = torch.zeros((n_rows * body,), dtype=torch.bool)
    valid[: len(stream)] = True
    valid = torch.cat([torch.zeros((n_rows, 1), dtype=torch.bool), valid.view(n_rows, body)], dim=1)
    return TokenSet(tokens, valid, n_texts=n_texts)


def default_seq_len(model: Any) -> int:
    """Row length used when none is given: the model's context, at most 256."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None) or 256
    return int(min(n_ctx, 256))


def as_token_set(
    model: Any, texts: Iterable[str] | TokenSet, *, seq_len: int | None = None, max_tokens: int | None = None
) -> TokenSet:
    """Tokenise ``texts`` for ``model`` unless they already are a :class:`TokenSet`.

    A :class:`TokenSet` longer than ``max_tokens`` is cut to its first ``max_tokens``
    counted tokens. Texts may be a lazy stream; only what ``max_tokens`` needs is read.

    Raises:
        UnlearnLensError: no tokenizer, or rows longer than the model's context.
    """
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    width = texts.tokens.shape[1] if isinstance(texts, TokenSet) else (seq_len or default_seq_len(model))
    if n_ctx and width > n_ctx:
        raise UnlearnLensError(
            f"rows of {width} tokens are longer than the context of model {model_name(model)!r} "
            f"({n_ctx} tokens); choose seq_len <= {n_ctx}"
        )
    if isinstance(texts, TokenSet):
        if max_tokens is not None and texts.n_tokens > max_tokens:
            return texts.split(max_tokens)[0]
        return texts
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UnlearnLensError(f"model {model_name(model)!r} has no tokenizer")
    return tokenize_texts(tokenizer, texts, seq_len=width, max_tokens=max_tokens)
