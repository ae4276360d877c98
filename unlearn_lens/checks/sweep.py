"""Sweeps: the selective loop for a grid of ablations × scoring methods, on the same tokens.

Which way of removing a unit (zero, mean, peak, resample; :mod:`unlearn_lens.ablations`)
and which importance score (``abs``, ``freq``, ``wanda``, ...; :mod:`unlearn_lens.scoring`)
separate forget from retain best? :func:`sweep` runs :func:`~unlearn_lens.pipeline.selective_prune`
once per cell of the grid, every cell on the same collection and evaluation tokens
(prepared once), and keeps every run. Cells are compared by the headline separation
number, retain top-1 where forget top-1 first falls to 50 %
(:meth:`~unlearn_lens.results.PruneRun.retain_at_forget`), which does not depend on
where a run stopped; each can have its random baseline (same per-layer counts, same
ablation).

:meth:`Sweep.save` writes one directory: ``sweep.json`` (the grid, the table) and one
run directory per cell under ``cells/<ablation>-<scoring>/``, read back by
:meth:`Sweep.load`. :func:`unlearn_lens.report.sweep.sweep_figure` draws the
retain/forget path of every cell beside a heatmap of the headline;
:func:`unlearn_lens.report.sweep.write_sweep_report` puts both and the table into one
offline ``report.html``::

    from unlearn_lens.checks.sweep import sweep
    from unlearn_lens.report.sweep import write_sweep_report
    result = sweep(model, code, prose, ul.PruneConfig(mlp_frac=0.06, n_steps=8),
                   ablations=["zero", "mean", "peak"], scorings=["abs", "freq", "wanda"])
    result.save("sweep_dir")
    write_sweep_report(result, "sweep_dir")
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from unlearn_lens._io import atomic_dir, read_json, write_json
from unlearn_lens._version import __version__
from unlearn_lens.ablations import ABLATIONS
from unlearn_lens.data import TokenSet, as_token_sets
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.pipeline import random_baseline, selective_prune
from unlearn_lens.results import PruneConfig, PruneRun
from unlearn_lens.scoring import SCORING_METHODS

__all__ = ["SWEEP_FORMAT", "Sweep", "SweepCell", "sweep"]

logger = logging.getLogger(__name__)

SWEEP_FORMAT = 2
"""Version of ``sweep.json``; 1 (unlearn_lens 0.2) is read too (its cells are results format 2)."""
"""Version of the sweep directory layout."""

DEFAULT_SCORINGS = ("abs", "freq", "rms", "wanda")


@dataclass
class SweepCell:
    """One cell of a sweep: an ablation, a scoring method, and the selective run they gave."""

    ablation: str
    scoring: str
    run: PruneRun

    @property
    def name(self) -> str:
        return f"{self.ablation}-{self.scoring}"

    def row(self, level: float = 0.5) -> dict[str, Any]:
        """The cell's line of the comparison table (relative numbers are to the unpruned model)."""
        run = self.run
        xs, ys = run.relative_path()
        out = {
            "ablation": self.ablation,
            "scoring": self.scoring,
            "n_steps": len(run.history) - 1,
            "mlp_frac": run.final.n_mlp / run.dims.n_mlp,
            "attn_frac": run.final.n_attn / run.dims.n_attn,
            "forget_rel": xs[-1],
            "retain_rel": ys[-1],
            "retain_at_forget": run.retain_at_forget(level),
            "separability_area": run.separability_area(),
            "seconds": round(run.seconds, 1),
        }
        if run.baseline is not None:
            out["random_retain_at_forget"] = run.baseline.retain_at_forget(level)
            out["random_forget_rel"] = run.baseline.relative_path()[0][-1]
        return out


@dataclass
class Sweep:
    """The runs of a grid of ablations × scoring methods, with the settings they share.

    Attributes:
        cells: one per (ablation, scoring), in grid order (ablations outer).
        config: the shared settings (each cell overrides ablation and scoring).
        level: forget level of the headline number.
        info: where the data came from.
        version: unlearn_lens version that made the sweep.
        seconds: total wall time.
    """

    cells: list[SweepCell]
    config: PruneConfig
    level: float = 0.5
    info: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    seconds: float = 0.0

    @property
    def ablations(self) -> list[str]:
        return list(dict.fromkeys(c.ablation for c in self.cells))

    @property
    def scorings(self) -> list[str]:
        return list(dict.fromkeys(c.scoring for c in self.cells))

    def cell(self, ablation: str, scoring: str) -> SweepCell:
        for c in self.cells:
            if (c.ablation, c.scoring) == (ablation, scoring):
                return c
        raise UnlearnLensError(f"the sweep has no cell ({ablation!r}, {scoring!r})")

    def table(self) -> list[dict[str, Any]]:
        """One row per cell: headline, area, final relative forget and retain top-1, units pruned."""
        return [c.row(self.level) for c in self.cells]

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``sweep.json`` and every cell's run directory (``cells/<name>``), all or nothing."""
        path = Path(path)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            (tmp / "cells").mkdir()
            for c in self.cells:
                c.run.save(tmp / "cells" / c.name)
            write_json(
                tmp / "sweep.json",
                {
                    "library": "unlearn_lens",
                    "format": SWEEP_FORMAT,
                    "version": self.version,
                    "config": self.config.to_dict(),
                    "level": self.level,
                    "info": self.info,
                    "seconds": round(self.seconds, 3),
                    "ablations": self.ablations,
                    "scorings": self.scorings,
                    "cells": [{"name": c.name, "ablation": c.ablation, "scoring": c.scoring} for c in self.cells],
                    "table": self.table(),
                },
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Sweep:
        """Read a directory written by :meth:`save`.

        Raises:
            UnlearnLensError: not a sweep directory, or a missing or corrupt file (named).
        """
        path = Path(path)
        if not (path / "sweep.json").is_file():
            raise UnlearnLensError(f"{str(path)!r} is not a sweep directory: it has no sweep.json")
        data = read_json(path / "sweep.json")
        if not isinstance(data, dict) or data.get("format") not in (1, SWEEP_FORMAT):
            raise UnlearnLensError(f"file {str(path / 'sweep.json')!r} is not a sweep file of this version")
        try:
            cells = [
                SweepCell(c["ablation"], c["scoring"], PruneRun.load(path / "cells" / c["name"])) for c in data["cells"]
            ]
            return cls(
                cells,
                PruneConfig.from_dict(data["config"]),
                float(data["level"]),
                dict(data["info"]),
                data.get("version", "?"),
                float(data.get("seconds", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnlearnLensError(f"file {str(path / 'sweep.json')!r} is incomplete or corrupt ({exc!r})") from exc


def _names(values: Iterable[str], choices: Sequence[str], what: str) -> list[str]:
    names = list(dict.fromkeys(values))
    if not names:
        raise UnlearnLensError(f"a sweep needs at least one {what}")
    unknown = [v for v in names if v not in choices]
    if unknown:
        raise UnlearnLensError(f"unknown {what} {unknown[0]!r}; choose from {', '.join(choices)}")
    return names


def sweep(
    model: Any,
    forget_texts: Iterable[str] | TokenSet,
    retain_texts: Iterable[str] | TokenSet,
    config: PruneConfig | None = None,
    *,
    ablations: Sequence[str] = ABLATIONS,
    scorings: Sequence[str] = DEFAULT_SCORINGS,
    baseline: bool = False,
    level: float = 0.5,
    progress: bool = True,
    info: dict[str, Any] | None = None,
) -> Sweep:
    """Run the selective loop for every ablation × scoring method on the same tokens.

    Args:
        model: a TransformerLens model (not modified: pruning is by hooks).
        forget_texts, retain_texts: the datasets; read once, to ``collect_tokens +
            eval_tokens`` tokens each, and given to every cell as the same tokens.
        config: the shared settings (default :class:`PruneConfig`); each cell sets both
            unit kinds' ablation and scoring.
        ablations: ablations to compare (see :data:`~unlearn_lens.ablations.ABLATIONS`).
        scorings: scoring methods to compare.
        baseline: also run each cell's random baseline (doubles the cost).
        level: forget level of the headline number.
        progress: show progress bars.
        info: where the data came from, recorded in every run.

    Returns:
        A :class:`Sweep`.
    """
    if config is not None and not isinstance(config, PruneConfig):
        raise UnlearnLensError(f"config must be a PruneConfig, got {type(config).__name__}")
    if not 0 < level < 1:
        raise UnlearnLensError(f"level must be in (0, 1), got {level!r}")
    cfg = config or PruneConfig()
    grid = [
        (a, s)
        for a in _names(ablations, ABLATIONS, "ablation")
        for s in _names(scorings, SCORING_METHODS, "scoring method")
    ]
    t0 = time.time()
    cell_cfgs = [  # every cell's config first: one the settings refuse (wanda under compat) stops the sweep at once
        dataclasses.replace(
            cfg, ablation=a, mlp_ablation=None, attn_ablation=None, scoring=s, mlp_scoring=None, attn_scoring=None
        )
        for a, s in grid
    ]
    data = {}
    for name, texts in (("forget", forget_texts), ("retain", retain_texts)):
        parts = as_token_sets(
            model, texts, [cfg.collect_tokens, cfg.eval_tokens], seq_len=cfg.seq_len, compat=cfg.compat
        )
        data[name] = TokenSet.concat(parts)
    cells = []
    for (ablation, scoring), cell_cfg in tqdm(
        list(zip(grid, cell_cfgs)), desc="sweep", unit="cell", disable=not progress
    ):
        logger.info("sweep cell: ablation %s, scoring %s", ablation, scoring)
        run = selective_prune(model, data["forget"], data["retain"], cell_cfg, progress=progress, info=info)
        if baseline:
            run.baseline = random_baseline(model, data["forget"], data["retain"], run, progress=progress)
        cells.append(SweepCell(ablation, scoring, run))
    return Sweep(cells, cfg, level, dict(info or {}), seconds=time.time() - t0)


# --- figure and page ---------------------------------------------------------------------------------------
