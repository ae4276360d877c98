"""Token batches: texts (lists or lazy streams from :mod:`unlearn_lens.sources`) packed into rows.

Tokenising packs the texts, each followed by the end-of-text token, into rows of
``seq_len`` tokens that each start with a BOS token: ``[BOS, t_1, ..., t_{seq_len-1}]``.
Only the last row can be short; it is right-padded. A boolean ``valid`` mask
``[batch pos]`` marks the positions that count for statistics: real tokens other
than the BOS position. Right padding needs no attention mask in a causal model,
since no real token attends to a later position.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Int

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
    """

    source: str
    first: int
    ends: tuple[int, ...]

    @property
    def n_tokens(self) -> int:
        return self.ends[-1] if self.ends else 0

    def cut(self, offset: int) -> tuple[TextSpan, TextSpan]:
        """The span's first ``offset`` tokens and the rest; a text cut in two is in both."""
        j = bisect.bisect_left(self.ends, offset)  # text j holds token offset - 1
        head = TextSpan(self.source, self.first, (*self.ends[:j], offset))
        rest = j if self.ends[j] > offset else j + 1
        tail = TextSpan(self.source, self.first + rest, tuple(e - offset for e in self.ends[rest:]))
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

    Returns:
        The mixed :class:`TokenSet` (``n_texts``: texts packed from all sources; ``spans``: which).

    Raises:
        UnlearnLensError: no sources, shares that do not fit them, or a source shorter than its share.
    """
    if not sources:
        raise UnlearnLensError("no sources to mix")
    if len(sources) == 1 and shares is None:
        return TokenSet.concat(as_token_sets(model, sources[0], budgets, seq_len=seq_len))
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
        parts = as_token_sets(model, source, counts, seq_len=seq_len)
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


class _Packer:
    """Hands out the token ids of a stream of texts, one text at a time, reading ahead in chunks."""

    def __init__(self, tokenizer: Any, texts: Iterable[str]):
        if isinstance(texts, str):
            raise UnlearnLensError("texts must be a list of strings, not one string (wrap it in a list)")
        self.tokenizer = tokenizer
        self.texts = iter(texts)
        self.name = str(getattr(texts, "name", "the given texts"))
        self.pending: collections.deque[list[int]] = collections.deque()
        self.n_used = 0  # texts handed out
        self.chunk = 8  # texts tokenised at once: 8 at first, doubling to 64, so little is read past a budget

    def next_ids(self) -> list[int] | None:
        if not self.pending:
            chunk = list(itertools.islice(self.texts, self.chunk))
            self.chunk = min(2 * self.chunk, 64)
            if chunk:
                self.pending.extend(self.tokenizer(chunk, add_special_tokens=False)["input_ids"])
        if not self.pending:
            return None
        self.n_used += 1
        return self.pending.popleft()

    def pack(self, seq_len: int, max_tokens: int | None, eos: int, bos: int, pad: int) -> TokenSet:
        """Whole texts (the last one perhaps cut short) up to ``max_tokens`` counted tokens, in rows."""
        first = self.n_used
        stream: list[int] = []
        ends: list[int] = []
        while max_tokens is None or len(stream) < max_tokens:
            ids = self.next_ids()
            if ids is None:
                break
            stream.extend(ids)
            stream.append(eos)
            ends.append(len(stream))
        if max_tokens is not None and len(stream) > max_tokens:
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
        spans = [TextSpan(self.name, first, tuple(ends))] if ends else []
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
        A :class:`TokenSet` (``n_texts``: the texts packed; ``spans``: which they
        were); only its last row may be padded.

    Raises:
        UnlearnLensError: no texts, or a bad ``seq_len`` / ``max_tokens``.
    """
    if max_tokens is not None and max_tokens <= 0:
        raise UnlearnLensError(f"max_tokens must be positive, got {max_tokens}")
    return token_budgets(tokenizer, texts, [max_tokens], seq_len=seq_len)[0]


def token_budgets(
    tokenizer: Any,
    texts: Iterable[str],
    budgets: Sequence[int | None],
    *,
    seq_len: int,
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

    Returns:
        One :class:`TokenSet` per budget; a part may be short, or empty, when the
        texts run out (check ``n_tokens``).

    Raises:
        UnlearnLensError: no texts at all, or a bad ``seq_len`` / budget.
    """
    _check_packing(seq_len, budgets)
    bos, eos, pad = _special_ids(tokenizer)
    packer = _Packer(tokenizer, texts)
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
    model: Any, texts: Iterable[str] | TokenSet, budgets: Sequence[int | None], *, seq_len: int | None = None
) -> list[TokenSet]:
    """Consecutive token budgets of ``texts`` for ``model``.

    Texts (a list or a lazy stream) are packed per budget from texts no other budget
    uses (:func:`token_budgets`); a :class:`TokenSet` is split token by token, so a
    text cut by a boundary is in both parts (its spans say which).

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
    return token_budgets(tokenizer, texts, budgets, seq_len=width)


def as_token_set(
    model: Any, texts: Iterable[str] | TokenSet, *, seq_len: int | None = None, max_tokens: int | None = None
) -> TokenSet:
    """Tokenise ``texts`` for ``model`` unless they already are a :class:`TokenSet`.

    A :class:`TokenSet` longer than ``max_tokens`` is cut to its first ``max_tokens``
    counted tokens. Texts may be a lazy stream; only what ``max_tokens`` needs is read.

    Raises:
        UnlearnLensError: no tokenizer, or rows longer than the model's context.
    """
    if max_tokens is not None and max_tokens <= 0:
        raise UnlearnLensError(f"max_tokens must be positive, got {max_tokens}")
    return as_token_sets(model, texts, [max_tokens], seq_len=seq_len)[0]
