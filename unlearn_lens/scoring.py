"""Scoring units, and choosing which to prune.

For a scoring method with an importance function I (statistics -> per-unit value)
the score of a unit is ``I_forget / (I_retain + eps)``: large when the unit matters
for the forget set and not for the retain set.

| method | importance I | score |
|---|---|---|
| ``abs`` (default) | mean \\|x\\| | ratio |
| ``freq`` | P(x > 0) | ratio |
| ``rms`` | sqrt(mean x^2) | ratio |
| ``std`` | standard deviation (population) | ratio |
| ``sqrt`` | mean sqrt\\|x\\| | ratio |
| ``wanda`` | sqrt(mean x^2) · \\|\\|w_out\\|\\| | ratio |
| ``mean`` | — | \\|mean_forget - mean_retain\\| |
| ``rand`` | — | standard normal noise (a control) |

Unlike the reference implementation (which keeps the variance in its "std" field
and uses sqrt(var^2 + mean^2) as "rms"), ``std`` and ``rms`` here are the textbook
quantities; ``compat="taker"`` scores and selects by the reference's rules instead
(:mod:`unlearn_lens.compat`). ``eps`` defaults to 1e-3 for MLP neurons and 1e-4 for attention neurons.
MLP and attention neurons may be scored by different methods (``mlp_scoring``,
``attn_scoring``), as in the paper's code.

``wanda`` is weight-aware, in the spirit of Wanda (Sun et al. 2023, which scores a
weight by its magnitude times the norm of its input activation): a unit's importance
is the RMS size of what it writes into the residual stream, its activation's RMS times
the L2 norm ``||w_out||`` of its row of the output projection. In the ratio the norm
multiplies both sides, so it acts through ``eps`` alone: the score is
``rms_forget / (rms_retain + eps / ||w_out||)``, which shrinks the score of a unit
whose output weights are small (it barely moves the model whatever it fires on).

:func:`select` takes the top ``frac`` of *all* units of a kind by score, globally
across layers (the paper's choice) or within each layer, never choosing a unit in
``exclude`` (already pruned): round(frac * N) of them (``compat="taker"``: int(frac * N)).
Ties break towards the lower flat index, so the same scores always give the same
masks. :func:`random_masks` draws given numbers of units per layer uniformly at
random: the baseline selective pruning must beat.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import einops
import torch
from jaxtyping import Bool, Float

from unlearn_lens._io import read_safetensors, write_safetensors
from unlearn_lens.compat import REFERENCE_METHODS, reference_head_scores, reference_score, resolve_dtype, rules
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.masks import Masks
from unlearn_lens.models import UNIT_KINDS, per_kind
from unlearn_lens.stats import ActivationStats, RunningStats

__all__ = [
    "HEAD_AGGREGATIONS",
    "IMPORTANCE",
    "RATIO_METHODS",
    "SCORING_METHODS",
    "WEIGHT_METHODS",
    "Scores",
    "head_scores",
    "importance",
    "random_masks",
    "random_masks_like",
    "score",
    "select",
    "top_units",
]

IMPORTANCE: dict[str, Callable[[RunningStats], torch.Tensor]] = {
    "abs": lambda s: s.abs_mean,
    "freq": lambda s: s.freq,
    "rms": lambda s: s.rms,
    "std": lambda s: s.std,
    "sqrt": lambda s: s.sqrt_abs_mean,
}
RATIO_METHODS = (*IMPORTANCE, "wanda")
"""Methods whose score is a forget/retain importance ratio."""
SCORING_METHODS = (*IMPORTANCE, "wanda", "mean", "rand")
WEIGHT_METHODS = ("wanda",)
"""Methods that also need the norms of the units' output weights (``output_norms``)."""
HEAD_AGGREGATIONS = ("mean", "median")


def importance(stats: RunningStats, method: str = "abs") -> torch.Tensor:
    """Per-unit importance for a ratio method (``abs freq rms std sqrt``)."""
    if method not in IMPORTANCE:
        raise UnlearnLensError(f"scoring method {method!r} has no importance; choose one of {sorted(IMPORTANCE)}")
    return IMPORTANCE[method](stats)


def head_scores(
    attn: Float[torch.Tensor, "layer head d_head"], agg: str = "mean", compat: str = "none", dtype: Any = None
) -> Float[torch.Tensor, "layer head"]:
    """Aggregate attention-neuron scores per head with ``agg`` (``mean`` or ``median``).

    Under ``compat="taker"`` the reference's modes of those names are used: its
    ``"mean"`` is the interpolated median and its ``"median"`` the mean, in ``dtype``
    (:func:`unlearn_lens.compat.reference_head_scores`).
    """
    if rules(compat).reference_heads:
        return reference_head_scores(attn, agg, resolve_dtype(dtype))
    if agg == "mean":
        return einops.reduce(attn, "layer head d_head -> layer head", "mean")
    if agg == "median":
        return attn.median(-1).values
    raise UnlearnLensError(f"head_agg must be 'mean' or 'median', got {agg!r}")


@dataclass
class Scores:
    """Forget-vs-retain scores of every unit (higher = more forget-specific).

    Attributes:
        mlp: ``[layer d_mlp]`` float64.
        attn: ``[layer head d_head]`` float64.
        mlp_scoring: the scoring method of the MLP neurons.
        attn_scoring: the scoring method of the attention neurons.
        config: the arguments that produced them.
    """

    mlp: Float[torch.Tensor, "layer d_mlp"]
    attn: Float[torch.Tensor, "layer head d_head"]
    mlp_scoring: str = "abs"
    attn_scoring: str = "abs"
    config: dict[str, Any] = field(default_factory=dict)

    def scoring_of(self, kind: str) -> str:
        """The scoring method of one unit kind (``"mlp"`` or ``"attn"``)."""
        return self.mlp_scoring if kind == "mlp" else self.attn_scoring

    def of(self, kind: str) -> torch.Tensor:
        """The scores of one unit kind: ``mlp`` ``[layer d_mlp]`` or ``attn`` ``[layer head d_head]``."""
        return self.mlp if kind == "mlp" else self.attn

    def heads(self, agg: str = "mean") -> Float[torch.Tensor, "layer head"]:
        """Whole-head scores: the mean or median of each head's neuron scores (by the rules they were scored by)."""
        return head_scores(self.attn, agg, self.config.get("compat", "none"), self.config.get("dtype"))

    def save(self, path: str | os.PathLike) -> None:
        """Write to a safetensors file (atomically)."""
        tensors = {"mlp": self.mlp.cpu().contiguous(), "attn": self.attn.cpu().contiguous()}
        metadata = {
            "format": "unlearn_lens.Scores",
            "mlp_scoring": self.mlp_scoring,
            "attn_scoring": self.attn_scoring,
            "config": json.dumps(self.config),
        }
        write_safetensors(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Scores:
        """Read scores written by :meth:`save`.

        Raises:
            UnlearnLensError: the file is missing, corrupt, or not a scores file.
        """
        tensors, metadata = read_safetensors(path, "unlearn_lens.Scores")
        if "mlp" not in tensors or "attn" not in tensors:
            raise UnlearnLensError(f"scores file {str(path)!r} lacks the mlp or attn tensor")
        return cls(
            tensors["mlp"],
            tensors["attn"],
            metadata.get("mlp_scoring", metadata.get("mlp_method", "?")),  # "*_method": results format 2
            metadata.get("attn_scoring", metadata.get("attn_method", "?")),
            json.loads(metadata.get("config", "{}")),
        )


def _score_block(
    forget: RunningStats,
    retain: RunningStats,
    method: str,
    eps: float,
    gen: torch.Generator,
    norms: torch.Tensor | None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One block's scores; with ``dtype``, by the reference's formulas in that dtype (``rand`` aside)."""
    if method == "rand":
        return torch.randn(forget.unit_shape, generator=gen, dtype=torch.float64).to(forget.count.device)
    if method == "wanda":
        assert norms is not None
        norms = norms.to(device=forget.count.device, dtype=torch.float64)
        return forget.rms * norms / (retain.rms * norms + eps)
    if dtype is not None:
        return reference_score(forget, retain, method, eps, dtype)
    if method == "mean":
        return (forget.mean - retain.mean).abs()
    return importance(forget, method) / (importance(retain, method) + eps)


def _check_methods(methods: dict[str, str], output_norms: dict[str, torch.Tensor] | None, reference: bool) -> None:
    """Refuse weight-aware methods without weight norms, and methods the reference lacks under its rules."""
    for kind, chosen in methods.items():
        if reference and chosen not in REFERENCE_METHODS:
            raise UnlearnLensError(
                f"the reference implementation has no scoring {chosen!r}, so compat='taker' cannot reproduce it; "
                f"choose one of {list(REFERENCE_METHODS)}"
            )
        if chosen in WEIGHT_METHODS and (output_norms is None or kind not in output_norms):
            raise UnlearnLensError(
                f"scoring {chosen!r} needs the norms of the units' output weights: pass "
                "output_norms=unlearn_lens.pruning.output_norms(model)"
            )


def score(
    forget_stats: ActivationStats,
    retain_stats: ActivationStats,
    *,
    scoring: str = "abs",
    mlp_scoring: str | None = None,
    attn_scoring: str | None = None,
    mlp_eps: float = 1e-3,
    attn_eps: float = 1e-4,
    seed: int = 0,
    output_norms: dict[str, torch.Tensor] | None = None,
    compat: str = "none",
) -> Scores:
    """Score every unit by how much more it matters for forget than for retain.

    Args:
        forget_stats: statistics on the forget dataset.
        retain_stats: statistics on the retain dataset (same model).
        scoring: the scoring method, one of ``abs freq rms std sqrt wanda mean rand`` (see the
            module docstring), for both unit kinds unless overridden.
        mlp_scoring: the scoring method of MLP neurons (default ``scoring``).
        attn_scoring: the scoring method of attention neurons (default ``scoring``).
        mlp_eps: denominator offset for MLP neurons.
        attn_eps: denominator offset for attention neurons.
        seed: seed of the ``rand`` control.
        output_norms: for ``wanda``: the L2 norm of each unit's output weights,
            ``{"mlp": [layer d_mlp], "attn": [layer head d_head]}``
            (:func:`unlearn_lens.pruning.output_norms`).
        compat: ``"taker"``: the reference implementation's formulas (``std`` the sample
            variance, ``rms`` sqrt(var_s^2 + mean^2)), each statistic cast to the dtype of
            the model the statistics were collected on (``forget_stats.meta["dtype"]``,
            float32 when not recorded); see :mod:`unlearn_lens.compat`. ``wanda`` has no
            reference form and is refused.

    Returns:
        :class:`Scores` with ``mlp`` ``[layer d_mlp]`` and ``attn`` ``[layer head d_head]``; their
        ``config`` records a ``compat`` other than ``"none"``, with the dtype scored in.
    """
    methods = per_kind(scoring, mlp_scoring, attn_scoring, what="scoring method", choices=SCORING_METHODS)
    reference = rules(compat).reference_scores
    _check_methods(methods, output_norms, reference)
    dtype = resolve_dtype(forget_stats.meta.get("dtype")) if reference else None
    if forget_stats.dims != retain_stats.dims:
        raise UnlearnLensError(
            f"forget and retain statistics come from different models ({forget_stats.dims} vs {retain_stats.dims})"
        )
    for name, stats in (("forget", forget_stats), ("retain", retain_stats)):
        if stats.n_tokens == 0:
            raise UnlearnLensError(f"the {name} statistics hold no tokens")
    if mlp_eps < 0 or attn_eps < 0:
        raise UnlearnLensError("eps must be non-negative")
    eps = {"mlp": mlp_eps, "attn": attn_eps}
    gen = torch.Generator().manual_seed(seed)
    blocks = {
        kind: _score_block(
            getattr(forget_stats, kind),
            getattr(retain_stats, kind),
            methods[kind],
            eps[kind],
            gen,
            (output_norms or {}).get(kind),
            dtype,
        )
        for kind in UNIT_KINDS
    }
    config = {
        "mlp_scoring": methods["mlp"],
        "attn_scoring": methods["attn"],
        "mlp_eps": mlp_eps,
        "attn_eps": attn_eps,
        "seed": seed,
    }
    if forget_stats.meta.get("fingerprint"):  # the model the statistics came from
        config["fingerprint"] = forget_stats.meta["fingerprint"]
    if dtype is not None:
        config.update(compat=compat, dtype=str(dtype).removeprefix("torch."))
    return Scores(blocks["mlp"], blocks["attn"], methods["mlp"], methods["attn"], config)


def top_units(scores: Scores, n: int, kind: str = "mlp", exclude_nonfinite: bool = True) -> list[tuple[int, int]]:
    """The ``n`` units with the highest score, as ``(layer, unit)`` (unit flat for ``attn``).

    Args:
        scores: unit scores.
        n: how many.
        kind: ``"mlp"`` or ``"attn"`` (flat index ``head * d_head + d``).
        exclude_nonfinite: skip NaN and infinite scores. Otherwise +inf ranks first,
            -inf last, and NaN is never returned.
    """
    values = scores.mlp if kind == "mlp" else einops.rearrange(scores.attn, "layer head d -> layer (head d)")
    flat = values.detach().to("cpu", torch.float64).reshape(-1)
    keep = torch.isfinite(flat) if exclude_nonfinite else ~torch.isnan(flat)
    candidates = keep.nonzero().squeeze(1)
    order = candidates[torch.sort(flat[candidates], descending=True, stable=True).indices][: max(n, 0)]
    width = values.shape[1]
    return [divmod(int(i), width) for i in order]


# --- selection ------------------------------------------------------------------------------------------------


def _check_frac(name: str, frac: float) -> None:
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 <= float(frac) <= 1.0:
        raise UnlearnLensError(f"{name} must be a fraction in [0, 1], got {frac!r}")


def _top_k(values: torch.Tensor, blocked: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest ``values`` not ``blocked``; ties go to the lower index.

    ``values`` and ``blocked`` are 1-D. At most the number of free entries is chosen.
    """
    out = torch.zeros_like(blocked)
    free = (~blocked).nonzero().squeeze(1)
    k = min(k, free.numel())
    if k <= 0:
        return out
    v = values[free].double().nan_to_num(nan=-math.inf)
    order = torch.sort(v, descending=True, stable=True).indices[:k]
    out[free[order]] = True
    return out


def _select_blocks(
    values: torch.Tensor, blocked: torch.Tensor, frac: float, per_layer: bool, compat: str = "none"
) -> torch.Tensor:
    """Select ``frac`` of the entries (counted by the rule of ``compat``), globally or per layer (dim 0)."""
    units = rules(compat).units
    if per_layer:
        k = units(frac, values[0].numel())
        return torch.stack(
            [
                _top_k(values[l].reshape(-1), blocked[l].reshape(-1), k).view(values.shape[1:])
                for l in range(values.shape[0])
            ]
        )
    k = units(frac, values.numel())
    return _top_k(values.reshape(-1), blocked.reshape(-1), k).view(values.shape)


def _expand_heads(chosen: Bool[torch.Tensor, "layer head"], d_head: int) -> Bool[torch.Tensor, "layer head d_head"]:
    return einops.repeat(chosen, "layer head -> layer head d_head", d_head=d_head).clone()


def select(
    scores: Scores,
    *,
    mlp_frac: float = 0.02,
    attn_frac: float = 0.0,
    per_layer: bool = False,
    exclude: Masks | None = None,
    heads: bool = False,
    head_agg: str = "mean",
    compat: str | None = None,
) -> Masks:
    """Pick the most forget-specific units.

    Args:
        scores: unit scores.
        mlp_frac: fraction of *all* MLP neurons to select, in [0, 1].
        attn_frac: fraction of *all* attention neurons to select (with ``heads``, of all heads).
        per_layer: select that fraction within each layer instead of globally.
        exclude: units never to select (e.g. those already pruned).
        heads: select whole attention heads, ranked by the ``head_agg`` of their
            neuron scores; a head with any excluded neuron is not selected.
        head_agg: ``"mean"`` or ``"median"``.
        compat: the rules of selection (:mod:`unlearn_lens.compat`): ``"none"`` selects
            round(frac * N) units, ``"taker"`` int(frac * N) and aggregates heads as the
            reference does; default: the rules the scores were made by (``scores.config``).

    Returns:
        :class:`Masks` of the newly selected units only.
    """
    _check_frac("mlp_frac", mlp_frac)
    _check_frac("attn_frac", attn_frac)
    device = scores.mlp.device
    if exclude is None:
        exclude = Masks(
            torch.zeros(scores.mlp.shape, dtype=torch.bool, device=device),
            torch.zeros(scores.attn.shape, dtype=torch.bool, device=device),
        )
    if exclude.mlp.shape != scores.mlp.shape or exclude.attn.shape != scores.attn.shape:
        raise UnlearnLensError(
            f"exclude masks {tuple(exclude.mlp.shape)}/{tuple(exclude.attn.shape)} do not fit scores "
            f"{tuple(scores.mlp.shape)}/{tuple(scores.attn.shape)}"
        )
    exclude = exclude.to(device)
    compat = scores.config.get("compat", "none") if compat is None else compat
    mlp = _select_blocks(scores.mlp, exclude.mlp, mlp_frac, per_layer, compat)
    if heads:
        values = head_scores(scores.attn, head_agg, compat, scores.config.get("dtype"))
        chosen = _select_blocks(values, exclude.attn.any(-1), attn_frac, per_layer, compat)
        attn = _expand_heads(chosen, scores.attn.shape[-1])
    else:
        attn = _select_blocks(scores.attn, exclude.attn, attn_frac, per_layer, compat)
    return Masks(mlp, attn)


def _random_per_layer(counts: Sequence[int], blocked: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per layer (dim 0), ``counts[l]`` entries chosen uniformly among those not blocked."""
    out = torch.zeros(blocked.shape, dtype=torch.bool)
    for layer in range(blocked.shape[0]):
        free = (~blocked[layer].reshape(-1).cpu()).nonzero().squeeze(1)
        k = min(int(counts[layer]), free.numel())
        pick = free[torch.randperm(free.numel(), generator=gen)[:k]]
        out[layer].view(-1)[pick] = True
    return out.to(blocked.device)


def random_masks(
    mlp_counts: Sequence[int],
    attn_counts: Sequence[int],
    *,
    exclude: Masks,
    seed: int = 0,
    heads: bool = False,
) -> Masks:
    """Masks with the given number of pruned units per layer, chosen uniformly at random.

    Args:
        mlp_counts: MLP neurons to choose in each layer.
        attn_counts: attention neurons to choose in each layer (with ``heads``, whole
            heads are chosen: ``attn_counts[l] // d_head`` of them).
        exclude: units never to choose (a head with any excluded neuron, with
            ``heads``); also gives the shapes.
        seed: random seed.
        heads: choose whole heads.
    """
    gen = torch.Generator().manual_seed(seed)
    mlp = _random_per_layer(mlp_counts, exclude.mlp, gen)
    if heads:
        d_head = exclude.attn.shape[-1]
        chosen = _random_per_layer([c // d_head for c in attn_counts], exclude.attn.any(-1), gen)
        attn = _expand_heads(chosen, d_head)
    else:
        attn = _random_per_layer(attn_counts, exclude.attn, gen)
    return Masks(mlp, attn)


def random_masks_like(masks: Masks, seed: int = 0, *, exclude: Masks | None = None, heads: bool | None = None) -> Masks:
    """Random masks with the same number of pruned units per layer as ``masks``.

    Args:
        masks: the masks whose per-layer counts to copy.
        seed: random seed.
        exclude: units never to choose (e.g. already pruned in the baseline run).
        heads: choose whole heads; by default, when ``masks`` prunes whole heads only.
    """
    exclude = exclude if exclude is not None else Masks(torch.zeros_like(masks.mlp), torch.zeros_like(masks.attn))
    masks.check_same(exclude)
    heads = masks.whole_heads if heads is None else heads
    return random_masks(masks.mlp_counts(), masks.attn_counts(), exclude=exclude, seed=seed, heads=heads)
