"""The direct logit effect of a unit: what its output row writes straight into the logits.

A unit writes ``a * row`` into the residual stream, where ``a`` is its activation and
``row`` its row of the output projection: ``W_out[l][i]`` for MLP neuron ``i``
(``blocks.{l}.mlp.hook_post[..., i]``), ``W_O[l][h][d]`` for attention neuron ``(h, d)``
(``blocks.{l}.attn.hook_z[..., h, d]``). Its *direct* effect on the logits, per unit of
activation, is that row read through the rest of the model's linear path to the vocabulary:

1. centred (its mean over ``d_model`` subtracted) where the final norm is a LayerNorm,
   which subtracts the mean of the residual stream; an RMSNorm does not, so the row is
   left as it is;
2. multiplied elementwise by the final norm's weight, where it has one (a folded norm,
   ``LNPre`` or ``RMSPre``, has none);
3. multiplied by the unembedding ``W_U`` ``[d_model d_vocab]`` (its bias, the same for
   every unit, is left out).

The per-token scale of the final norm (``1 / std`` or ``1 / rms`` of the residual
stream at that token) is left out: it depends on the token, not on the unit, so the
values compare units and tokens up to that positive factor. Effects through later
layers are not counted either (that is what ablating the unit measures).

The output rows are read as :mod:`unlearn_lens.pruning` reads them to edit them (and to
compute :func:`~unlearn_lens.pruning.output_norms`): a bridge's Hugging Face projections,
or a legacy HookedTransformer's ``W_out`` / ``W_O``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import check_kind, model_dims, model_name
from unlearn_lens.pruning import output_projections

__all__ = ["FinalNorm", "final_norm", "logit_effects", "unembedding"]

_CENTRING = {"LN": True, "LNPre": True, "RMS": False, "RMSPre": False}


@dataclass(frozen=True)
class FinalNorm:
    """What the final norm does to a direction of the residual stream, leaving out its per-token scale.

    Attributes:
        kind: ``"LayerNorm"``, ``"RMSNorm"`` or ``"none"``.
        centred: whether it subtracts the mean over ``d_model`` (LayerNorm).
        weight: ``[d_model]`` its elementwise weight (float64, CPU), or None (none, or folded away).
    """

    kind: str
    centred: bool
    weight: torch.Tensor | None

    def describe(self) -> str:
        """One sentence saying how the final norm enters the logit effect."""
        steps = ["centred (mean subtracted)"] if self.centred else []
        if self.weight is not None:
            steps.append(f"scaled by the {self.kind}'s weight")
        done = " and ".join(steps) if steps else "taken as it is"
        return (
            f"Output row {done}, times the unembedding; the final {self.kind}'s per-token scale "
            "(1 / its std or rms at each token) is left out."
        )


def _norm_module(model: Any) -> Any:
    """The final norm: a bridge's wrapped module, or a legacy model's own."""
    ln = getattr(model, "ln_final", None)
    if ln is None:
        return None
    return getattr(ln, "original_component", None) or ln


def _norm_weight(module: Any) -> torch.Tensor | None:
    weight = getattr(module, "weight", None)
    if weight is None:
        weight = getattr(module, "w", None)  # legacy HookedTransformer LayerNorm / RMSNorm
    if not isinstance(weight, torch.Tensor):
        return None
    weight = weight.detach().to("cpu", torch.float64)
    if "Gemma" in type(module).__name__:  # Gemma's RMSNorm scales by 1 + weight
        weight = weight + 1.0
    return weight


def final_norm(model: Any) -> FinalNorm:
    """The final norm of ``model`` as :class:`FinalNorm` (from ``cfg.normalization_type``, else the module's type).

    Raises:
        UnlearnLensError: a normalisation type this computation does not know.
    """
    module = _norm_module(model)
    norm_type = getattr(getattr(model, "cfg", None), "normalization_type", None)
    if norm_type is None and module is not None:
        norm_type = "RMS" if "RMS" in type(module).__name__ else "LN"
    if norm_type is None:
        return FinalNorm("none", False, None)
    if norm_type not in _CENTRING:
        raise UnlearnLensError(
            f"model {model_name(model)!r}: unknown final normalisation {norm_type!r} (expected one of "
            f"{', '.join(_CENTRING)})"
        )
    weight = _norm_weight(module) if module is not None and not norm_type.endswith("Pre") else None
    return FinalNorm("LayerNorm" if norm_type.startswith("LN") else "RMSNorm", _CENTRING[norm_type], weight)


def unembedding(model: Any) -> Float[torch.Tensor, "d_model d_vocab"]:
    """The unembedding ``W_U`` (float64, CPU): a bridge's ``lm_head`` weight, transposed, or a legacy ``W_U``."""
    module = getattr(getattr(model, "unembed", None), "original_component", None)
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.detach().to("cpu", torch.float64).t()
    w_u = getattr(model, "W_U", None)
    if not isinstance(w_u, torch.Tensor):
        raise UnlearnLensError(f"model {model_name(model)!r}: cannot find the unembedding")
    return w_u.detach().to("cpu", torch.float64)


@torch.no_grad()
def logit_effects(
    model: Any, kind: str, layer: int, units: Sequence[int] | torch.Tensor
) -> Float[torch.Tensor, "unit d_vocab"]:
    """The direct logit effect of some units of one layer: each output row, through the final norm, to the vocabulary.

    For each unit: ``row`` (centred where the final norm is a LayerNorm) ``* norm weight``
    (where there is one) ``@ W_U``, in float64 (see the module docstring; the final
    norm's per-token scale is left out).

    Args:
        model: a TransformerBridge or legacy HookedTransformer.
        kind: ``"mlp"`` or ``"attn"``.
        layer: the layer.
        units: flat unit indices in the layer (``head * d_head + d`` for attention neurons).

    Returns:
        ``[unit d_vocab]`` float64 on the CPU.

    Raises:
        UnlearnLensError: an unknown kind, a unit out of range, or weights that cannot be read.
    """
    check_kind(kind)
    dims = model_dims(model)
    index = torch.as_tensor(units, dtype=torch.long).reshape(-1)
    n = dims.n_units(kind) // dims.n_layers
    if not 0 <= layer < dims.n_layers or (index.numel() and not (0 <= int(index.min()) and int(index.max()) < n)):
        raise UnlearnLensError(f"{kind} units {index.tolist()} of layer {layer} are out of range ({n} per layer)")
    rows, _ = output_projections(model, layer)[kind]
    if rows.device.type == "meta":
        raise UnlearnLensError(f"the {kind} output projection of layer {layer} is offloaded; it cannot be read")
    out = rows.detach()[index.to(rows.device)].to("cpu", torch.float64)  # [unit d_model]
    norm = final_norm(model)
    if norm.centred:
        out = out - out.mean(-1, keepdim=True)
    if norm.weight is not None:
        out = out * norm.weight
    return out @ unembedding(model)
