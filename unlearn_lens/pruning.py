"""Applying masks: reversible hook ablation and permanent weight edits.

A pruned unit's activation is replaced by 0 (``ablation="zero"``), by its mean on the
retain set (``"mean"``, means from an :class:`ActivationStats`), by the mode of its
retain distribution (``"peak"``, from an :class:`~unlearn_lens.ablations.ActivationHistogram`)
or, at every token, by its value at a random retain token (``"resample"``, from an
:class:`~unlearn_lens.ablations.ActivationSample`; see :mod:`unlearn_lens.ablations`).
MLP and attention neurons may be ablated differently. One
:class:`~unlearn_lens.ablations.Ablation` carries the methods and the retain values
(a run's is ``run.ablation``).

Reversible form (weights untouched): :func:`pruned` adds the hooks at once and
returns a :class:`Pruning` handle. Use it as a context manager (the hooks go on
exit, also after an exception), call :meth:`Pruning.remove`, or make it permanent
with :meth:`Pruning.make_permanent`.

Permanent form, :func:`prune_weights_`: the unit's row of the output projection is
zeroed and, for mean (or peak) ablation, ``mean * row`` (``peak * row``) is folded into
the output bias:

* MLP neuron i of layer l: ``W_out[l][i, :] = 0``, ``b_out[l] += mean_i * W_out[l][i, :]``;
* attention neuron (h, d): ``W_O[l][h, d, :] = 0``, ``b_O[l] += mean_(h,d) * W_O[l][h, d, :]``.

Resample ablation gives every token its own value, which no weight edit reproduces: it
exists only as hooks.

The edit is made on the underlying weights (the Hugging Face module for a bridge,
``W_out``/``W_O`` for a legacy HookedTransformer), so ``save_pretrained`` exports
the pruned model, and it gives the same logits as the hook form. A model without
output biases (Llama-style) gets zero biases first when its config has a switch for
them (``mlp_bias``, ``attention_bias``); the switch is turned on so that the exported
model reloads with them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import torch

from unlearn_lens.ablations import ABLATIONS, Ablation, ActivationHistogram, ActivationSample
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.masks import Masks
from unlearn_lens.models import (
    UNIT_KINDS,
    add_hook,
    exclusive,
    hook_name,
    model_dims,
    model_name,
    remove_hook,
    underlying_model,
)
from unlearn_lens.stats import ActivationStats

__all__ = [
    "ABLATIONS",
    "BIAS_SWITCHES",
    "Pruning",
    "hf_state_dict",
    "output_norms",
    "prune_weights_",
    "pruned",
    "save_pruned",
]

logger = logging.getLogger(__name__)

BIAS_SWITCHES = {"mlp": "mlp_bias", "attn": "attention_bias"}
"""Config switches that give a Hugging Face architecture its output-projection biases."""


def _resolve(model: Any, masks: Masks, ablation: Ablation) -> None:
    """Check that ``masks`` and the values ``ablation`` reads for the pruned unit kinds fit ``model``."""
    if not isinstance(masks, Masks):
        raise UnlearnLensError(f"masks must be a Masks, got {type(masks).__name__}")
    dims = model_dims(model)
    if masks.dims != dims:
        raise UnlearnLensError(
            f"masks for a model with {masks.dims.to_dict()} do not fit {model_name(model)!r} ({dims.to_dict()})"
        )
    pruned_kinds = tuple(kind for kind in UNIT_KINDS if bool(getattr(masks, kind).any()))
    ablation.check(dims, pruned_kinds, model=repr(model_name(model)))


def _replace_hook(mask: torch.Tensor, values: torch.Tensor | None) -> Any:
    """A forward hook that overwrites the masked units of its output with 0 or ``values``."""

    def fn(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        m = mask.to(activation.device)
        if values is None:
            return activation.masked_fill(m, 0)
        return torch.where(m, values.to(device=activation.device, dtype=activation.dtype), activation)

    return fn


def _resample_hook(mask: torch.Tensor, pool: torch.Tensor, generator: torch.Generator) -> Any:
    """A forward hook giving the masked units, at every token, their values at a random token of ``pool``.

    ``pool`` is ``[n, *units]``; one pool token is drawn per position, for all masked units at once.
    """
    flat = mask.reshape(-1)
    values = pool.reshape(pool.shape[0], -1)[:, flat]  # [n, pruned units]

    def fn(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        lead = activation.shape[: activation.dim() - mask.dim()]
        pick = torch.randint(values.shape[0], (int(torch.tensor(lead).prod()),), generator=generator)
        out = activation.reshape(*lead, -1).clone()
        out[..., flat.to(activation.device)] = (
            values[pick].to(device=activation.device, dtype=activation.dtype).reshape(*lead, -1)
        )
        return out.reshape(activation.shape)

    return fn


def _pruning_hooks(masks: Masks, ablation: Ablation, seed: int) -> list[tuple[str, Any]]:
    """The ``(hook_name, forward_hook)`` pairs that apply ``masks``; layers with nothing pruned get none."""
    hooks: list[tuple[str, Any]] = []
    generator = torch.Generator().manual_seed(seed)
    for layer in range(masks.dims.n_layers):
        for kind in UNIT_KINDS:
            mask = getattr(masks, kind)[layer]
            if not bool(mask.any()):
                continue
            if ablation.methods[kind] == "resample":
                pool = getattr(ablation.sample, kind)[:, layer]
                hooks.append((hook_name(kind, layer), _resample_hook(mask, pool, generator)))
                continue
            values = ablation.constant(kind)
            replacement = None if values is None else values[layer].float()
            hooks.append((hook_name(kind, layer), _replace_hook(mask, replacement)))
    return hooks


class Pruning:
    """Pruning hooks on a model, from :func:`pruned`.

    The hooks are in place from the moment :func:`pruned` returns until
    :meth:`remove` (or the end of a ``with`` block). :meth:`make_permanent` swaps them
    for the equivalent weight edit.

    While its hooks are in place the handle claims the model for the thread that made
    it (:func:`~unlearn_lens.models.exclusive`): that thread measures the pruned model
    (statistics and evaluation nest inside), and another thread's
    :func:`~unlearn_lens.stats.collect_stats`, :func:`~unlearn_lens.evaluate.evaluate`
    or :func:`pruned` on the same model is refused instead of measuring it pruned.

    Attributes:
        model: the model the hooks are on.
        masks: the pruned units.
        ablation: what they read.
    """

    def __init__(self, model: Any, masks: Masks, ablation: Ablation, seed: int = 0):
        self.model = model
        self.masks = masks
        self.ablation = ablation
        self._tokens: list[Any] = []
        self._claim = contextlib.ExitStack()
        self._claim.enter_context(exclusive(model, "pruning"))
        try:
            for name, fn in _pruning_hooks(masks, ablation, seed):
                self._tokens.append(add_hook(model, name, fn))
        except BaseException:
            self.remove()
            raise

    @property
    def active(self) -> bool:
        """Whether the hooks are still in place."""
        return bool(self._tokens)

    def remove(self) -> None:
        """Remove the hooks and release the model (idempotent); the model computes as before pruning."""
        try:
            while self._tokens:
                remove_hook(self._tokens.pop())
        finally:
            self._claim.close()

    def make_permanent(self) -> Any:
        """Remove the hooks and edit the weights instead (see :func:`prune_weights_`).

        Returns:
            The model, edited in place.
        """
        self.remove()
        return prune_weights_(self.model, self.masks, self.ablation)

    def __enter__(self) -> Pruning:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return (
            f"Pruning({model_name(self.model)!r}, {self.masks.n_mlp} MLP + {self.masks.n_attn} attention "
            f"neurons, ablation {self.ablation.methods}, {state})"
        )


def pruned(
    model: Any,
    masks: Masks,
    ablation: Ablation | str = "zero",
    *,
    mlp_ablation: str | None = None,
    attn_ablation: str | None = None,
    means: ActivationStats | None = None,
    peaks: ActivationHistogram | None = None,
    sample: ActivationSample | None = None,
    seed: int = 0,
) -> Pruning:
    """Ablate the masked units with hooks (weights untouched).

    Statistics and evaluation compose with it by nesting::

        with ul.pruned(model, run.masks, run.ablation):
            stats = ul.collect_stats(model, forget)
            result = ul.evaluate(model, retain)

    The ablation is one :class:`~unlearn_lens.ablations.Ablation` (a run's is
    ``run.ablation``); the short form ``ul.pruned(model, masks, ablation="mean",
    means=retain_stats)`` builds the same object from loose arguments
    (:meth:`Ablation.of <unlearn_lens.ablations.Ablation.of>`).

    Args:
        model: a TransformerLens model.
        masks: units to prune.
        ablation: an :class:`~unlearn_lens.ablations.Ablation`, or the method of both unit
            kinds: ``"zero"``, ``"mean"``, ``"peak"`` or ``"resample"``.
        mlp_ablation, attn_ablation: short form only: the method of MLP / attention neurons
            (default ``ablation``).
        means: short form only: retain statistics, required for ``"mean"``.
        peaks: short form only: retain histograms, required for ``"peak"`` (see
            :func:`~unlearn_lens.ablations.collect_ablation_values`).
        sample: short form only: retain activation sample, required for ``"resample"``.
        seed: seed of the resample draws (each handle draws the same sequence).

    Returns:
        A :class:`Pruning` handle; the hooks are already in place. If adding them
        fails part-way, those already added are removed before the error propagates.
    """
    ablation = Ablation.of(
        ablation, mlp_ablation=mlp_ablation, attn_ablation=attn_ablation, means=means, peaks=peaks, sample=sample
    )
    _resolve(model, masks, ablation)
    return Pruning(model, masks, ablation, seed)


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


def output_projections(model: Any, layer: int) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Row views ``[units, d_model]`` and biases of the MLP output and attention output projections.

    A bridge's own modules come first (``mlp.out`` / ``attn.o`` wrap the Hugging Face
    projections); a legacy HookedTransformer has ``W_out`` / ``W_O`` and their biases.
    """
    block = model.blocks[layer]
    mlp_out = getattr(getattr(getattr(block.mlp, "out", None), "original_component", None), "weight", None)
    attn_out = getattr(getattr(getattr(block.attn, "o", None), "original_component", None), "weight", None)
    if mlp_out is not None and attn_out is not None:
        return {"mlp": _in_rows(block.mlp.out.original_component), "attn": _in_rows(block.attn.o.original_component)}
    if hasattr(block.mlp, "W_out") and hasattr(block.attn, "W_O"):  # legacy HookedTransformer
        w_o = block.attn.W_O
        return {"mlp": (block.mlp.W_out, block.mlp.b_out), "attn": (w_o.view(-1, w_o.shape[-1]), block.attn.b_O)}
    raise UnlearnLensError(f"model {model_name(model)!r}: cannot find the output projections of layer {layer}")


@torch.no_grad()
def output_norms(model: Any) -> dict[str, torch.Tensor]:
    """The L2 norm of each unit's row of its output projection (what the unit writes per unit of activation).

    Returns:
        ``{"mlp": [layer d_mlp], "attn": [layer head d_head]}``, float64 on the CPU
        (the inputs of the ``wanda`` score).
    """
    dims = model_dims(model)
    norms: dict[str, list[torch.Tensor]] = {kind: [] for kind in UNIT_KINDS}
    for layer in range(dims.n_layers):
        for kind, (rows, _) in output_projections(model, layer).items():
            if rows.device.type == "meta":
                raise UnlearnLensError(
                    f"the {kind} output projection of layer {layer} is offloaded; its norms cannot be read"
                )
            norms[kind].append(rows.detach().to("cpu", torch.float64).norm(dim=-1))
    return {
        "mlp": torch.stack(norms["mlp"]),
        "attn": torch.stack(norms["attn"]).reshape(dims.n_layers, dims.n_heads, dims.d_head),
    }


def _plain_name(name: str) -> str:
    """A module or parameter path of a bridged model under its plain Hugging Face name."""
    return name.replace("._original_component", "").replace("_original_component.", "")


def _add_zero_biases(model: Any, kind: str) -> None:
    """Give every projection governed by the config switch of ``kind`` a zero bias, and turn the switch on.

    Which projections the switch governs is read off the architecture itself: the
    parameters a model built from the switched config has and this one lacks.

    Raises:
        UnlearnLensError: the architecture has no such switch.
    """
    hf = underlying_model(model)
    config = getattr(hf, "config", None)
    switch = BIAS_SWITCHES[kind]
    if config is None or not isinstance(getattr(config, switch, None), bool):
        families = ", ".join(f"{k}: `{v}`" for k, v in BIAS_SWITCHES.items())
        raise UnlearnLensError(
            f"model {model_name(model)!r} has no {kind} output bias and its config has no {switch!r} switch, so "
            f"mean ablation cannot be folded into the weights (architectures with a switch ({families}), such as "
            "Llama, get zero biases added); use ablation='zero' or the hook form"
        )
    from transformers import AutoModelForCausalLM

    setattr(config, switch, True)
    try:
        with torch.device("meta"):
            wanted = dict(AutoModelForCausalLM.from_config(config).named_parameters())
    except BaseException:
        setattr(config, switch, False)
        raise
    have = {_plain_name(n) for n, _ in hf.named_parameters()}
    modules = {_plain_name(n): m for n, m in hf.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, param in wanted.items():
        owner = name.rsplit(".", 1)[0]
        if name in have or not name.endswith(".bias") or owner not in modules:
            continue
        linear = modules[owner]
        w = linear.weight
        linear.bias = torch.nn.Parameter(
            torch.zeros(param.shape, dtype=w.dtype, device=w.device), requires_grad=w.requires_grad
        )
    logger.info("model %s: %s turned on; zero biases added", model_name(model), switch)


def _check_editable(model: Any, masks: Masks, ablation: Ablation) -> None:
    """Refuse a weight edit that cannot reproduce the hooks: resample ablation, or offloaded projections."""
    for kind in UNIT_KINDS:
        if ablation.methods[kind] == "resample" and bool(getattr(masks, kind).any()):
            raise UnlearnLensError(
                "resample ablation draws a new value at every token, which no weight edit can "
                "reproduce: it exists only as hooks (ul.pruned)"
            )
    for layer in range(masks.dims.n_layers):
        for kind, (rows, _) in output_projections(model, layer).items():
            if rows.device.type == "meta":
                raise UnlearnLensError(
                    f"the {kind} output projection of layer {layer} is offloaded (a device map with disk or CPU "
                    "offload keeps it elsewhere), so it cannot be edited in place; prune with hooks (ul.pruned)"
                )


@torch.no_grad()
def prune_weights_(
    model: Any,
    masks: Masks,
    ablation: Ablation | str = "zero",
    *,
    mlp_ablation: str | None = None,
    attn_ablation: str | None = None,
    means: ActivationStats | None = None,
    peaks: ActivationHistogram | None = None,
    sample: ActivationSample | None = None,
) -> Any:
    """Prune permanently by editing the output projections in place.

    Zeroes row i of ``W_out[l]`` for every pruned MLP neuron and ``W_O[l][h, d, :]``
    for every pruned attention neuron; with mean (peak) ablation first adds ``mean * row``
    (``peak * row``) to ``b_out[l]`` / ``b_O[l]``, so the model computes exactly what :func:`pruned`
    computes. A Hugging Face architecture without those biases gets zero biases
    when its config can switch them on (``mlp_bias`` / ``attention_bias``, as Llama's).

    Args:
        model, masks: as :func:`pruned`.
        ablation, mlp_ablation, attn_ablation, means, peaks, sample: as :func:`pruned` (an
            :class:`~unlearn_lens.ablations.Ablation`, or its short form); resample ablation
            cannot be folded into weights and is refused.

    Returns:
        The model (edited in place).

    Raises:
        UnlearnLensError: bad masks/means, resample ablation, or mean or peak ablation on a
            projection without a bias whose architecture has no switch for one.
    """
    ablation = Ablation.of(
        ablation, mlp_ablation=mlp_ablation, attn_ablation=attn_ablation, means=means, peaks=peaks, sample=sample
    )
    _resolve(model, masks, ablation)
    _check_editable(model, masks, ablation)
    ablations = ablation.methods
    for kind in UNIT_KINDS:
        needs_bias = ablations[kind] in ("mean", "peak") and bool(getattr(masks, kind).any())
        if needs_bias and any(
            output_projections(model, layer)[kind][1] is None for layer in range(masks.dims.n_layers)
        ):
            _add_zero_biases(model, kind)
    for layer in range(masks.dims.n_layers):
        projections = output_projections(model, layer)
        for kind in UNIT_KINDS:
            mask = getattr(masks, kind)[layer].reshape(-1)
            if not bool(mask.any()):
                continue
            rows, bias = projections[kind]
            mask = mask.to(rows.device)
            values = ablation.constant(kind)
            if values is not None:
                if bias is None:
                    raise UnlearnLensError(
                        f"model {model_name(model)!r} has no {kind} output bias in layer {layer}, so "
                        f"{ablations[kind]} ablation cannot be folded into the weights; use ablation='zero' or the "
                        "hook form"
                    )
                mu = values[layer].reshape(-1).to(device=rows.device, dtype=torch.float64)[mask]
                bias.add_((mu @ rows[mask].double()).to(bias.dtype))
            rows[mask] = 0
    return model


def hf_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The underlying Hugging Face model's weights under their plain Hugging Face names.

    A bridge wraps the Hugging Face modules in place, so the raw state dict holds the
    same tensors under several paths (``..._original_component...``); the plain path
    of each is recovered by dropping those segments.
    """
    state: dict[str, torch.Tensor] = {}
    for key, value in underlying_model(model).state_dict().items():
        state.setdefault(_plain_name(key), value)
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
