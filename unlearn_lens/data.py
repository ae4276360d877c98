"""Token batches: texts (lists or lazy streams from :mod:`unlearn_lens.sources`) packed into rows.

Tokenising packs the texts, each followed by the end-of-text token, into rows of
``seq_len`` tokens that each start with a BOS token: ``[BOS, t_1, ..., t_{seq_len-1}]``.
Only the last row can be short; it is right-padded. A boolean ``valid`` mask
``[batch pos]`` marks the positions that count for statistics: real tokens other
than the BOS position. Right padding needs no attention mask in a causal model,
since no real token attends to a later position.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int

from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import model_name

__all__ = ["TokenBatch", "TokenSet", "as_token_set", "default_seq_len", "mix_token_sets", "tokenize_texts"]

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
