"""The page of a sweep: every cell's path and headline in one figure, and the comparison table.

:func:`sweep_figure` draws a :class:`~unlearn_lens.checks.sweep.Sweep` (it runs no model);
:func:`write_sweep_report` writes ``report.html`` beside the sweep's ``sweep.json``, from
``templates/sweep.html.j2`` and ``static/sweep.css``.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING

from markupsafe import Markup

from unlearn_lens._io import write_text
from unlearn_lens.checks.sweep import Sweep
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.report.templating import render, static_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["sweep_figure", "write_sweep_report"]

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


def write_sweep_report(result: Sweep | str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``report.html`` for a sweep: the comparison table and :func:`sweep_figure`, offline.

    Args:
        result: a :class:`~unlearn_lens.checks.sweep.Sweep`, or a sweep directory (read with
            :meth:`Sweep.load <unlearn_lens.checks.sweep.Sweep.load>`).
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
    ]
    if with_random:
        head.append("random: retain at forget")
    table = []
    for r in rows:
        cells = [
            r["ablation"],
            r["scoring"],
            _pct(r["retain_at_forget"]),
            f"{r['separability_area']:.3f}",
            str(r["n_steps"]),
            f"{r['mlp_frac']:.1%}",
            f"{r['attn_frac']:.1%}",
            _pct(r["forget_rel"]),
            _pct(r["retain_rel"]),
        ]
        if with_random:
            cells.append(_pct(r.get("random_retain_at_forget")))
        table.append({"cells": cells, "best": best is not None and r["retain_at_forget"] == best})
    page = render(
        "sweep.html.j2",
        title="Sweep: ablations × scoring methods",
        css=static_text("sweep.css"),
        result=result,
        config=result.config,
        model=str(result.info.get("model", "the model")),
        forget=str(result.info.get("forget", "?")),
        retain=str(result.info.get("retain", "?")),
        head=head,
        rows=table,
        figure=Markup(sweep_figure(result).to_html(include_plotlyjs=True, full_html=False)),
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    write_text(path, page)
    return path
