"""The random baseline over several seeds: runs grouped by name, and the spread of a number over seeds.

A selective run is compared with random baselines that prune the same number of units
per layer and step, one per seed (:meth:`~unlearn_lens.results.PruneRun.random_runs`).
One seed is one draw of chance; several show how far chance alone moves the numbers.
The figures (:mod:`unlearn_lens.report.viz`) draw the seeds as a band, and the report and the
terminal table give each number of the random column as the mean over the seeds with
its min–max range. Pure functions over results; no model is run here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.results import PruneRun

__all__ = ["RunsLike", "band", "group_label", "run_groups", "spread", "spread_text"]

RunsLike = Mapping[str, PruneRun | Sequence[PruneRun]] | PruneRun
"""What the run figures take: one run (with its baselines), ``{name: run}``, or ``{name: [run, ...]}`` (seeds)."""


def run_groups(runs: RunsLike) -> dict[str, list[PruneRun]]:
    """Runs as ``{name: [run, ...]}``, several runs under one name being the seeds of one strategy.

    Args:
        runs: a single run (its name is its strategy; with a baseline, every seed of it comes
            along under ``"random"``, see :meth:`PruneRun.random_runs`), or ``{name: run}``, or
            ``{name: [run, ...]}``.

    Returns:
        ``{name: [run, ...]}``, every list non-empty, in the given order.

    Raises:
        UnlearnLensError: no runs, or a value that is neither a run nor a non-empty list of runs.
    """
    if isinstance(runs, PruneRun):
        return {runs.strategy: [runs], **({"random": runs.random_runs()} if runs.baseline is not None else {})}
    if not isinstance(runs, Mapping) or not runs:
        raise UnlearnLensError(f"expected a PruneRun or {{name: PruneRun or [PruneRun, ...]}}, got {runs!r:.80}")
    groups = {name: [value] if isinstance(value, PruneRun) else list(value) for name, value in runs.items()}
    for name, group in groups.items():
        if not group or not all(isinstance(r, PruneRun) for r in group):
            raise UnlearnLensError(f"runs[{name!r}] must be a PruneRun or a non-empty list of them (one per seed)")
    return groups


def group_label(name: str, group: Sequence[PruneRun]) -> str:
    """``name``, or ``"name (N seeds)"`` for a group of several runs."""
    return name if len(group) == 1 else f"{name} ({len(group)} seeds)"


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, min, max)`` of one number over seeds (``values`` non-empty)."""
    if not values:
        raise UnlearnLensError("no values to summarise")
    return sum(values) / len(values), min(values), max(values)


def spread_text(values: Sequence[float], fmt: str = ".4f") -> str:
    """One number over seeds as text: ``"0.2700 (0.2650–0.2730)"`` (mean, then min–max); one value alone."""
    mean, lo, hi = spread(values)
    return f"{mean:{fmt}}" if len(values) == 1 else f"{mean:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"


def band(per_seed: Sequence[Sequence[float]]) -> tuple[list[float], list[float], list[float]]:
    """Mean, minimum and maximum at each position of several seeds' curves.

    Args:
        per_seed: ``[seed][step]`` values, every seed with as many steps.

    Returns:
        ``(mean, lo, hi)``, each ``[step]``.

    Raises:
        UnlearnLensError: no seeds, or seeds of different lengths.
    """
    if not per_seed or len({len(v) for v in per_seed}) != 1:
        raise UnlearnLensError(f"a band needs seeds with as many steps each, got lengths {[len(v) for v in per_seed]}")
    columns = [spread(list(column)) for column in zip(*per_seed)]
    return [c[0] for c in columns], [c[1] for c in columns], [c[2] for c in columns]
