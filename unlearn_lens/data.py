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
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Int

from unlearn_lens.demo import demo_texts
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import model_name

__all__ = ["TokenBatch", "TokenSet", "as_token_set", "default_seq_len", "load_texts", "tokenize_texts"]

logger = logging.getLogger(__name__)

_LOCAL_FORMATS = {
    ".txt": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}


def _check_field(columns: Sequence[str] | None, text_field: str, source: str) -> None:
    if columns is not None and text_field not in columns:
        raise UnlearnLensError(
            f"dataset {source!r} has no text field {text_field!r}; its fields are {sorted(columns)} "
            "(choose one with text_field=... or --text-field)"
        )


def _non_empty(rows: Sequence[Any]) -> list[str]:
    return [r for r in rows if isinstance(r, str) and r.strip()]


def load_texts(
    source: str | Sequence[str],
    *,
    split: str = "train",
    text_field: str = "text",
    limit: int | None = None,
) -> list[str]:
    """Load texts from a dataset, a local file or folder, the demo corpora, or a list.

    Args:
        source: a list of strings; ``"demo:code"`` / ``"demo:prose"`` (held-out
            demo texts; ``"demo:code:train"`` for the training split); a local
            ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file, or a
            folder of such files; or a Hugging Face dataset id (streamed, needs the
            network), optionally with a config as ``"name:config"``.
        split: the dataset split (Hub datasets and local files; local files are one
            ``train`` split).
        text_field: the column holding the text (``.txt`` files have ``text``).
        limit: keep at most this many texts.

    Returns:
        The non-empty texts, in order.

    Raises:
        UnlearnLensError: the source does not exist, has no such field, or is empty.
    """
    if limit is not None and limit <= 0:
        raise UnlearnLensError(f"limit must be positive, got {limit}")
    if not isinstance(source, (str, Path)):
        texts = _non_empty(list(source))
        name = "the given list"
    elif str(source).startswith("demo:"):
        parts = str(source).split(":")
        texts = demo_texts(parts[1], parts[2] if len(parts) > 2 else "heldout")
        name = str(source)
    else:
        texts, name = _load_dataset_texts(str(source), split=split, text_field=text_field, limit=limit)
    if limit is not None:
        texts = texts[:limit]
    if not texts:
        raise UnlearnLensError(f"dataset {name!r} has no non-empty texts")
    return texts


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[Any]:
    """``datasets`` with its logging at ERROR and no progress bars, restored on exit.

    The library's global settings are the user's: they are changed only for the
    duration of one load.
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


def _load_dataset_texts(source: str, *, split: str, text_field: str, limit: int | None) -> tuple[list[str], str]:
    with _quiet_datasets() as datasets:
        return _read_dataset_texts(datasets, source, split=split, text_field=text_field, limit=limit)


def _read_dataset_texts(
    datasets: Any, source: str, *, split: str, text_field: str, limit: int | None
) -> tuple[list[str], str]:
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
            texts = []
            for file in files:
                try:
                    texts.append(file.read_text(encoding="utf-8"))
                except UnicodeDecodeError as exc:
                    raise UnlearnLensError(f"file {str(file)!r} is not UTF-8 text: {exc}") from exc
            return [t for t in texts if t.strip()], source
        try:
            ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
        except Exception as exc:
            raise UnlearnLensError(f"could not read {source!r} as {kind}: {exc}") from exc
        _check_field(ds.column_names, text_field, source)
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        return _non_empty(ds[text_field]), source
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise UnlearnLensError(f"data file or folder {source!r} does not exist")
    name, _, config = source.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
        _check_field(list(ds.features) if ds.features is not None else None, text_field, source)
        rows = []
        for row in ds:
            _check_field(list(row), text_field, source)
            rows.append(row[text_field])
            if limit is not None and len(rows) >= limit:
                break
    except UnlearnLensError:
        raise
    except Exception as exc:
        raise UnlearnLensError(
            f"could not load dataset {source!r} (split {split!r}) from the Hub (is the network reachable?): {exc}"
        ) from exc
    return _non_empty(rows), source


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
    """

    tokens: Int[torch.Tensor, "batch pos"]
    valid: Bool[torch.Tensor, "batch pos"]

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
    texts: Sequence[str],
    *,
    seq_len: int,
    max_tokens: int | None = None,
) -> TokenSet:
    """Tokenise texts and pack them into BOS-led rows of ``seq_len`` tokens.

    Args:
        tokenizer: a Hugging Face tokenizer (the model's ``tokenizer``).
        texts: the texts, in order.
        seq_len: row length including the BOS token (at least 2).
        max_tokens: stop once this many counted tokens (BOS excluded) are packed.

    Returns:
        A :class:`TokenSet`; only its last row may be padded.

    Raises:
        UnlearnLensError: no texts, or a bad ``seq_len`` / ``max_tokens``.
    """
    if seq_len < 2:
        raise UnlearnLensError(f"seq_len must be at least 2, got {seq_len}")
    if max_tokens is not None and max_tokens <= 0:
        raise UnlearnLensError(f"max_tokens must be positive, got {max_tokens}")
    if not texts:
        raise UnlearnLensError("no texts to tokenise (empty dataset)")
    bos, eos, pad = _special_ids(tokenizer)
    body = seq_len - 1
    stream: list[int] = []
    chunk = 64
    for start in range(0, len(texts), chunk):
        encoded = tokenizer(list(texts[start : start + chunk]), add_special_tokens=False)["input_ids"]
        for ids in encoded:
            stream.extend(ids)
            stream.append(eos)
        if max_tokens is not None and len(stream) >= max_tokens:
            break
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
    return TokenSet(tokens, valid)


def default_seq_len(model: Any) -> int:
    """Row length used when none is given: the model's context, at most 256."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None) or 256
    return int(min(n_ctx, 256))


def as_token_set(
    model: Any, texts: Sequence[str] | TokenSet, *, seq_len: int | None = None, max_tokens: int | None = None
) -> TokenSet:
    """Tokenise ``texts`` for ``model`` unless they already are a :class:`TokenSet`.

    A :class:`TokenSet` longer than ``max_tokens`` is cut to its first ``max_tokens``
    counted tokens.
    """
    if isinstance(texts, TokenSet):
        if max_tokens is not None and texts.n_tokens > max_tokens:
            return texts.split(max_tokens)[0]
        return texts
    if isinstance(texts, str):
        raise UnlearnLensError("texts must be a list of strings, not one string (wrap it in a list)")
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UnlearnLensError(f"model {model_name(model)!r} has no tokenizer")
    return tokenize_texts(tokenizer, list(texts), seq_len=seq_len or default_seq_len(model), max_tokens=max_tokens)
