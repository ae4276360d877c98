"""Token batches: texts (lists or lazy streams from :mod:`unlearn_lens.sources`) packed into rows.

Tokenising packs the texts, each followed by the end-of-text token, into rows of
``seq_len`` tokens that each start with a BOS token: ``[BOS, t_1, ..., t_{seq_len-1}]``.
Only the last row can be short; it is right-padded. A boolean ``valid`` mask
``[batch pos]`` marks the positions that count for statistics: real tokens other
than the BOS position. Under ``compat="taker"`` (:mod:`unlearn_lens.compat`) each text
has a row of its own instead, as the reference implementation reads texts: its tokens
with the tokenizer's own special tokens, cut to ``seq_len``, every position counted.
Right padding needs no attention mask in a causal model, since no real token attends
to a later position.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Int

from unlearn_lens.compat import rules
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import model_name

__all__ = [
    "TextSpan",
    "TokenBatch",
    "TokenSet",
    "as_token_set",
    "default_seq_len",
    "mix_token_sets",
    "token_budgets",
    "tokenize_texts",
]

logger = logging.getLogger(__name__)


@dataclass
class TokenBatch:
    """One batch of packed rows.

    Attributes:
        tokens: token ids ``[batch pos]``; each row starts with BOS.
        valid: ``[batch pos]``, True where a real token other than BOS stands.
    """

    tokens: Int[torch.Tensor, "batch pos"]
    valid: Bool[torch.Tensor, "batch pos"]


@dataclass(frozen=True)
class TextSpan:
    """Consecutive texts of one source, packed one after another.

    Texts are numbered from 0 in the order the source gave them (after shuffling, if
    any); the span holds texts ``first`` to ``first + len(ends) - 1``.

    Attributes:
        source: the source's name (a dataset id, a file, ``"the given texts"``).
        first: index of the span's first text in its source.
        ends: for each text, the counted tokens of the span up to its end (its last
            text may be cut short by a budget).
        truncated: whether the last text goes on past the span (it was cut short).
    """

    source: str
    first: int
    ends: tuple[int, ...]
    truncated: bool = False

    @property
    def n_tokens(self) -> int:
        return self.ends[-1] if self.ends else 0

    def cut(self, offset: int) -> tuple[TextSpan, TextSpan]:
        """The span's first ``offset`` tokens and the rest; a text cut in two is in both."""
        j = bisect.bisect_left(self.ends, offset)  # text j holds token offset - 1
        last = j == len(self.ends) - 1
        head = TextSpan(
            self.source, self.first, (*self.ends[:j], offset), self.ends[j] > offset or (last and self.truncated)
        )
        rest = j if self.ends[j] > offset else j + 1
        tail = TextSpan(self.source, self.first + rest, tuple(e - offset for e in self.ends[rest:]), self.truncated)
        return head, tail

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "texts": [self.first, self.first + len(self.ends)], "tokens": self.n_tokens}


def _split_spans(spans: Sequence[TextSpan], n_tokens: int) -> tuple[list[TextSpan], list[TextSpan]]:
    head: list[TextSpan] = []
    tail: list[TextSpan] = []
    seen = 0
    for span in spans:
        if seen + span.n_tokens <= n_tokens:
            head.append(span)
        elif seen >= n_tokens:
            tail.append(span)
        else:
            a, b = span.cut(n_tokens - seen)
            head.append(a)
            tail.append(b)
        seen += span.n_tokens
    return head, tail


@dataclass
class TokenSet:
    """Packed rows of a dataset, ready to be cut into batches.

    Attributes:
        tokens: ``[n_rows pos]`` token ids.
        valid: ``[n_rows pos]`` bool, see :class:`TokenBatch`.
        n_texts: texts read from the source to make them (None when unknown).
        spans: which texts of which sources the counted tokens came from, in order
            (empty when unknown, e.g. for tokens read back from a file).
    """

    tokens: Int[torch.Tensor, "batch pos"]
    valid: Bool[torch.Tensor, "batch pos"]
    n_texts: int | None = None
    spans: list[TextSpan] = field(default_factory=list)

    def text_ranges(self) -> list[dict[str, Any]]:
        """Where the tokens came from: ``{"source", "texts": [first, end), "tokens"}`` per span."""
        return [span.to_dict() for span in self.spans]

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

    def sha256(self) -> str:
        """A checksum of the rows and which of their tokens count (hex), independent of device and dtype.

        A run records it for each token budget it used; reading the run's sources again
        must give the same checksum before their text is shown or used.
        """
        import hashlib

        digest = hashlib.sha256()
        digest.update(str(tuple(self.tokens.shape)).encode())
        digest.update(self.tokens.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
        digest.update(self.valid.detach().to("cpu", torch.uint8).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def split(self, n_tokens: int) -> tuple[TokenSet, TokenSet]:
        """The first ``n_tokens`` counted tokens, and the rest.

        A row that straddles the boundary appears in both parts, with complementary
        ``valid`` masks: its earlier tokens still serve as context for the later ones
        (and a text cut by the boundary is in the spans of both parts).
        """
        position = self.valid.reshape(-1).cumsum(0).view_as(self.valid)
        first = self.valid & (position <= n_tokens)
        second = self.valid & (position > n_tokens)
        in_first, in_second = first.any(1), second.any(1)
        spans = _split_spans(self.spans, n_tokens) if self.spans else ([], [])
        return (
            TokenSet(self.tokens[in_first], first[in_first], spans=spans[0]),
            TokenSet(self.tokens[in_second], second[in_second], spans=spans[1]),
        )

    @classmethod
    def concat(cls, parts: Sequence[TokenSet]) -> TokenSet:
        """The rows of several token sets of one row length, in order."""
        widths = {p.tokens.shape[1] for p in parts}
        if len(widths) != 1:
            raise UnlearnLensError(f"cannot join token sets of different row lengths {sorted(widths)}")
        n_texts = [p.n_texts for p in parts]
        spans = [s for p in parts for s in p.spans] if all(p.spans or not p.n_tokens for p in parts) else []
        return cls(
            torch.cat([p.tokens for p in parts]),
            torch.cat([p.valid for p in parts]),
            n_texts=None if None in n_texts else sum(n_texts),
            spans=spans,
        )


def mix_token_sets(
    model: Any,
    sources: Sequence[Iterable[str] | TokenSet],
    shares: Sequence[float] | None,
    budgets: Sequence[int],
    *,
    seq_len: int | None = None,
    compat: str = "none",
) -> TokenSet:
    """Several sources as one dataset, each contributing its share of every budget.

    With ``budgets=[collect, eval]`` the result's first ``collect`` counted tokens
    hold ``share_i * collect`` tokens of each source, and the next ``eval`` tokens
    ``share_i * eval`` of each, so splitting it at ``collect`` (as the pruning loop
    does) gives both parts the same mix, packed from texts the other part does not use.

    Args:
        model: the model whose tokenizer and context to use.
        sources: texts, lazy streams (only what the budgets need is read) or token sets.
        shares: token share of each source (normalised; default equal shares).
        budgets: token budgets, in order (e.g. statistics then evaluation tokens).
        seq_len: row length (default: the model's context, at most 256).
        compat: how texts become rows (:func:`token_budgets`).

    Returns:
        The mixed :class:`TokenSet` (``n_texts``: texts packed from all sources; ``spans``: which).

    Raises:
        UnlearnLensError: no sources, shares that do not fit them, or a source shorter than its share.
    """
    if not sources:
        raise UnlearnLensError("no sources to mix")
    if len(sources) == 1 and shares is None:
        return TokenSet.concat(as_token_sets(model, sources[0], budgets, seq_len=seq_len, compat=compat))
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
        parts = as_token_sets(model, source, counts, seq_len=seq_len, compat=compat)
        if any(part.n_tokens < n for part, n in zip(parts, counts)):
            name = getattr(source, "name", "a source")
            raise UnlearnLensError(
                f"dataset {name!r} gave {[p.n_tokens for p in parts]} tokens where its share of the budgets "
                f"{list(budgets)} is {list(counts)}: give more text or a smaller share (each budget is packed "
                "from separate texts, so a source needs enough texts for all of them)"
            )
        for j, part in enumerate(parts):
            pieces[j].append(part)
    return TokenSet.concat([p for budget in pieces for p in budget if p.n_tokens])


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """The ``(bos, eos, pad)`` ids that mark text boundaries: BOS falls back on EOS and back, pad on EOS."""
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


_PIECE_CHARS = 100_000  # a longer text is tokenised piece by piece, only as far as a budget reads it
_LINE_BREAK = re.compile(r"(?<=\S)\n(?=\S)")  # GPT-2-style pre-tokenisation splits after it anyway
_WORD_BREAK = re.compile(r"(?<=\S) (?=\S)")  # and before it (the space goes with the next word)


def _pieces(text: str, size: int) -> Iterator[str]:
    """``text`` in consecutive pieces of at most ``size`` characters, cut where words part.

    Each piece ends after the last line break in the second half of its reach that
    stands between two non-space characters, else before the last space between two
    words there, else (a text without either) at ``size`` characters. GPT-2-style
    pre-tokenisation splits the whole text at these places too, so the pieces give its
    tokens; a tokenizer that marks the start of a text (SentencePiece's leading space)
    may differ by a token at a cut.
    """
    start = 0
    while len(text) - start > size:
        end = start + size
        lines = [m.end() for m in _LINE_BREAK.finditer(text, start + size // 2, end)]
        words = [] if lines else [m.start() for m in _WORD_BREAK.finditer(text, start + size // 2, end)]
        cut = (lines or words or [end])[-1]
        yield text[start:cut]
        start = cut
    yield text[start:]


class _Packer:
    """Hands out the token ids of a stream of texts, one text at a time, reading ahead in chunks.

    Short texts are tokenised a group at a time (at most ``_PIECE_CHARS`` characters
    per call); a longer text is tokenised piece by piece (:func:`_pieces`) as it is
    packed, so that a budget reads no more of it than it needs and memory stays bounded
    by the piece, not the text.
    """

    def __init__(self, tokenizer: Any, texts: Iterable[str]):
        if isinstance(texts, str):
            raise UnlearnLensError("texts must be a list of strings, not one string (wrap it in a list)")
        self.tokenizer = tokenizer
        self.texts = iter(texts)
        self.name = str(getattr(texts, "name", "the given texts"))
        self.pending: collections.deque[str] = collections.deque()  # texts read, not yet tokenised
        self.ready: collections.deque[list[int]] = collections.deque()  # texts tokenised, not yet handed out
        self.n_used = 0  # texts handed out
        self.chunk = 8  # texts read at once: 8 at first, doubling to 64, so little is read past a budget

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]

    def _long_text(self, text: str) -> Iterator[list[int]]:
        for piece in _pieces(text, _PIECE_CHARS):
            yield self._ids([piece])[0]

    def next_text(self) -> Iterator[list[int]] | None:
        """The next text's token ids, as consecutive pieces (one, unless the text is long); None at the end."""
        if not self.ready:
            if not self.pending:
                self.pending.extend(itertools.islice(self.texts, self.chunk))
                self.chunk = min(2 * self.chunk, 64)
            if not self.pending:
                return None
            if len(self.pending[0]) > _PIECE_CHARS:
                self.n_used += 1
                return self._long_text(self.pending.popleft())
            group, size = [], 0
            while self.pending and size + len(self.pending[0]) <= _PIECE_CHARS:
                size += len(self.pending[0])
                group.append(self.pending.popleft())
            self.ready.extend(self._ids(group))
        self.n_used += 1
        return iter([self.ready.popleft()])

    def pack(self, seq_len: int, max_tokens: int | None, eos: int, bos: int, pad: int) -> TokenSet:
        """Whole texts (the last one perhaps cut short) up to ``max_tokens`` counted tokens, in rows."""
        first = self.n_used
        stream: list[int] = []
        ends: list[int] = []
        while max_tokens is None or len(stream) < max_tokens:
            pieces = self.next_text()
            if pieces is None:
                break
            for ids in pieces:
                stream.extend(ids)
                if max_tokens is not None and len(stream) >= max_tokens:
                    break  # the rest of the text is never tokenised: no budget uses it
            stream.append(eos)
            ends.append(len(stream))
        truncated = max_tokens is not None and len(stream) > max_tokens
        if truncated:
            del stream[max_tokens:]
            ends[-1] = max_tokens
        body = seq_len - 1
        n_rows = -(-len(stream) // body)
        flat = torch.full((n_rows * body,), pad, dtype=torch.long)
        flat[: len(stream)] = torch.tensor(stream, dtype=torch.long)
        tokens = torch.cat([torch.full((n_rows, 1), bos, dtype=torch.long), flat.view(n_rows, body)], dim=1)
        valid = torch.zeros((n_rows * body,), dtype=torch.bool)
        valid[: len(stream)] = True
        valid = torch.cat([torch.zeros((n_rows, 1), dtype=torch.bool), valid.view(n_rows, body)], dim=1)
        spans = [TextSpan(self.name, first, tuple(ends), truncated)] if ends else []
        return TokenSet(tokens, valid, n_texts=len(ends), spans=spans)


_SHIPPED: dict[str, tuple[tuple[int, ...], tuple[int, ...]] | None] = {}  # name_or_path -> its special tokens


def _affixes(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The special token ids ``tokenizer`` adds before and after a text by default."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return tuple(full[:start]), tuple(full[start + len(bare) :])
    raise UnlearnLensError(
        f"cannot tell which special tokens the tokenizer adds to a text: {bare} becomes {full} with them"
    )


def _own_special_tokens(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The special tokens the tokenizer *as shipped* adds before and after a text.

    TransformerLens reloads every tokenizer with ``add_bos_token=True``, so a GPT-2 or
    Pythia tokenizer on a loaded model prepends a BOS that its own configuration does
    not. The shipped tokenizer is read again from the files it was loaded from (no
    download); where there are none, the tokenizer as given answers, with a warning.
    """
    path = str(getattr(tokenizer, "name_or_path", "") or "")
    if path and path not in _SHIPPED:
        try:
            from transformers import AutoTokenizer

            _SHIPPED[path] = _affixes(AutoTokenizer.from_pretrained(path, local_files_only=True))
        except (OSError, ValueError) as exc:
            logger.warning("cannot read tokenizer %r again (%s): its special tokens are taken as loaded", path, exc)
            _SHIPPED[path] = None
    shipped = _SHIPPED.get(path)
    if shipped is None:
        if not path:
            logger.warning("the tokenizer names no files to read again: its special tokens are taken as loaded")
        return _affixes(tokenizer)
    return shipped


def _pack_text_rows(
    packer: _Packer, seq_len: int, max_tokens: int | None, affixes: tuple[tuple[int, ...], ...], pad: int
) -> TokenSet:
    """Texts one per row, as the reference reads them: each with its special tokens, cut to ``seq_len``.

    Every position of a row counts (a special token the tokenizer prepends included);
    the last text is cut short where the budget ends. Only the first ``seq_len`` tokens of
    a text are read; the rest of it is used by no budget.
    """
    first = packer.n_used
    rows: list[list[int]] = []
    ends: list[int] = []
    total, truncated = 0, False
    while max_tokens is None or total < max_tokens:
        pieces = packer.next_text()
        if pieces is None:
            break
        ids = list(affixes[0])
        for piece in pieces:
            ids.extend(piece)
            if len(ids) >= seq_len:
                break  # the rest of the text lies past the row
        ids = (ids + list(affixes[1]))[:seq_len]
        room = seq_len if max_tokens is None else min(seq_len, max_tokens - total)
        truncated = len(ids) > room
        if ids[:room]:
            rows.append(ids[:room])
        total += len(ids[:room])
        ends.append(total)
    tokens = torch.full((len(rows), seq_len), pad, dtype=torch.long)
    valid = torch.zeros((len(rows), seq_len), dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        valid[i, : len(row)] = True
    spans = [TextSpan(packer.name, first, tuple(ends), truncated)] if ends else []
    return TokenSet(tokens, valid, n_texts=len(ends), spans=spans)


def _check_packing(seq_len: int, budgets: Sequence[int | None]) -> None:
    if seq_len < 2:
        raise UnlearnLensError(f"seq_len must be at least 2, got {seq_len}")
    for budget in budgets:
        if budget is not None and budget < 0:
            raise UnlearnLensError(f"token budgets must be 0 or more, got {budget}")


def tokenize_texts(
    tokenizer: Any,
    texts: Iterable[str],
    *,
    seq_len: int,
    max_tokens: int | None = None,
    compat: str = "none",
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
        compat: ``"taker"``: one text per row as the reference implementation reads
            texts (:func:`token_budgets`).

    Returns:
        A :class:`TokenSet` (``n_texts``: the texts packed; ``spans``: which they
        were); only its last row may be padded.

    Raises:
        UnlearnLensError: no texts, or a bad ``seq_len`` / ``max_tokens``.
    """
    if max_tokens is not None and max_tokens <= 0:
        raise UnlearnLensError(f"max_tokens must be positive, got {max_tokens}")
    return token_budgets(tokenizer, texts, [max_tokens], seq_len=seq_len, compat=compat)[0]


def token_budgets(
    tokenizer: Any,
    texts: Iterable[str],
    budgets: Sequence[int | None],
    *,
    seq_len: int,
    compat: str = "none",
) -> list[TokenSet]:
    """Consecutive token budgets of one stream of texts, packed apart, that share no text.

    Each budget is packed from whole texts that follow those of the budget before it
    (a text that does not fit a budget is cut short, and the rest of it is used by
    no budget), so statistics and evaluation tokens drawn this way never come from
    the same text. Only what the budgets need is read from ``texts``.

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: the texts, in order (a list, or a lazy stream).
        budgets: counted tokens of each part (None: all the texts left).
        seq_len: row length including the BOS token.
        compat: ``"taker"``: as the reference implementation reads texts, one text per
            row (cut to ``seq_len``), with the special tokens of the tokenizer as shipped
            (none for GPT-2 and Pythia, a leading ``</s>`` for OPT) and no added BOS;
            every position counts. See :mod:`unlearn_lens.compat`.

    Returns:
        One :class:`TokenSet` per budget; a part may be short, or empty, when the
        texts run out (check ``n_tokens``).

    Raises:
        UnlearnLensError: no texts at all, or a bad ``seq_len`` / budget.
    """
    _check_packing(seq_len, budgets)
    bos, eos, pad = special_ids(tokenizer)
    packer = _Packer(tokenizer, texts)
    if rules(compat).text_per_row:
        affixes = _own_special_tokens(tokenizer)
        parts = [_pack_text_rows(packer, seq_len, budget, affixes, pad) for budget in budgets]
    else:
        parts = [packer.pack(seq_len, budget, eos, bos, pad) for budget in budgets]
    if packer.n_used == 0:
        name = getattr(texts, "name", None)
        raise UnlearnLensError(
            f"dataset {name!r} has no non-empty texts" if name else "no texts to tokenise (empty dataset)"
        )
    if not any(part.n_tokens for part in parts):
        raise UnlearnLensError("the texts produced no tokens")
    return parts


def default_seq_len(model: Any) -> int:
    """Row length used when none is given: the model's context, at most 256."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None) or 256
    return int(min(n_ctx, 256))


def as_token_sets(
    model: Any,
    texts: Iterable[str] | TokenSet,
    budgets: Sequence[int | None],
    *,
    seq_len: int | None = None,
    compat: str = "none",
) -> list[TokenSet]:
    """Consecutive token budgets of ``texts`` for ``model``.

    Texts (a list or a lazy stream) are packed per budget from texts no other budget
    uses (:func:`token_budgets`, whose ``compat`` this passes on); a :class:`TokenSet`
    is split token by token, so a text cut by a boundary is in both parts (its spans say which).

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
        parts, rest = [], texts
        for budget in budgets:
            if budget is None or rest.n_tokens <= budget:
                parts.append(rest)
                rest = TokenSet(rest.tokens[:0], rest.valid[:0])
            else:
                head, rest = rest.split(budget)
                parts.append(head)
        return parts
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UnlearnLensError(f"model {model_name(model)!r} has no tokenizer")
    return token_budgets(tokenizer, texts, budgets, seq_len=width, compat=compat)


def as_token_set(
    model: Any,
    texts: Iterable[str] | TokenSet,
    *,
    seq_len: int | None = None,
    max_tokens: int | None = None,
    compat: str = "none",
) -> TokenSet:
    """Tokenise ``texts`` for ``model`` unless they already are a :class:`TokenSet`.

    A :class:`TokenSet` longer than ``max_tokens`` is cut to its first ``max_tokens``
    counted tokens. Texts may be a lazy stream; only what ``max_tokens`` needs is read.
    ``compat`` chooses how texts become rows (:func:`token_budgets`).

    Raises:
        UnlearnLensError: no tokenizer, or rows longer than the model's context.
    """
    if max_tokens is not None and max_tokens <= 0:
        raise UnlearnLensError(f"max_tokens must be positive, got {max_tokens}")
    return as_token_sets(model, texts, [max_tokens], seq_len=seq_len, compat=compat)[0]
