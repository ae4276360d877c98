"""The settings of a pruning run: :class:`PruneConfig`, validated on creation.

One dataclass holds every setting of the selective loop and of its random baseline
(fractions per step, scoring, ablation, token budgets, seed, stopping rule); the
command line's flags and ``results.json`` use the same names. It is re-exported by
:mod:`unlearn_lens.results` and by the package.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

from unlearn_lens.compat import REFERENCE_METHODS, check_compat, rules
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import per_kind
from unlearn_lens.pruning import ABLATIONS
from unlearn_lens.scoring import HEAD_AGGREGATIONS, SCORING_METHODS

__all__ = ["PruneConfig", "check_fraction", "check_ints", "check_seq_len", "is_int"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (and not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_ints(config: Any, least: dict[str, int | None]) -> None:
    """Check that each named field of ``config`` is an integer of at least ``least[name]`` (None: any).

    Raises:
        UnlearnLensError: naming the first field that is not.
    """
    for name, bound in least.items():
        value = getattr(config, name)
        if not is_int(value):
            raise UnlearnLensError(f"{name} must be an integer, got {value!r}")
        if bound is not None and value < bound:
            raise UnlearnLensError(f"{name} must be at least {bound}, got {value!r}")


def check_seq_len(value: Any) -> None:
    """Check a row length: None (the model's context) or an integer of at least 2.

    Raises:
        UnlearnLensError: any other value.
    """
    if value is not None and (not is_int(value) or value < 2):
        raise UnlearnLensError(f"seq_len must be an integer of at least 2, got {value!r}")


def check_fraction(name: str, value: Any, what: str = "a fraction in [0, 1]") -> None:
    """Check that ``value`` is a real number in [0, 1] (not a bool).

    Raises:
        UnlearnLensError: naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise UnlearnLensError(f"{name} must be {what}, got {value!r}")


_AT_LEAST = {
    "n_steps": 1,
    "collect_tokens": 1,
    "eval_tokens": 1,
    "batch_size": 1,
    "topk": 1,
    "skip_common": 0,
    "seed": None,
    "peak_bins": 1,
    "resample_tokens": 1,
}
"""The integer fields of :class:`PruneConfig` and their least values (None: any integer)."""


@dataclass
class PruneConfig:
    """Settings of one selective-pruning run (validated on creation).

    The same names are used by the command line (``--mlp-frac``, ``--n-steps``, ...)
    and in ``results.json``.

    Attributes:
        mlp_frac: fraction of all MLP neurons pruned per step.
        attn_frac: fraction of all attention neurons (or heads, with ``heads``) per step.
        n_steps: maximum number of pruning steps.
        scoring: scoring method of both unit kinds (``abs freq rms std sqrt mean rand``).
        mlp_scoring, attn_scoring: per-kind scoring methods (None: ``scoring``).
        ablation: ``"zero"``, ``"mean"``, ``"peak"`` or ``"resample"`` for both kinds (the
            means, modes and samples come from the unpruned model's retain activations).
        mlp_ablation, attn_ablation: per-kind ablations (None: ``ablation``).
        peak_bins: histogram bins per unit for ``"peak"``.
        resample_tokens: retain tokens kept for ``"resample"``.
        collect_tokens: tokens per dataset for statistics, each step.
        eval_tokens: tokens per dataset for evaluation, apart from the collection tokens.
        seq_len: row length (None: the model's context, at most 256).
        batch_size: rows per forward pass.
        seed: seed of random choices (``rand`` scoring, the random baseline).
        stop_at_forget: stop once forget top-1 is at most this fraction of its
            unpruned value (None: run all steps).
        per_layer: select within each layer instead of globally.
        heads: prune whole attention heads.
        head_agg: ``"mean"`` or ``"median"`` of neuron scores for head scores.
        mlp_eps, attn_eps: score denominators' offsets.
        topk: k of top-k accuracy.
        skip_common: leave the N most common tokens out of evaluation.
        compat: ``"none"`` (this package's textbook definitions) or ``"taker"``: the
            reference implementation's rows, statistics, scores, units per step and
            head aggregation, to reproduce or compare with the paper's numbers
            (:mod:`unlearn_lens.compat`).
    """

    mlp_frac: float = 0.02
    attn_frac: float = 0.0
    n_steps: int = 10
    scoring: str = "abs"
    mlp_scoring: str | None = None
    attn_scoring: str | None = None
    ablation: str = "zero"
    mlp_ablation: str | None = None
    attn_ablation: str | None = None
    peak_bins: int = 64
    resample_tokens: int = 1024
    collect_tokens: int = 100_000
    eval_tokens: int = 100_000
    seq_len: int | None = None
    batch_size: int = 8
    seed: int = 0
    stop_at_forget: float | None = None
    per_layer: bool = False
    heads: bool = False
    head_agg: str = "mean"
    mlp_eps: float = 1e-3
    attn_eps: float = 1e-4
    topk: int = 10
    skip_common: int = 0
    compat: str = "none"

    def __post_init__(self) -> None:
        for name in ("mlp_frac", "attn_frac"):
            check_fraction(name, getattr(self, name))
        if self.mlp_frac == 0 and self.attn_frac == 0:
            raise UnlearnLensError("mlp_frac and attn_frac are both 0: nothing would be pruned")
        check_ints(self, _AT_LEAST)
        check_seq_len(self.seq_len)
        self.scorings  # noqa: B018 - validates the scoring methods
        self.ablations  # noqa: B018 - validates the ablations
        self._check_compat()
        if self.head_agg not in HEAD_AGGREGATIONS:
            raise UnlearnLensError(f"head_agg must be 'mean' or 'median', got {self.head_agg!r}")
        if self.stop_at_forget is not None:
            check_fraction("stop_at_forget", self.stop_at_forget, "in [0, 1]")
        for name in ("mlp_eps", "attn_eps"):
            if not isinstance(getattr(self, name), numbers.Real) or getattr(self, name) < 0:
                raise UnlearnLensError(f"{name} must be a non-negative number, got {getattr(self, name)!r}")

    def _check_compat(self) -> None:
        check_compat(self.compat)
        foreign = sorted(set(self.scorings.values()) - set(REFERENCE_METHODS))
        if rules(self.compat).reference_scores and foreign:
            raise UnlearnLensError(
                f"compat={self.compat!r} reproduces the reference implementation, which has no scoring "
                f"{foreign[0]!r}; choose one of {list(REFERENCE_METHODS)}"
            )

    @property
    def scorings(self) -> dict[str, str]:
        """The scoring method of each unit kind: ``{"mlp": ..., "attn": ...}``."""
        return per_kind(self.scoring, self.mlp_scoring, self.attn_scoring, what="scoring", choices=SCORING_METHODS)

    @property
    def ablations(self) -> dict[str, str]:
        """The ablation of each unit kind: ``{"mlp": ..., "attn": ...}``."""
        return per_kind(self.ablation, self.mlp_ablation, self.attn_ablation, what="ablation", choices=ABLATIONS)

    @property
    def needs_means(self) -> bool:
        """Whether some unit kind is mean-ablated (retain means are then collected)."""
        return "mean" in self.ablations.values()

    @property
    def needs_peaks(self) -> bool:
        """Whether some unit kind is peak-ablated (retain histograms are then collected)."""
        return "peak" in self.ablations.values()

    @property
    def needs_sample(self) -> bool:
        """Whether some unit kind is resample-ablated (a retain activation sample is then kept)."""
        return "resample" in self.ablations.values()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UnlearnLensError(f"unknown PruneConfig fields: {sorted(unknown)}")
        return cls(**data)
