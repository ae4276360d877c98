"""A unit and the model on any text, unpruned beside pruned: what the notebook dashboard and ``serve`` show live.

* :func:`text_tokens`: a text as the model reads it: BOS, then the text's tokens (no end token);
* :func:`text_activations`: one unit's activation at every token of the text, on the
  unpruned model and with the run's pruning hooks (``ul.pruned(model, run.masks, run.ablation)``:
  a pruned unit reads its ablated value there);
* :func:`next_tokens`: the model's top-k next tokens after the text, with their
  probabilities, both ways.

BOS is left out of what is returned.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int

from unlearn_lens.data import special_ids
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import attached, model_device, model_name
from unlearn_lens.pruning import pruned
from unlearn_lens.report.display import TokenDecoder, Unit
from unlearn_lens.results import PruneRun

__all__ = ["next_tokens", "text_activations", "text_tokens"]


def text_tokens(model: Any, text: str) -> Int[torch.Tensor, " pos"]:
    """BOS and the tokens of ``text``, as a row of the run's datasets starts (no end-of-text token).

    Raises:
        UnlearnLensError: no tokenizer, an empty text, or one longer than the model's context.
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UnlearnLensError(f"model {model_name(model)!r} has no tokenizer")
    bos = special_ids(tokenizer)[0]
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    if not ids:
        raise UnlearnLensError("the text has no tokens")
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n_ctx and len(ids) + 1 > n_ctx:
        raise UnlearnLensError(f"the text has {len(ids)} tokens; the model reads at most {n_ctx - 1} after BOS")
    return torch.tensor([bos, *ids], dtype=torch.long)


def _unit_values(model: Any, tokens: torch.Tensor, unit: Unit) -> list[float]:
    found: list[torch.Tensor] = []

    def read(x: torch.Tensor, hook: Any) -> None:
        found.append(x[0, :, unit.index] if unit.kind == "mlp" else x[0, :, unit.head, unit.d])

    with attached(model, [(unit.hook, read)]):
        model(tokens[None].to(model_device(model)))
    return [float(v) for v in found[0][1:].float().cpu()]


@torch.no_grad()
def text_activations(model: Any, run: PruneRun, unit: Unit, text: str) -> dict[str, Any]:
    """``{"tokens": [...], "acts": [...], "acts_pruned": [...]}``: the unit at each token of ``text`` (BOS left out).

    ``acts_pruned`` is read with the run's pruning hooks in place, so a pruned unit shows
    the value it is ablated to.
    """
    tokens = text_tokens(model, text)
    decode = TokenDecoder(model.tokenizer)
    acts = _unit_values(model, tokens, unit)
    with pruned(model, run.masks, run.ablation):
        acts_pruned = _unit_values(model, tokens, unit)
    return {"tokens": [decode(int(t)) for t in tokens[1:]], "acts": acts, "acts_pruned": acts_pruned}


def _top(model: Any, tokens: torch.Tensor, k: int, decode: TokenDecoder) -> list[list[Any]]:
    logits = model(tokens[None].to(model_device(model)))[0, -1].float()
    top = torch.topk(logits.softmax(-1), k)
    return [[decode(int(t)), float(p)] for p, t in zip(top.values.cpu(), top.indices.cpu())]


@torch.no_grad()
def next_tokens(model: Any, run: PruneRun, text: str, k: int = 5) -> dict[str, Any]:
    """The top-``k`` next tokens after ``text``: ``{"tokens", "unpruned": [[token, p], ...], "pruned": [...]}``."""
    tokens = text_tokens(model, text)
    decode = TokenDecoder(model.tokenizer)
    unpruned = _top(model, tokens, k, decode)
    with pruned(model, run.masks, run.ablation):
        after = _top(model, tokens, k, decode)
    return {"tokens": [decode(int(t)) for t in tokens[1:]], "unpruned": unpruned, "pruned": after}
