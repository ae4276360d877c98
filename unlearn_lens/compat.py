"""Compatibility modes: the reference implementation's rules, on request.

The paper's numbers were produced with its authors' code (``taker``). This package
computes the textbook quantities by default (mode ``"none"``); mode ``"taker"``
switches every point where the two differ to the reference's behaviour, so that a
run can reproduce the paper's numbers, or be compared with them:

* **rows**: texts packed end to end in rows led by an added BOS that is not counted;
  under ``"taker"`` one text per row, cut to the row length, with the tokenizer's own
  special tokens (none for GPT-2 and Pythia, the prepended ``</s>`` of OPT), every
  position counted;
* **std**: the population standard deviation; under ``"taker"`` the sample variance
  (divided by n - 1), which the reference keeps in its field named ``std``;
* **rms**: sqrt(mean x^2); under ``"taker"`` sqrt(var_s^2 + mean^2), var_s the sample
  variance;
* **precision**: scores in float64; under ``"taker"`` each statistic is cast to the
  model's dtype before the ratio (``freq``: float32, as the reference divides an
  integer count);
* **units per step**: round(frac * N), ties to the lower index; under ``"taker"``
  int(frac * N) (ties still to the lower index: the reference's unsorted top-k leaves
  them to chance);
* **heads**: ``head_agg="mean"`` / ``"median"`` take the mean / lower median of a head's
  neuron scores; under ``"taker"`` the reference's swapped names: ``"mean"`` is the
  median interpolated between the two middle scores (float32), ``"median"`` the mean.

``abs``, ``freq``, ``sqrt`` and ``mean`` have the same definitions in both modes (the
reference's mean |x| is its positive mass plus the absolute negative mass, which is the
same number); they differ only through the rows counted and the precision. Units
already pruned are never selected again in either mode: in the reference a pruned
unit reads 0, scores 0 and is not chosen again in practice. Whole-head selection
counts heads by the same rule as neurons.

Every module that differs by mode asks :func:`rules` here: :mod:`unlearn_lens.data`
for the rows, :mod:`unlearn_lens.scoring` for the importance, precision, count and
head rules. The statistics themselves are the same streamed float64 accumulators in
both modes: the sample variance is ``m2 / (n - 1)``, n / (n - 1) times the population
variance ``m2 / n``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from jaxtyping import Float

from unlearn_lens.errors import UnlearnLensError

__all__ = [
    "COMPAT_MODES",
    "REFERENCE_METHODS",
    "Rules",
    "check_compat",
    "reference_head_scores",
    "reference_score",
    "resolve_dtype",
    "rules",
    "units_per_step",
]

COMPAT_MODES = ("none", "taker")
"""``"none"``: this package's textbook definitions; ``"taker"``: the reference implementation's."""

REFERENCE_METHODS = ("abs", "freq", "rms", "std", "sqrt", "mean", "rand")
"""The scoring methods the reference implementation has (``wanda`` is this package's own)."""


class Moments(Protocol):
    """The streamed statistics the reference's formulas read (:class:`~unlearn_lens.stats.RunningStats`)."""

    count: torch.Tensor
    m2: torch.Tensor
    pos_count: torch.Tensor

    @property
    def mean(self) -> torch.Tensor: ...

    @property
    def abs_mean(self) -> torch.Tensor: ...

    @property
    def sqrt_abs_mean(self) -> torch.Tensor: ...


@dataclass(frozen=True)
class Rules:
    """What one compatibility mode decides.

    Attributes:
        name: the mode (``"none"`` or ``"taker"``).
        text_per_row: one text per row with the tokenizer's own special tokens, every
            position counted (else texts packed after an added, uncounted BOS).
        units: how many of ``n`` units a fraction ``frac`` selects.
        reference_scores: score by the reference's formulas, in the model's dtype.
        reference_heads: aggregate head scores as the reference does.
    """

    name: str
    text_per_row: bool
    units: Callable[[float, int], int]
    reference_scores: bool
    reference_heads: bool


_RULES = {
    "none": Rules(
        "none", text_per_row=False, units=lambda frac, n: round(frac * n), reference_scores=False, reference_heads=False
    ),
    "taker": Rules(
        "taker", text_per_row=True, units=lambda frac, n: int(frac * n), reference_scores=True, reference_heads=True
    ),
}


def check_compat(compat: Any) -> str:
    """Return ``compat`` if it names a mode.

    Raises:
        UnlearnLensError: any other value.
    """
    if not isinstance(compat, str) or compat not in _RULES:
        raise UnlearnLensError(f"compat must be one of {list(COMPAT_MODES)}, got {compat!r}")
    return compat


def rules(compat: str) -> Rules:
    """The rules of mode ``compat`` (``"none"`` or ``"taker"``).

    Raises:
        UnlearnLensError: an unknown mode.
    """
    return _RULES[check_compat(compat)]


def resolve_dtype(name: Any) -> torch.dtype:
    """A torch dtype from its name as statistics record it (``"float16"``, ``"torch.bfloat16"``); None: float32.

    float32 is also what the reference casts its statistics to when it is given no dtype.

    Raises:
        UnlearnLensError: a name that is not a floating-point torch dtype.
    """
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        dtype = name
    else:
        dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UnlearnLensError(f"not a floating-point dtype: {name!r}")
    return dtype


def _sample_var(stats: Moments) -> torch.Tensor:
    """The sample variance m2 / (n - 1), float64 (a unit seen once has 0)."""
    return stats.m2 / (stats.count - 1).clamp(min=1)


def _reference_importance(stats: Moments, method: str, dtype: torch.dtype) -> torch.Tensor:
    """One dataset's importance by the reference's formula, each statistic first cast to ``dtype``."""
    if method == "freq":  # an integer count over the number of tokens: float32 whatever the model's dtype
        return stats.pos_count.to(torch.float32) / stats.count.to(torch.float32)
    if method == "abs":  # the mean of the positive part plus the absolute mean of the rest
        mean, abs_mean = stats.mean, stats.abs_mean
        return ((abs_mean + mean) / 2).to(dtype) + ((mean - abs_mean) / 2).to(dtype).abs()
    if method == "sqrt":
        return stats.sqrt_abs_mean.to(dtype)
    if method == "std":  # the field the reference calls std holds the sample variance
        return _sample_var(stats).to(dtype)
    if method == "rms":
        return torch.sqrt(_sample_var(stats).to(dtype) ** 2 + stats.mean.to(dtype) ** 2)
    raise UnlearnLensError(f"the reference implementation has no importance {method!r}")


def reference_score(
    forget: Moments, retain: Moments, method: str, eps: float, dtype: torch.dtype
) -> Float[torch.Tensor, "..."]:
    """A block of scores by the reference's formulas, computed in ``dtype``, returned as float64.

    Args:
        forget: the forget statistics of the block.
        retain: the retain statistics of the block.
        method: ``abs freq rms std sqrt mean`` (``rand`` and ``wanda`` are not handled here).
        eps: the denominator offset, added in the importance's dtype.
        dtype: the model's dtype.

    Returns:
        Scores of the block's shape, float64 (every value exactly one of ``dtype``, or of
        float32 for ``freq``).
    """
    if method == "mean":
        return (forget.mean.to(dtype) - retain.mean.to(dtype)).abs().double()
    numerator = _reference_importance(forget, method, dtype)
    return (numerator / (_reference_importance(retain, method, dtype) + eps)).double()


def reference_head_scores(
    attn: Float[torch.Tensor, "layer head d_head"], agg: str, dtype: torch.dtype
) -> Float[torch.Tensor, "layer head"]:
    """Head scores as the reference aggregates them under its mode names, float64.

    The reference's head mode ``"mean"`` takes the median of each head's neuron scores
    (``torch.quantile`` at 0.5 in float32, which averages the two middle values of an
    even ``d_head``), and its mode ``"median"`` takes their mean (in the scores' dtype).

    Raises:
        UnlearnLensError: ``agg`` is neither ``"mean"`` nor ``"median"``.
    """
    if agg == "mean":
        return torch.quantile(attn.to(torch.float32), 0.5, dim=-1).double()
    if agg == "median":
        return attn.to(dtype).mean(-1).double()
    raise UnlearnLensError(f"head_agg must be 'mean' or 'median', got {agg!r}")


def units_per_step(frac: float, n: int, compat: str = "none") -> int:
    """How many of ``n`` units the fraction ``frac`` selects in mode ``compat``."""
    return rules(compat).units(frac, n)
