"""Applying masks: reversible hook ablation and permanent weight edits.

A pruned unit's activation is replaced by 0 (``ablation="zero"``) or by its mean on
the retain set (``ablation="mean"``, means from an :class:`ActivationStats`).

Reversible forms (weights untouched):

* :func:`pruned` — a context manager; on exit, also after an exception, every hook
  it added is gone;
* :func:`add_pruning` — the persistent form, returning a handle with ``remove()``.

Permanent form, :func:`prune_weights_`: the unit's row of the output projection is
zeroed and, for mean ablation, ``mean * row`` is folded into the output bias:

* MLP neuron i of layer l: ``W_out[l][i, :] = 0``, ``b_out[l] += mean_i * W_out[l][i, :]``;
* attention neuron (h, d): ``W_O[l][h, d, :] = 0``, ``b_O[l] += mean_(h,d) * W_O[l][h, d, :]``.

The edit is made on the underlying weights (the Hugging Face module for a bridge,
``W_out``/``W_O`` for a legacy HookedTransformer), so ``save_pretrained`` exports
the pruned model, and it gives the same logits as the hook form.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch

from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.masks import Masks
from unlearn_lens.models import (
    add_hook,
    attached,
    attn_hook_name,
    mlp_hook_name,
    model_dims,
    model_name,
    remove_hook,
    underlying_model,
)
from unlearn_lens.stats import ActivationStats

__all__ = [
    "ABLATIONS",
    "PruningHandle",
    "add_pruning",
    "hf_state_dict",
    "prune_weights_",
    "pruned",
    "pruning_hooks",
    "save_pruned",
]

logger = logging.getLogger(__name__)

ABLATIONS = ("zero", "mean")


def _check(model: Any, masks: Masks, ablation: str, means: ActivationStats | None) -> None:
    if ablation not in ABLATIONS:
        raise UnlearnLensError(f"unknown ablation {ablation!r}; choose one of {ABLATIONS}")
    if ablation == "mean" and means is None:
        raise UnlearnLensError("ablation='mean' needs means= (retain ActivationStats)")
    if not isinstance(masks, Masks):
        raise UnlearnLensError(f"masks must be a Masks, got {type(masks).__name__}")
    dims = model_dims(model)
    if masks.dims != dims:
        raise UnlearnLensError(
            f"masks for a model with {masks.dims.to_dict()} do not fit {model_name(model)!r} ({dims.to_dict()})"
        )
    if ablation == "mean" and means is not None and means.dims != dims:
        raise UnlearnLensError(
            f"means come from a model with {means.dims.to_dict()}, not {model_name(model)!r} ({dims.to_dict()})"
        )


def _replace_hook(mask: torch.Tensor, values: torch.Tensor | None) -> Any:
    """A forward hook that overwrites the masked units of its output with 0 or ``values``."""

    def fn(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        m = mask.to(activation.device)
        if values is None:
            return activation.masked_fill(m, 0)
        return torch.where(m, values.to(device=activation.device, dtype=activation.dtype), activation)

    return fn


def pruning_hooks(
    model: Any, masks: Masks, *, ablation: str = "zero", means: ActivationStats | None = None
) -> list[tuple[str, Any]]:
    """The ``(hook_name, forward_hook)`` pairs that apply ``masks``; layers with nothing pruned get none."""
    _check(model, masks, ablation, means)
    hooks: list[tuple[str, Any]] = []
    for layer in range(masks.dims.n_layers):
        for name, mask, stats in (
            (mlp_hook_name(layer), masks.mlp[layer], means.mlp if means is not None else None),
            (attn_hook_name(layer), masks.attn[layer], means.attn if means is not None else None),
        ):
            if not bool(mask.any()):
                continue
            values = stats.mean[layer].float() if ablation == "mean" and stats is not None else None
            hooks.append((name, _replace_hook(mask, values)))
    return hooks


@contextlib.contextmanager
def pruned(
    model: Any, masks: Masks, *, ablation: str = "zero", means: ActivationStats | None = None
) -> Iterator[Any]:
    """Run ``model`` with the masked units ablated, inside a ``with`` block.

    Args:
        model: a TransformerLens model.
        masks: units to prune.
        ablation: ``"zero"`` or ``"mean"``.
        means: retain statistics, required for ``"mean"`` and ignored for ``"zero"``.

    Yields:
        The model. Hooks are removed on exit, also after an exception.
    """
    with attached(model, pruning_hooks(model, masks, ablation=ablation, means=means)):
        yield model


class PruningHandle:
    """Persistent pruning hooks; call :meth:`remove` to restore the model."""

    def __init__(self, tokens: list[Any]):
        self._tokens = tokens

    def remove(self) -> None:
        for token in reversed(self._tokens):
            remove_hook(token)
        self._tokens = []

    def __enter__(self) -> PruningHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def add_pruning(
    model: Any, masks: Masks, *, ablation: str = "zero", means: ActivationStats | None = None
) -> PruningHandle:
    """Ablate the masked units until ``handle.remove()`` is called (weights untouched)."""
    tokens = []
    try:
        for name, fn in pruning_hooks(model, masks, ablation=ablation, means=means):
            tokens.append(add_hook(model, name, fn))
    except BaseException:
        for token in reversed(tokens):
            remove_hook(token)
        raise
    return PruningHandle(tokens)


def _in_rows(module: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A view ``[d_in, d_out]`` of a projection's weight, and its bias.

    Handles ``nn.Linear`` (weight ``[d_out, d_in]``) and GPT-2's ``Conv1D`` (weight
    ``[d_in, d_out]``).
    """
    weight = module.weight
    if type(module).__name__ == "Conv1D":
        return weight, module.bias
    if isinstance(module, torch.nn.Linear):
        return weight.t(), module.bias
    raise UnlearnLensError(f"cannot edit the weights of a {type(module).__name__} projection")


def _projections(model: Any, layer: int) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Row views ``[units, d_model]`` and biases of the MLP output and attention output projections."""
    block = model.blocks[layer]
    if hasattr(block.mlp, "W_out"):  # legacy HookedTransformer
        w_o = block.attn.W_O
        return {"mlp": (block.mlp.W_out, block.mlp.b_out), "attn": (w_o.view(-1, w_o.shape[-1]), block.attn.b_O)}
    try:
        mlp_out = block.mlp.out.original_component
        attn_out = block.attn.o.original_component
    except AttributeError as exc:
        raise UnlearnLensError(
            f"model {model_name(model)!r}: cannot find the output projections of layer {layer} ({exc})"
        ) from exc
    return {"mlp": _in_rows(mlp_out), "attn": _in_rows(attn_out)}


@torch.no_grad()
def prune_weights_(
    model: Any, masks: Masks, *, ablation: str = "zero", means: ActivationStats | None = None
) -> Any:
    """Prune permanently by editing the output projections in place.

    Zeroes row i of ``W_out[l]`` for every pruned MLP neuron and ``W_O[l][h, d, :]``
    for every pruned attention neuron; with ``ablation="mean"`` first adds
    ``mean * row`` to ``b_out[l]`` / ``b_O[l]``, so the model computes exactly what
    :func:`pruned` computes.

    Returns:
        The model (edited in place).

    Raises:
        UnlearnLensError: bad masks/means, or mean ablation on a projection without a bias.
    """
    _check(model, masks, ablation, means)
    for layer in range(masks.dims.n_layers):
        projections = _projections(model, layer)
        for kind, mask, stats in (
            ("mlp", masks.mlp[layer].reshape(-1), means.mlp if means is not None else None),
            ("attn", masks.attn[layer].reshape(-1), means.attn if means is not None else None),
        ):
            if not bool(mask.any()):
                continue
            rows, bias = projections[kind]
            mask = mask.to(rows.device)
            if ablation == "mean":
                assert stats is not None
                if bias is None:
                    raise UnlearnLensError(
                        f"model {model_name(model)!r} has no {kind} output bias in layer {layer}, so mean "
                        "ablation cannot be folded into the weights; use ablation='zero' or the hook form"
                    )
                mu = stats.mean[layer].reshape(-1).to(device=rows.device, dtype=torch.float64)[mask]
                bias.add_((mu @ rows[mask].double()).to(bias.dtype))
            rows[mask] = 0
    return model


def hf_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The underlying Hugging Face model's weights under their plain Hugging Face names.

    A bridge wraps the Hugging Face modules in place, so the raw state dict holds the
    same tensors under several paths (``..._original_component...``); the plain path
    of each is recovered by dropping those segments.
    """
    hf = underlying_model(model)
    state: dict[str, torch.Tensor] = {}
    for key, value in hf.state_dict().items():
        plain = key.replace("._original_component", "").replace("_original_component.", "")
        state.setdefault(plain, value)
    return state


def save_pruned(model: Any, path: str | os.PathLike) -> None:
    """Save the (weight-pruned) model in Hugging Face format, with its tokenizer.

    The result loads with ``transformers.AutoModelForCausalLM.from_pretrained(path)``.

    Raises:
        UnlearnLensError: the model wraps no Hugging Face model (e.g. a legacy
            HookedTransformer or a TL-native bridge).
    """
    hf = underlying_model(model)
    config = getattr(hf, "config", None)
    if config is None or not hasattr(hf, "save_pretrained"):
        raise UnlearnLensError(f"model {model_name(model)!r} wraps no Hugging Face model to save")
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config)
    wanted = fresh.state_dict()
    source = hf_state_dict(model)
    missing = [k for k in wanted if k not in source]
    tied = set(getattr(fresh, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not k.endswith(("lm_head.weight", "embed_out.weight"))]
    if missing:
        raise UnlearnLensError(f"cannot export {model_name(model)!r}: weights not found for {missing[:5]}")
    fresh.load_state_dict({k: source[k].contiguous() for k in wanted if k in source}, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    still_meta = [n for n, p in fresh.named_parameters() if p.is_meta]
    if still_meta:
        raise UnlearnLensError(f"cannot export {model_name(model)!r}: no weights for {still_meta[:5]}")
    fresh.save_pretrained(path)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(path)
