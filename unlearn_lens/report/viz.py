"""Figures of a selective-pruning run.

Every figure function takes results (:class:`~unlearn_lens.scoring.Scores`,
:class:`~unlearn_lens.masks.Masks`, :class:`~unlearn_lens.results.PruneRun`) and
returns a ``plotly.graph_objects.Figure``; nothing is shown or written here, and
the model is never run. (Neuron cards, which run it, are in :mod:`unlearn_lens.report.cards`.)

* :func:`specialisation_map`: every unit's score, layers by units sorted within
  each layer, with the pruned units marked;
* :func:`head_map`: whole-head scores and the share of each head that was pruned;
* :func:`score_distributions`: the spread of scores in each layer;
* :func:`pruning_effects`: forget and retain accuracy and loss against the share
  of units pruned, step by step, selective vs random (several seeds: a min–max band);
* :func:`separability_trajectory`: retain against forget accuracy relative to the
  unpruned model, with the headline point (retain where forget first halves) marked
  and the separability area (closed from the last step, so it depends on the stop) shaded;
* :func:`pruned_per_layer`: how many units each step took from each layer.

Scores of the ratio methods (``abs freq rms std sqrt wanda``) are forget importance over
retain importance, shown as log10 (0 = equally important for both; scores below
1e-6, e.g. units silent on the forget set, are drawn at -6). Scores of ``mean``
(|mean_forget - mean_retain|) and ``rand`` (random control) are not ratios and are
shown as they are, with axis labels that say so.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import einops
import torch
from jaxtyping import Float

from unlearn_lens.compat import rules
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.masks import Masks
from unlearn_lens.models import check_kind
from unlearn_lens.report.bands import RunsLike, band, group_label, run_groups, spread_text
from unlearn_lens.results import PruneRun
from unlearn_lens.scoring import RATIO_METHODS, Scores, head_scores

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "head_map",
    "pruned_per_layer",
    "pruning_effects",
    "score_distributions",
    "score_values",
    "separability_trajectory",
    "specialisation_map",
]

logger = logging.getLogger(__name__)

LOG10_FLOOR = -6.0
"""Ratio scores are clipped at 10**LOG10_FLOOR before taking log10."""

_IMPORTANCE_NAME = {
    "abs": "mean |x|",
    "freq": "P(x>0)",
    "rms": "RMS",
    "std": "std",
    "sqrt": "mean √|x|",
    "wanda": "RMS·‖w_out‖",
}
_KIND_NAME = {"mlp": "MLP neurons", "attn": "attention neurons"}
_KIND_TITLE = {"mlp": "MLP neurons", "attn": "Attention neurons"}
_DATASET_COLOURS = {"forget": "#c0392b", "retain": "#2471a3"}
_RUN_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")
_RUN_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
_TEMPLATE = "plotly_white"


def _go() -> Any:
    import plotly.graph_objects as go

    return go


def _numpy(x: torch.Tensor) -> Any:
    return x.detach().to("cpu", torch.float64).numpy()


def score_values(scores: Scores, kind: str = "mlp") -> tuple[Float[torch.Tensor, "layer unit"], str, bool]:
    """The values to plot for one kind of unit, and their honest label.

    Args:
        scores: unit scores.
        kind: ``"mlp"`` (``scores.mlp`` ``[layer d_mlp]``) or ``"attn"``
            (``scores.attn`` flattened to ``[layer head*d_head]``, unit = head * d_head + d).

    Returns:
        ``(values, label, is_log_ratio)``: ``values`` ``[layer unit]`` float64 (log10 of
        the score for ratio methods, clipped at ``LOG10_FLOOR``; the raw score otherwise),
        a label for the colour or value axis, and whether the values are log10 ratios.
    """
    check_kind(kind)
    raw = scores.mlp if kind == "mlp" else einops.rearrange(scores.attn, "layer head d_head -> layer (head d_head)")
    raw = raw.detach().to("cpu", torch.float64)
    method = scores.scoring_of(kind)
    if method in RATIO_METHODS:
        name = _IMPORTANCE_NAME[method]
        values = raw.nan_to_num(nan=0.0).clamp(min=10.0**LOG10_FLOOR).log10()
        return values, f"log10 score: {name} forget / ({name} retain + eps)", True
    if method == "mean":
        return raw, "score |mean forget − mean retain| (not a ratio)", False
    if method == "rand":
        return raw, "random score (a control, not a ratio)", False
    return raw, f"score ({method})", False


def _short_label(method: str) -> str:
    if method in RATIO_METHODS:
        return "log10 score"
    return {"mean": "|Δ mean|", "rand": "random score"}.get(method, "score")


def _head_values(scores: Scores, agg: str) -> tuple[Float[torch.Tensor, "layer head"], str, bool]:
    compat = scores.config.get("compat", "none")
    raw = head_scores(scores.attn.detach().to("cpu", torch.float64), agg, compat, scores.config.get("dtype"))
    if rules(compat).reference_heads:  # the reference's "mean" is a median and its "median" a mean
        agg = {"mean": "median", "median": "mean"}[agg]
    method = scores.attn_scoring
    if method in RATIO_METHODS:
        return (
            raw.nan_to_num(nan=0.0).clamp(min=10.0**LOG10_FLOOR).log10(),
            f"log10 head score ({agg} of its neurons' scores)",
            True,
        )
    label = {"rand": "random", "mean": "|Δ mean|"}.get(method, method)
    return raw, f"head score: {agg} of neuron scores ({label}, not a ratio)", False


def _colour_kwargs(values: torch.Tensor, is_log: bool) -> dict[str, Any]:
    if is_log:
        bound = float(values.abs().max()) if values.numel() else 1.0
        return {"colorscale": "RdBu_r", "zmid": 0.0, "zmin": -bound, "zmax": bound}
    return {"colorscale": "Viridis"}


def _mask_block(masks: Masks, kind: str) -> torch.Tensor:
    block = masks.mlp if kind == "mlp" else einops.rearrange(masks.attn, "layer head d_head -> layer (head d_head)")
    return block.detach().cpu().bool()


def specialisation_map(
    scores: Scores, masks: Masks | None = None, kind: str = "mlp", *, title: str | None = None
) -> go.Figure:
    """Heatmap of every unit's score: layers by units, sorted within each layer.

    Units are sorted by descending score within each layer, so each row reads as a
    profile: how many units in that layer are strongly forget-specific. Hover shows
    the unit's original index. Pruned units (``masks``) are marked at their sorted
    positions.

    Args:
        scores: unit scores (``mlp`` ``[layer d_mlp]``, ``attn`` ``[layer head d_head]``).
        masks: pruned units to mark (optional).
        kind: ``"mlp"`` or ``"attn"`` (attention neurons flattened to ``head * d_head + d``).
        title: figure title (default: describes the map).

    Returns:
        A figure with one heatmap (z ``[layer unit]``, sorted) and, with ``masks``, one
        scatter trace with a marker per pruned unit.
    """
    go = _go()
    values, label, is_log = score_values(scores, kind)
    n_layers, n_units = values.shape
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    z = values.gather(1, order)
    unit_label = "neuron" if kind == "mlp" else "head·d_head + d"
    fig = go.Figure()
    fig.add_trace(
        go.Heatmap(
            z=_numpy(z),
            x=list(range(n_units)),
            y=list(range(n_layers)),
            customdata=order.numpy(),
            colorbar={"title": {"text": _short_label(scores.scoring_of(kind)), "side": "right"}},
            name="score",
            hovertemplate=(
                f"layer %{{y}}<br>rank %{{x}}<br>{unit_label} %{{customdata}}<br>value %{{z:.3g}}<extra></extra>"
            ),
            **_colour_kwargs(z, is_log),
        )
    )
    if masks is not None:
        block = _mask_block(masks, kind)
        if tuple(block.shape) != (n_layers, n_units):
            raise UnlearnLensError(f"masks {tuple(block.shape)} do not fit scores {(n_layers, n_units)} ({kind})")
        pruned_sorted = block.gather(1, order)
        layers, ranks = pruned_sorted.nonzero(as_tuple=True)
        fig.add_trace(
            go.Scatter(
                x=ranks.tolist(),
                y=layers.tolist(),
                mode="markers",
                customdata=order[layers, ranks].tolist(),
                name=f"pruned ({len(ranks)})",
                marker={"symbol": "line-ns-open", "size": 9, "color": "black", "line": {"width": 1.5}},
                hovertemplate=f"pruned<br>layer %{{y}}<br>rank %{{x}}<br>{unit_label} %{{customdata}}<extra></extra>",
            )
        )
    unit_name = "MLP neuron" if kind == "mlp" else "attention neuron"
    fig.update_layout(
        template=_TEMPLATE,
        title={
            "text": title or f"Specialisation map of {_KIND_NAME[kind]} (sorted within each layer)",
            "subtitle": {"text": f"colour: {label}"},
        },
        xaxis={"title": {"text": f"{unit_name} rank within layer (highest score first)"}},
        yaxis={"title": {"text": "layer"}, "autorange": "reversed", "dtick": 1 if n_layers <= 24 else None},
        height=max(320, 150 + 28 * n_layers),
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def head_map(scores: Scores, masks: Masks | None = None, agg: str = "mean", *, title: str | None = None) -> go.Figure:
    """Whole-head scores, and the share of each head's neurons that was pruned.

    Args:
        scores: unit scores; head scores are the ``agg`` of each head's neuron scores
            (:func:`unlearn_lens.scoring.head_scores`), log10 for ratio methods.
        masks: pruned units; with them a second panel shows ``masks.attn.float().mean(-1)``.
        agg: ``"mean"`` or ``"median"``.
        title: figure title.

    Returns:
        A figure with one heatmap ``[layer head]`` per panel (two with ``masks``).
    """
    go = _go()
    from plotly.subplots import make_subplots

    values, label, is_log = _head_values(scores, agg)
    n_layers, n_heads = values.shape
    titles = [f"head score ({agg})"]
    if masks is not None:
        titles.append("share of head pruned")
    n_panels = len(titles)
    fig = make_subplots(rows=1, cols=n_panels, subplot_titles=titles, horizontal_spacing=0.2)
    small = n_layers * n_heads <= 400
    text_kw = {"texttemplate": "%{z:.2f}", "textfont": {"size": 10}} if small else {}
    fig.add_trace(
        go.Heatmap(
            z=_numpy(values),
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            name="head score",
            colorbar={
                "title": {"text": _short_label(scores.attn_scoring), "side": "right"},
                "x": 0.42 if n_panels == 2 else 1.02,
                "thickness": 14,
                "len": 0.9,
            },
            hovertemplate="layer %{y}, head %{x}<br>value %{z:.3g}<extra></extra>",
            **_colour_kwargs(values, is_log),
            **text_kw,
        ),
        row=1,
        col=1,
    )
    if masks is not None:
        share = masks.attn.detach().cpu().float().mean(-1)
        if tuple(share.shape) != (n_layers, n_heads):
            raise UnlearnLensError(f"masks {tuple(masks.attn.shape)} do not fit scores {tuple(scores.attn.shape)}")
        fig.add_trace(
            go.Heatmap(
                z=_numpy(share),
                x=list(range(n_heads)),
                y=list(range(n_layers)),
                name="share pruned",
                zmin=0.0,
                zmax=1.0,
                colorscale="Greys",
                colorbar={
                    "title": {"text": "share pruned", "side": "right"},
                    "x": 1.02,
                    "len": 0.9,
                    "tickformat": ".0%",
                },
                hovertemplate="layer %{y}, head %{x}<br>pruned %{z:.1%}<extra></extra>",
                **({"texttemplate": "%{z:.0%}", "textfont": {"size": 10}} if small else {}),
            ),
            row=1,
            col=2,
        )
    for col in range(1, n_panels + 1):
        fig.update_xaxes(title_text="head", dtick=1 if n_heads <= 32 else None, row=1, col=col)
        fig.update_yaxes(title_text="layer", autorange="reversed", dtick=1 if n_layers <= 32 else None, row=1, col=col)
    fig.update_layout(
        template=_TEMPLATE,
        title={"text": title or "Attention heads", "subtitle": {"text": label}},
        height=max(360, 180 + 30 * n_layers),
        margin={"t": 110},
    )
    return fig


def score_distributions(scores: Scores, kind: str = "mlp", *, title: str | None = None) -> go.Figure:
    """Box plot of the scores in each layer.

    Args:
        scores: unit scores.
        kind: ``"mlp"`` or ``"attn"``.
        title: figure title.

    Returns:
        A figure with one box trace per layer (values: log10 score for ratio methods).
    """
    go = _go()
    values, label, is_log = score_values(scores, kind)
    fig = go.Figure()
    for layer in range(values.shape[0]):
        fig.add_trace(
            go.Box(
                y=_numpy(values[layer]),
                name=f"layer {layer}",
                boxpoints="outliers",
                marker={"size": 3, "color": "#2471a3"},
                line={"width": 1, "color": "#2471a3"},
                fillcolor="rgba(36,113,163,0.25)",
                showlegend=False,
            )
        )
    if is_log:
        fig.add_hline(
            y=0.0,
            line={"dash": "dot", "color": "grey"},
            annotation_text="equal importance",
            annotation_position="top left",
        )
    fig.update_layout(
        template=_TEMPLATE,
        title={"text": title or f"Score distribution of {_KIND_NAME[kind]} per layer ('{scores.scoring_of(kind)}')"},
        xaxis={"title": {"text": "layer"}},
        yaxis={"title": {"text": label}},
        height=420,
    )
    return fig


def _pruned_fraction(run: PruneRun, combined: bool) -> list[float]:
    """The share of MLP neurons (or, ``combined``, of all units) pruned after each step."""
    n_mlp, n_attn = run.dims.n_mlp, run.dims.n_attn
    if combined:
        return [(s.n_mlp + s.n_attn) / (n_mlp + n_attn) for s in run.history]
    return [s.n_mlp / n_mlp for s in run.history]


def pruning_effects(runs: RunsLike, *, title: str | None = None) -> go.Figure:
    """Forget and retain top-1, top-k and loss against the share of units pruned.

    The x value of each step is ``n_mlp / (n_layers * d_mlp)``, or the share of all
    MLP and attention neurons together when any run pruned attention neurons. Several
    runs under one name (the seeds of a random baseline, which prune the same counts
    per step) are drawn as a band: their min–max shaded, their mean as the line.

    Args:
        runs: ``{name: PruneRun}`` (e.g. ``{"selective": run, "random": baseline}``), with a
            list of runs for a band (``{"random": run.random_runs()}``), or a single run
            (with every seed of its baseline).
        title: figure title.

    Returns:
        A figure with three panels (top-1, top-k, loss) and, in each, per name and dataset,
        one line (name ``"<name> · <dataset>"``), or for a band three traces: the minimum
        (``meta["band"] == "min"``), the maximum filled down to it (``"max"``) and the mean
        line (``"mean"``, named ``"<name> (N seeds) · <dataset>"``).

    Raises:
        UnlearnLensError: the runs of a band prune different shares per step.
    """
    go = _go()
    from plotly.subplots import make_subplots

    groups = run_groups(runs)
    combined = any(s.n_attn > 0 for group in groups.values() for run in group for s in run.history)
    k = next(iter(groups.values()))[0].base.forget.k
    metrics = (("top1", "top-1 accuracy"), ("topk", f"top-{k} accuracy"), ("loss", "loss (nats/token)"))
    fig = make_subplots(rows=1, cols=3, subplot_titles=[m[1] for m in metrics], horizontal_spacing=0.08)
    for i, (name, group) in enumerate(groups.items()):
        xs, label = _pruned_fraction(group[0], combined), group_label(name, group)
        if any(_pruned_fraction(r, combined) != xs for r in group):
            raise UnlearnLensError(f"the runs of {name!r} prune different shares per step: no band can join them")
        steps, seeds = [s.step for s in group[0].history], [r.seed for r in group]
        for dataset, colour in _DATASET_COLOURS.items():  # forget, retain
            for col, (metric, metric_label) in enumerate(metrics, start=1):
                ys, lo, hi = band([[getattr(getattr(s, dataset), metric) for s in r.history] for r in group])
                what = ""
                if len(group) > 1:  # the band: the minimum, then the maximum filled down to it
                    what = f"mean of seeds {', '.join(map(str, seeds))}<br>"
                    for bound, values in (("min", lo), ("max", hi)):
                        fig.add_trace(
                            go.Scatter(
                                x=xs,
                                y=values,
                                mode="lines",
                                name=f"{label} · {dataset} {bound}",
                                legendgroup=f"{name}-{dataset}",
                                showlegend=False,
                                line={"width": 0, "color": colour},
                                fill="tonexty" if bound == "max" else None,
                                fillcolor=_rgba(colour, 0.18),
                                hoverinfo="skip",
                                meta={"band": bound, "seeds": seeds},
                            ),
                            row=1,
                            col=col,
                        )
                fig.add_trace(
                    go.Scatter(
                        x=xs,
                        y=ys,
                        customdata=steps,
                        mode="lines+markers",
                        name=f"{label} · {dataset}",
                        legendgroup=f"{name}-{dataset}",
                        showlegend=col == 1,
                        line={"color": colour, "dash": _RUN_DASHES[i % len(_RUN_DASHES)]},
                        marker={"size": 6, "symbol": "circle" if i == 0 else "diamond"},
                        meta={"band": "mean", "seeds": seeds} if len(group) > 1 else None,
                        hovertemplate=(
                            f"{label}, {dataset}<br>step %{{customdata}}<br>pruned %{{x:.2%}}<br>"
                            f"{what}{metric_label} %{{y:.4f}}<extra></extra>"
                        ),
                    ),
                    row=1,
                    col=col,
                )
    x_label = "share of MLP + attention neurons pruned" if combined else "share of MLP neurons pruned"
    fig.update_xaxes(title_text=x_label, tickformat=".0%")
    for col, y_label in enumerate(("accuracy", "accuracy", "loss"), start=1):
        fig.update_yaxes(title_text=y_label, row=1, col=col)
    fig.update_layout(
        template=_TEMPLATE,
        title={"text": title or "Forget and retain performance while pruning"},
        height=420,
        legend={"orientation": "h", "y": -0.22},
    )
    return fig


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


@dataclass
class _Paths:
    """The runs under one name in :func:`separability_trajectory` (several: a baseline's seeds), and their drawing."""

    name: str
    group: list[PruneRun]
    colour: str
    metric: str
    metric_label: str
    level: float

    @property
    def several(self) -> bool:
        return len(self.group) > 1

    def traces(self, go: Any, r: PruneRun) -> list[Any]:
        """One run's traces: the shaded area, the step path, the dotted closing line and, if reached, the star."""
        xs, ys = r.relative_path(self.metric)
        headline = r.retain_at_forget(self.level, self.metric)
        if self.several:
            tag, seed = f"{self.name} seed {r.seed}", {"seed": r.seed}
        else:
            tag, seed = self.name, {}
        steps = [0] + [s.step for s in r.history[1:]]
        traces = [
            # The polygon path -> (0, 0) -> (1, 0) has exactly the trapezoid area of separability_area.
            go.Scatter(
                x=[*xs, 0.0, 1.0],
                y=[*ys, 0.0, 0.0],
                mode="lines",
                fill="toself",
                fillcolor=_rgba(self.colour, 0.15 / len(self.group)),
                line={"width": 0, "color": self.colour},
                legendgroup=self.name,
                hoverinfo="skip",
                showlegend=r is self.group[0],
                meta={"separability_area": r.separability_area(self.metric), **seed},
                name=self._area_name(r),
            ),
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers" if self.several else "lines+markers+text",
                text=[str(s) for s in steps],
                textposition="top right",
                textfont={"size": 9, "color": self.colour},
                name=f"{tag} steps",
                legendgroup=self.name,
                showlegend=False,
                line={"color": self.colour, "width": 1 if self.several else 2},
                marker={"size": 4 if self.several else 7, "color": self.colour},
                customdata=steps,
                hovertemplate=(
                    f"{tag} step %{{customdata}}<br>forget {self.metric_label} %{{x:.3f}} of unpruned<br>"
                    f"retain {self.metric_label} %{{y:.3f}} of unpruned<extra></extra>"
                ),
            ),
            go.Scatter(
                x=[xs[-1], 0.0],
                y=[ys[-1], 0.0],
                mode="lines",
                name=f"{tag} closure",
                legendgroup=self.name,
                showlegend=False,
                line={"color": self.colour, "dash": "dot", "width": 1},
                hoverinfo="skip",
            ),
        ]
        if headline is not None:
            point = f"retain {headline:.1%} at forget {self.level:.0%}"
            traces.append(
                go.Scatter(
                    x=[self.level],
                    y=[headline],
                    mode="markers",
                    name=f"{tag}: {point}",
                    legendgroup=self.name,
                    marker={
                        "symbol": "star",
                        "size": 11 if self.several else 15,
                        "color": self.colour,
                        "line": {"width": 1, "color": "black"},
                    },
                    meta={"retain_at_forget": headline, "level": self.level, **seed},
                    hovertemplate=f"{html.escape(tag)}: {point} (interpolated between steps)<extra></extra>",
                )
            )
        return traces

    def _area_name(self, r: PruneRun) -> str:
        """The legend entry of the shaded areas (shown on the first run of the name)."""
        if self.several:
            areas = [other.separability_area(self.metric) for other in self.group]
            return (
                f"{group_label(self.name, self.group)}: area {min(areas):.3f}–{max(areas):.3f} "
                "(each closed from its last step to (0, 0))"
            )
        area = r.separability_area(self.metric)
        return f"{self.name}: area {area:.3f} (closed from step {r.final.step} to (0, 0))"

    def annotation(self) -> str:
        """The name's headline(s) and area(s), for the annotation in the corner."""
        areas = [r.separability_area(self.metric) for r in self.group]
        if self.several:
            points = []
            for r in self.group:
                headline = r.retain_at_forget(self.level, self.metric)
                if headline is not None:
                    points.append(f"{headline:.1%}")
                else:
                    points.append(f"not reached (last step: {r.relative_path(self.metric)[0][-1]:.0%})")
            point_text = f"retain {self.metric_label} at forget {self.level:.0%}: {', '.join(points)}"
            area_text = f"area {spread_text(areas, '.3f')}, mean (min–max) of the seeds"
        else:
            (r,) = self.group
            headline = r.retain_at_forget(self.level, self.metric)
            if headline is not None:
                point_text = f"retain {self.metric_label} = {headline:.1%} at forget {self.level:.0%}"
            else:
                last = r.relative_path(self.metric)[0][-1]
                point_text = f"forget never reached {self.level:.0%} (last step: {last:.0%})"
            area_text = f"area {areas[0]:.3f}"
        return (
            f"<b>{html.escape(group_label(self.name, self.group))}</b>: {point_text}<br>"
            f"<span style='font-size:11px'>{area_text}, closed from the last step "
            "(depends on where the run stopped)</span>"
        )


def separability_trajectory(
    runs: RunsLike, metric: str = "top1", *, level: float = 0.5, title: str | None = None
) -> go.Figure:
    """Retain against forget accuracy, both relative to the unpruned model, with the headline point marked.

    Each run traces a path from (1, 1) (unpruned) through its steps. Where forget first
    falls to ``level`` (the path crosses the dashed vertical line) a star marks retain
    there: :meth:`~unlearn_lens.results.PruneRun.retain_at_forget`, the headline number,
    given in the legend and in an annotation ("not reached" when forget never got there).
    The path is closed by a dotted straight line from its last step to (0, 0), as in
    :func:`unlearn_lens.results.separability_area`, and the area under it is shaded; that
    area depends on where the run stopped, which the legend and annotation say. The
    diagonal is equal damage to both datasets, roughly what random pruning gives. Several
    runs under one name (the seeds of a random baseline) are each drawn thin and lightly
    shaded, under one legend entry ``"<name> (N seeds)"`` and one annotation.

    Args:
        runs: ``{name: PruneRun}``, with a list of runs for several seeds, or a single run
            (with every seed of its baseline).
        metric: ``"top1"`` or ``"topk"``.
        level: the forget level of the headline point (0.5: forget halved).
        title: figure title.

    Returns:
        A figure with a diagonal reference line and, per run, the shaded area (its ``meta``
        holds ``{"separability_area": value}``, and ``"seed"`` for a run of several seeds),
        the step path, the dotted closing segment to (0, 0) and, if forget reached ``level``,
        a star marker (``meta`` ``{"retain_at_forget": value, "level": level}``, and ``"seed"``).
        One annotation per name gives both numbers; a dashed vertical line marks ``x = level``.
    """
    go = _go()
    if metric not in ("top1", "topk"):
        raise UnlearnLensError(f"metric must be 'top1' or 'topk', got {metric!r}")
    groups = run_groups(runs)
    metric_label = "top-1" if metric == "top1" else f"top-{next(iter(groups.values()))[0].base.forget.k}"
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            name="equal damage (y = x)",
            line={"color": "grey", "dash": "dot", "width": 1},
            hoverinfo="skip",
        )
    )
    fig.add_vline(
        x=level,
        line={"color": "grey", "dash": "dash", "width": 1},
        annotation_text=f"forget {metric_label} = {level:.0%}",
        annotation_position="top left",
    )
    top = 1.05
    for i, (name, group) in enumerate(groups.items()):
        paths = _Paths(name, group, _RUN_COLOURS[i % len(_RUN_COLOURS)], metric, metric_label, level)
        for r in group:
            for trace in paths.traces(go, r):
                fig.add_trace(trace)
            xs, ys = r.relative_path(metric)
            top = max(top, *xs, *ys)
        fig.add_annotation(
            x=0.98,
            y=0.04 + 0.11 * i,
            xref="x domain",
            yref="y domain",
            xanchor="right",
            yanchor="bottom",
            showarrow=False,
            font={"color": paths.colour, "size": 13},
            bgcolor="rgba(255,255,255,0.8)",
            text=paths.annotation(),
        )
    fig.update_layout(
        template=_TEMPLATE,
        title={
            "text": title or f"Separability: retain vs forget {metric_label} (relative to unpruned)",
            "subtitle": {
                "text": f"star: retain where forget first falls to {level:.0%}; shaded: the path "
                "closed by a straight line from its last step to (0, 0)"
            },
        },
        xaxis={"title": {"text": f"forget {metric_label} / unpruned"}, "range": [0, top], "constrain": "domain"},
        yaxis={
            "title": {"text": f"retain {metric_label} / unpruned"},
            "range": [0, top],
            "scaleanchor": "x",
            "scaleratio": 1,
            "constrain": "domain",
        },
        height=600,
        legend={"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.14},
    )
    return fig


def pruned_per_layer(run: PruneRun, kind: str = "mlp", *, title: str | None = None) -> go.Figure:
    """Units pruned in each layer, stacked by the step that pruned them.

    Args:
        run: a pruning run.
        kind: ``"mlp"`` (``StepRecord.new_mlp``) or ``"attn"`` (``StepRecord.new_attn``).
        title: figure title.

    Returns:
        A figure with one bar trace per pruning step (``barmode="stack"``), x = layer.
    """
    go = _go()
    check_kind(kind)
    d = run.dims
    per_layer = d.d_mlp if kind == "mlp" else d.n_heads * d.d_head
    layers = list(range(d.n_layers))
    fig = go.Figure()
    n_steps = max(len(run.history) - 1, 1)
    colours = _step_colours(n_steps)
    for i, step in enumerate(run.history[1:]):
        counts = step.new_mlp if kind == "mlp" else step.new_attn
        fig.add_trace(
            go.Bar(
                x=layers,
                y=list(counts),
                name=f"step {step.step}",
                marker={"color": colours[i]},
                customdata=[c / per_layer for c in counts],
                hovertemplate=(
                    f"step {step.step}<br>layer %{{x}}: %{{y}} pruned (%{{customdata:.1%}} of layer)<extra></extra>"
                ),
            )
        )
    final_counts = run.final.mlp_counts if kind == "mlp" else run.final.attn_counts
    total, tallest, n_units = sum(final_counts), max(final_counts, default=0), per_layer * d.n_layers
    if not title:
        title = (
            f"{_KIND_TITLE[kind]} pruned per layer ({run.strategy} run: {total} of {n_units}, {total / n_units:.1%})"
        )
    fig.update_layout(
        template=_TEMPLATE,
        barmode="stack",
        title={"text": title},
        xaxis={"title": {"text": "layer"}, "dtick": 1 if d.n_layers <= 48 else None},
        yaxis={"title": {"text": f"{_KIND_NAME[kind]} pruned"}, "dtick": 1 if tallest <= 8 else None},
        height=400,
    )
    return fig


def _step_colours(n: int) -> list[str]:
    from plotly.colors import sample_colorscale

    if n == 1:
        return sample_colorscale("Viridis", [0.35])
    return sample_colorscale("Viridis", [0.1 + 0.8 * i / (n - 1) for i in range(n)])
