"""Next-token evaluation: top-1 and top-k accuracy, cross-entropy loss, perplexity.

Each counted position predicts the next token of its row; padding targets never
count. With ``skip_common=N`` the N most frequent target tokens of the dataset are
left out of every metric (the paper skipped 50), so that accuracy is not carried
by punctuation and whitespace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from unlearn_lens.data import TokenSet, as_token_set
from unlearn_lens.distributed import is_main, shard, sum_across
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import exclusive, model_device

__all__ = ["EvalResult", "check_topk", "evaluate"]


@dataclass
class EvalResult:
    """Next-token metrics on one dataset.

    Attributes:
        top1: fraction of targets that are the model's top prediction.
        topk: fraction of targets among its ``k`` top predictions.
        loss: mean cross-entropy (nats).
        perplexity: exp(loss).
        n_tokens: targets scored.
        k: the k of ``topk``.
        all_tokens: with ``skip_common``, the same metrics over every target, the
            common ones included (measured in the same pass); None otherwise.
    """

    top1: float
    topk: float
    loss: float
    perplexity: float
    n_tokens: int
    k: int = 10
    all_tokens: EvalResult | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.all_tokens is None:
            del out["all_tokens"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        data = dict(data)
        nested = data.pop("all_tokens", None)
        return cls(**data, all_tokens=None if nested is None else cls.from_dict(nested))

    @classmethod
    def _from_sums(cls, n_top1: int, n_topk: int, total_loss: float, n: int, k: int) -> EvalResult:
        loss = total_loss / n
        return cls(top1=n_top1 / n, topk=n_topk / n, loss=loss, perplexity=math.exp(min(loss, 700.0)), n_tokens=n, k=k)

    def relative_to(self, base: EvalResult) -> dict[str, float]:
        """Each metric divided by its value in ``base`` (e.g. the unpruned model)."""
        return {
            "top1": self.top1 / base.top1 if base.top1 else math.nan,
            "topk": self.topk / base.topk if base.topk else math.nan,
            "loss": self.loss / base.loss if base.loss else math.nan,
            "perplexity": self.perplexity / base.perplexity if base.perplexity else math.nan,
        }


def check_topk(model: Any, topk: int) -> None:
    """Refuse a k of top-k accuracy below 1 or above the vocabulary of ``model`` (its ``cfg.d_vocab``).

    Raises:
        UnlearnLensError: ``topk`` is out of range.
    """
    if topk < 1:
        raise UnlearnLensError(f"topk must be at least 1, got {topk}")
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if isinstance(d_vocab, int) and d_vocab > 0 and topk > d_vocab:
        raise UnlearnLensError(
            f"topk={topk:,} is more than the {d_vocab:,} tokens of the vocabulary of the model (top-k accuracy "
            f"would be 1 by construction); choose topk <= {d_vocab:,}"
        )


def _targets(tokens: TokenSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets ``[n_rows pos-1]`` and which of them count (real tokens)."""
    return tokens.tokens[:, 1:], tokens.valid[:, 1:]


@torch.no_grad()
def evaluate(
    model: Any,
    texts: Sequence[str] | TokenSet,
    *,
    max_tokens: int | None = 100_000,
    batch_size: int = 8,
    seq_len: int | None = None,
    topk: int = 10,
    skip_common: int = 0,
    progress: bool = True,
    desc: str = "evaluate",
) -> EvalResult:
    """Measure next-token accuracy and loss of ``model`` on a dataset.

    The model is evaluated as it runs: inside :func:`unlearn_lens.pruned` that is the
    pruned model. Under a ``torch.distributed`` process group each rank evaluates its
    share of the rows and all ranks return the summed result.

    Args:
        model: a TransformerLens model.
        texts: texts or a :class:`TokenSet`.
        max_tokens: targets to score at most (before ``skip_common``).
        batch_size: rows per forward pass.
        seq_len: row length (default: the model's context, at most 256).
        topk: the k of top-k accuracy.
        skip_common: leave out targets among the dataset's ``skip_common`` most common
            tokens (the metrics over all targets are then in ``all_tokens``).
        progress: show a progress bar.
        desc: progress bar label.

    Returns:
        :class:`EvalResult`.

    Raises:
        UnlearnLensError: ``topk`` is not in [1, the model's vocabulary size], or a bad
            ``skip_common`` / ``batch_size``.
    """
    check_topk(model, topk)
    if skip_common < 0:
        raise UnlearnLensError(f"skip_common must be non-negative, got {skip_common}")
    if batch_size <= 0:
        raise UnlearnLensError(f"batch_size must be positive, got {batch_size}")
    tokens = as_token_set(model, texts, seq_len=seq_len, max_tokens=max_tokens)
    targets, counted = _targets(tokens)
    skip = None
    if skip_common:
        freq = torch.bincount(targets[counted])
        skip = freq.argsort(descending=True, stable=True)[:skip_common]
    device = model_device(model)
    sums = torch.zeros((2, 4), dtype=torch.float64)  # [kept, all] x [top-1 hits, top-k hits, loss, targets]
    part = shard(tokens)  # this process's rows (all of them without a process group)
    counted = _targets(part)[1]
    bar = tqdm(total=int(counted.sum()), desc=desc, unit="tok", disable=not (progress and is_main()), leave=False)
    with exclusive(model, "evaluate"):
        for start in range(0, len(part), batch_size):
            rows = part.tokens[start : start + batch_size].to(device)
            logits = model(rows)[:, :-1]  # on the last layer's device, under a device map
            real = counted[start : start + batch_size].to(logits.device)
            logits, target = logits[real].float(), rows[:, 1:].to(logits.device)[real]
            bar.update(int(real.sum()))
            if target.numel() == 0:
                continue
            loss = torch.nn.functional.cross_entropy(logits, target, reduction="none").double()
            top = logits.topk(min(topk, logits.shape[-1]), dim=-1).indices
            per_token = torch.stack(
                [(top[:, 0] == target).double(), (top == target[:, None]).any(-1).double(), loss, torch.ones_like(loss)]
            )
            kept = (
                ~torch.isin(target, skip.to(target.device))
                if skip is not None
                else torch.ones_like(target, dtype=torch.bool)
            )
            sums += torch.stack([per_token[:, kept].sum(1), per_token.sum(1)]).cpu()
    bar.close()
    sums = sum_across(sums)  # the counts of every rank of a process group
    (n_top1, n_topk, total_loss, n), everything = sums[0].tolist(), sums[1].tolist()
    if n == 0:
        raise UnlearnLensError("no tokens left to evaluate (empty dataset, or skip_common removed every target)")
    result = EvalResult._from_sums(int(n_top1), int(n_topk), total_loss, int(n), topk)
    if skip is not None:
        result.all_tokens = EvalResult._from_sums(
            *(int(x) for x in everything[:2]), everything[2], int(everything[3]), topk
        )
    return result
