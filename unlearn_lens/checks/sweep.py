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
:meth:`Sweep.load`. :func:`sweep_figure` draws the retain/forget path of every cell
beside a heatmap of the headline; :func:`write_sweep_report` puts both and the table
into one offline ``report.html``::

    from unlearn_lens.checks.sweep import sweep, write_sweep_report
    result = sweep(model, code, prose, ul.PruneConfig(mlp_frac=0.06, n_steps=8),
                   ablations=["zero", "mean", "peak"], scorings=["abs", "freq", "wanda"])
    result.save("sweep_dir")
    write_sweep_report(result, "sweep_dir")
"""

from __future__ import annotations

import dataclasses
import html
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from unlearn_lens._io import atomic_dir, read_json, write_json, write_text
from unlearn_lens._version import __version__
from unlearn_lens.ablations import ABLATIONS
from unlearn_lens.data import TokenSet, as_token_sets
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.pipeline import random_baseline, selective_prune
from unlearn_lens.results import PruneConfig, PruneRun
from unlearn_lens.scoring import SCORING_METHODS

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["SWEEP_FORMAT", "Sweep", "SweepCell", "sweep", "sweep_figure", "write_sweep_report"]

logger = logging.getLogger(__name__)

SWEEP_FORMAT = 1
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
            "steps": len(run.history) - 1,
            "frac_mlp": run.final.n_mlp / run.dims.n_mlp,
            "frac_attn": run.final.n_attn / run.dims.n_attn,
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
        if not isinstance(data, dict) or data.get("format") != SWEEP_FORMAT:
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
    data = {}
    for name, texts in (("forget", forget_texts), ("retain", retain_texts)):
        parts = as_token_sets(model, texts, [cfg.collect_tokens, cfg.eval_tokens], seq_len=cfg.seq_len)
        data[name] = TokenSet.concat(parts)
    cells = []
    for ablation, scoring in tqdm(grid, desc="sweep", unit="cell", disable=not progress):
        cell_cfg = dataclasses.replace(
            cfg,
            ablation=ablation,
            mlp_ablation=None,
            attn_ablation=None,
            scoring=scoring,
            mlp_scoring=None,
            attn_scoring=None,
        )
        logger.info("sweep cell: ablation %s, scoring %s", ablation, scoring)
        run = selective_prune(model, data["forget"], data["retain"], cell_cfg, progress=progress, info=info)
        if baseline:
            run.baseline = random_baseline(model, data["forget"], data["retain"], run, progress=progress)
        cells.append(SweepCell(ablation, scoring, run))
    return Sweep(cells, cfg, level, dict(info or {}), seconds=time.time() - t0)


# --- figure and page ---------------------------------------------------------------------------------------

_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
_DASHES = ("solid", "dash", "dot", "dashdot")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def sweep_figure(result: Sweep) -> go.Figure:
    """Left: every cell's path (relative forget top-1 → relative retain top-1, step by step; colour = scoring,
    dash = ablation). Right: the headline per cell (ablation × scoring heatmap; blank where forget never fell
    to the level)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ablations, scorings = result.ablations, result.scorings
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.58, 0.42],
        horizontal_spacing=0.12,
        subplot_titles=(
            "retain vs forget, every step",
            f"retain top-1 where forget top-1 first falls to {result.level:.0%}",
        ),
    )
    for c in result.cells:
        xs, ys = c.run.relative_path()
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=c.name,
                legendgroup=c.scoring,
                line={
                    "color": _COLOURS[scorings.index(c.scoring) % len(_COLOURS)],
                    "dash": _DASHES[ablations.index(c.ablation) % len(_DASHES)],
                },
                marker={"size": 5},
                hovertemplate=(f"{html.escape(c.name)}<br>forget %{{x:.1%}}<br>retain %{{y:.1%}}<extra></extra>"),
            ),
            row=1,
            col=1,
        )
    fig.add_vline(x=result.level, line={"color": "#999", "dash": "dot"}, row=1, col=1)
    z = [[result.cell(a, s).run.retain_at_forget(result.level) for s in scorings] for a in ablations]
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=scorings,
            y=ablations,
            colorscale="Viridis",
            zmin=0,
            zmax=1,
            colorbar={"title": {"text": "retain"}},
            text=[[_pct(v) for v in row] for row in z],
            texttemplate="%{text}",
            showscale=True,
            hovertemplate="ablation %{y}<br>scoring %{x}<br>retain %{text}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="forget top-1 (relative)", autorange="reversed", tickformat=".0%", row=1, col=1)
    fig.update_yaxes(title_text="retain top-1 (relative)", tickformat=".0%", row=1, col=1)
    fig.update_xaxes(title_text="scoring", row=1, col=2)
    fig.update_yaxes(title_text="ablation", autorange="reversed", row=1, col=2)
    fig.update_layout(template="plotly_white", height=480, margin={"t": 60}, legend={"font": {"size": 10}})
    return fig


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}}
table{{border-collapse:collapse;font-size:14px}}td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){{text-align:left}}tr.best{{background:#e8f5e9}}
.note{{color:#555;max-width:60em}}</style></head><body>
<h1>{title}</h1>
<p class="note">{intro}</p>
{table}
<p class="note">{legend}</p>
{figure}
</body></html>
"""


def write_sweep_report(result: Sweep | str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``report.html`` for a sweep: the comparison table and :func:`sweep_figure`, offline.

    Args:
        result: a :class:`Sweep`, or a sweep directory (read with :meth:`Sweep.load`).
        out_dir: where to write (default: the sweep directory; required for a sweep in memory).

    Returns:
        The path of the page.
    """
    if isinstance(result, (str, os.PathLike)):
        out = Path(out_dir) if out_dir is not None else Path(result)
        result = Sweep.load(result)
    elif out_dir is None:
        raise UnlearnLensError("write_sweep_report needs out_dir for a sweep in memory")
    else:
        out = Path(out_dir)
    rows = result.table()
    reached = [r["retain_at_forget"] for r in rows if r["retain_at_forget"] is not None]
    best = max(reached) if reached else None
    with_random = any("random_retain_at_forget" in r for r in rows)
    head = [
        "ablation",
        "scoring",
        f"retain at forget {result.level:.0%}",
        "area",
        "steps",
        "MLP pruned",
        "attn pruned",
        "final forget",
        "final retain",
    ] + (["random: retain at forget"] if with_random else [])
    lines = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = [
            r["ablation"],
            r["scoring"],
            _pct(r["retain_at_forget"]),
            f"{r['separability_area']:.3f}",
            str(r["steps"]),
            f"{r['frac_mlp']:.1%}",
            f"{r['frac_attn']:.1%}",
            _pct(r["forget_rel"]),
            _pct(r["retain_rel"]),
        ] + ([_pct(r.get("random_retain_at_forget"))] if with_random else [])
        cls = ' class="best"' if best is not None and r["retain_at_forget"] == best else ""
        lines.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    cfg = result.config
    intro = (
        f"Selective pruning of {html.escape(str(result.info.get('model', 'the model')))}: forget "
        f"{html.escape(str(result.info.get('forget', '?')))}, retain {html.escape(str(result.info.get('retain', '?')))}. "
        f"Every cell pruned {cfg.mlp_frac:g} of MLP and {cfg.attn_frac:g} of attention neurons per step for up to "
        f"{cfg.n_steps} steps, with statistics from {cfg.collect_tokens:,} tokens and evaluation on "
        f"{cfg.eval_tokens:,} other tokens of each dataset, the same tokens in every cell. "
        f"The headline is retain top-1 (relative to the unpruned model) where forget top-1 first falls to "
        f"{result.level:.0%}, interpolated between steps; — where it never fell that far. The best cell is shaded."
    )
    legend = (
        "Left: each cell's path from the unpruned model (1, 1) step by step; further right and higher is "
        "better. Colour: scoring method; dash: ablation. Right: the headline per cell."
    )
    page = _PAGE.format(
        title="Sweep: ablations × scoring methods",
        intro=intro,
        table="\n".join(lines),
        legend=legend,
        figure=sweep_figure(result).to_html(include_plotlyjs=True, full_html=False),
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    write_text(path, page)
    return path
