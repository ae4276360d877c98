"""Figures of a selective-pruning run, and HTML cards of single neurons.

Every figure function takes results (:class:`~unlearn_lens.scoring.Scores`,
:class:`~unlearn_lens.masks.Masks`, :class:`~unlearn_lens.pipeline.PruneRun`) and
returns a ``plotly.graph_objects.Figure``; nothing is shown or written here.

* :func:`specialisation_map`: every unit's score, layers by units sorted within
  each layer, with the pruned units marked;
* :func:`head_map`: whole-head scores and the share of each head that was pruned;
* :func:`score_distributions`: the spread of scores in each layer;
* :func:`pruning_effects`: forget and retain accuracy and loss against the share
  of units pruned, step by step, for several runs (selective vs random);
* :func:`separability_trajectory`: retain against forget accuracy relative to the
  unpruned model, with the shaded separability area;
* :func:`pruned_per_layer`: how many units each step took from each layer;
* :func:`neuron_card` / :func:`neuron_cards`: an HTML snippet per unit with its
  statistics on each dataset and its most strongly activating contexts.

Scores of the ratio methods (``abs freq rms std sqrt``) are forget importance over
retain importance, shown as log10 (0 = equally important for both; scores below
1e-6, e.g. units silent on the forget set, are drawn at -6). Scores of ``mean``
(|mean_forget - mean_retain|) and ``rand`` (random control) are not ratios and are
shown as they are, with axis labels that say so.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float

from unlearn_lens.data import TokenSet
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import attached, attn_hook_name, mlp_hook_name, model_device, model_dims
from unlearn_lens.scoring import Scores, head_scores
from unlearn_lens.stats import ActivationStats, as_token_set

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from unlearn_lens.masks import Masks
    from unlearn_lens.pipeline import PruneRun

__all__ = [
    "CARD_CSS",
    "RATIO_METHODS",
    "head_map",
    "neuron_card",
    "neuron_cards",
    "pruned_per_layer",
    "pruning_effects",
    "score_distributions",
    "score_values",
    "separability_trajectory",
    "specialisation_map",
    "unit_activations",
]

logger = logging.getLogger(__name__)

RATIO_METHODS = ("abs", "freq", "rms", "std", "sqrt")
"""Scoring methods whose score is a forget/retain importance ratio (plotted as log10)."""

LOG10_FLOOR = -6.0
"""Ratio scores are clipped at 10**LOG10_FLOOR before taking log10."""

_IMPORTANCE_NAME = {"abs": "mean |x|", "freq": "P(x>0)", "rms": "RMS", "std": "std", "sqrt": "mean √|x|"}
_KIND_NAME = {"mlp": "MLP neurons", "attn": "attention neurons"}
_KIND_TITLE = {"mlp": "MLP neurons", "attn": "Attention neurons"}
_DATASET_COLOURS = {"forget": "#c0392b", "retain": "#2471a3"}
_RUN_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")
_RUN_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
_TEMPLATE = "plotly_white"

Dataset = Sequence[str] | TokenSet


def _go() -> Any:
    import plotly.graph_objects as go

    return go


def _check_kind(kind: str) -> None:
    if kind not in _KIND_NAME:
        raise UnlearnLensError(f"kind must be 'mlp' or 'attn', got {kind!r}")


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
    _check_kind(kind)
    raw = scores.mlp if kind == "mlp" else scores.attn.reshape(scores.attn.shape[0], -1)
    raw = raw.detach().to("cpu", torch.float64)
    method = scores.method
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
    raw = head_scores(scores.attn.detach().to("cpu", torch.float64), agg)
    if scores.method in RATIO_METHODS:
        return (raw.nan_to_num(nan=0.0).clamp(min=10.0**LOG10_FLOOR).log10(),
                f"log10 head score ({agg} of its neurons' scores)", True)
    label = "random" if scores.method == "rand" else "|Δ mean|" if scores.method == "mean" else scores.method
    return raw, f"head score: {agg} of neuron scores ({label}, not a ratio)", False


def _colour_kwargs(values: torch.Tensor, is_log: bool) -> dict[str, Any]:
    if is_log:
        bound = float(values.abs().max()) if values.numel() else 1.0
        return {"colorscale": "RdBu_r", "zmid": 0.0, "zmin": -bound, "zmax": bound}
    return {"colorscale": "Viridis"}


def _mask_block(masks: Masks, kind: str) -> torch.Tensor:
    return (masks.mlp if kind == "mlp" else masks.attn.reshape(masks.attn.shape[0], -1)).detach().cpu().bool()


def specialisation_map(scores: Scores, masks: Masks | None = None, kind: str = "mlp", *, title: str | None = None) -> go.Figure:
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
    fig.add_trace(go.Heatmap(
        z=_numpy(z), x=list(range(n_units)), y=list(range(n_layers)), customdata=order.numpy(),
        colorbar={"title": {"text": _short_label(scores.method), "side": "right"}}, name="score",
        hovertemplate=f"layer %{{y}}<br>rank %{{x}}<br>{unit_label} %{{customdata}}<br>value %{{z:.3g}}<extra></extra>",
        **_colour_kwargs(z, is_log),
    ))
    if masks is not None:
        block = _mask_block(masks, kind)
        if tuple(block.shape) != (n_layers, n_units):
            raise UnlearnLensError(f"masks {tuple(block.shape)} do not fit scores {(n_layers, n_units)} ({kind})")
        pruned_sorted = block.gather(1, order)
        layers, ranks = pruned_sorted.nonzero(as_tuple=True)
        fig.add_trace(go.Scatter(
            x=ranks.tolist(), y=layers.tolist(), mode="markers", customdata=order[layers, ranks].tolist(),
            name=f"pruned ({len(ranks)})",
            marker={"symbol": "line-ns-open", "size": 9, "color": "black", "line": {"width": 1.5}},
            hovertemplate=f"pruned<br>layer %{{y}}<br>rank %{{x}}<br>{unit_label} %{{customdata}}<extra></extra>",
        ))
    unit_name = "MLP neuron" if kind == "mlp" else "attention neuron"
    fig.update_layout(
        template=_TEMPLATE,
        title={"text": title or f"Specialisation map of {_KIND_NAME[kind]} (sorted within each layer)",
               "subtitle": {"text": f"colour: {label}"}},
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
    n_panels = 2 if masks is not None else 1
    titles = [f"head score ({agg})"] + (["share of head pruned"] if masks is not None else [])
    fig = make_subplots(rows=1, cols=n_panels, subplot_titles=titles, horizontal_spacing=0.2)
    small = n_layers * n_heads <= 400
    text_kw = {"texttemplate": "%{z:.2f}", "textfont": {"size": 10}} if small else {}
    fig.add_trace(go.Heatmap(
        z=_numpy(values), x=list(range(n_heads)), y=list(range(n_layers)), name="head score",
        colorbar={"title": {"text": _short_label(scores.method), "side": "right"}, "x": 0.42 if n_panels == 2 else 1.02, "thickness": 14,
                  "len": 0.9},
        hovertemplate="layer %{y}, head %{x}<br>value %{z:.3g}<extra></extra>", **_colour_kwargs(values, is_log),
        **text_kw,
    ), row=1, col=1)
    if masks is not None:
        share = masks.attn.detach().cpu().float().mean(-1)
        if tuple(share.shape) != (n_layers, n_heads):
            raise UnlearnLensError(f"masks {tuple(masks.attn.shape)} do not fit scores {tuple(scores.attn.shape)}")
        fig.add_trace(go.Heatmap(
            z=_numpy(share), x=list(range(n_heads)), y=list(range(n_layers)), name="share pruned",
            zmin=0.0, zmax=1.0, colorscale="Greys", colorbar={"title": {"text": "share pruned", "side": "right"},
                                                              "x": 1.02, "len": 0.9, "tickformat": ".0%"},
            hovertemplate="layer %{y}, head %{x}<br>pruned %{z:.1%}<extra></extra>",
            **({"texttemplate": "%{z:.0%}", "textfont": {"size": 10}} if small else {}),
        ), row=1, col=2)
    for col in range(1, n_panels + 1):
        fig.update_xaxes(title_text="head", dtick=1 if n_heads <= 32 else None, row=1, col=col)
        fig.update_yaxes(title_text="layer", autorange="reversed", dtick=1 if n_layers <= 32 else None, row=1, col=col)
    fig.update_layout(template=_TEMPLATE, title={"text": title or "Attention heads", "subtitle": {"text": label}},
                      height=max(360, 180 + 30 * n_layers), margin={"t": 110})
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
        fig.add_trace(go.Box(
            y=_numpy(values[layer]), name=f"layer {layer}", boxpoints="outliers", marker={"size": 3, "color": "#2471a3"},
            line={"width": 1, "color": "#2471a3"}, fillcolor="rgba(36,113,163,0.25)", showlegend=False,
        ))
    if is_log:
        fig.add_hline(y=0.0, line={"dash": "dot", "color": "grey"}, annotation_text="equal importance",
                      annotation_position="top left")
    fig.update_layout(
        template=_TEMPLATE,
        title={"text": title or f"Score distribution of {_KIND_NAME[kind]} per layer ('{scores.method}')"},
        xaxis={"title": {"text": "layer"}}, yaxis={"title": {"text": label}}, height=420,
    )
    return fig


def _as_runs(runs: Mapping[str, PruneRun] | PruneRun) -> dict[str, PruneRun]:
    if isinstance(runs, Mapping):
        if not runs:
            raise UnlearnLensError("no runs to plot")
        return dict(runs)
    return {getattr(runs, "kind", "run"): runs}


def _pruned_fraction(run: PruneRun, combined: bool) -> list[float]:
    d = run.dims
    n_mlp, n_attn = d.n_layers * d.d_mlp, d.n_layers * d.n_heads * d.d_head
    if combined:
        return [(s.n_mlp + s.n_attn) / (n_mlp + n_attn) for s in run.history]
    return [s.n_mlp / n_mlp for s in run.history]


def pruning_effects(runs: Mapping[str, PruneRun] | PruneRun, *, title: str | None = None) -> go.Figure:
    """Forget and retain top-1, top-k and loss against the share of units pruned.

    The x value of each step is ``n_mlp / (n_layers * d_mlp)``, or the share of all
    MLP and attention neurons together when any run pruned attention neurons.

    Args:
        runs: ``{name: PruneRun}`` (e.g. ``{"selective": run, "random": baseline}``),
            or a single run.
        title: figure title.

    Returns:
        A figure with three panels (top-1, top-k, loss) and, in each, one line per run
        and dataset (``3 * 2 * len(runs)`` traces).
    """
    go = _go()
    from plotly.subplots import make_subplots

    runs = _as_runs(runs)
    combined = any(s.n_attn > 0 for run in runs.values() for s in run.history)
    k = next(iter(runs.values())).base.forget.k
    metrics = (("top1", "top-1 accuracy"), ("topk", f"top-{k} accuracy"), ("loss", "loss (nats/token)"))
    fig = make_subplots(rows=1, cols=3, subplot_titles=[m[1] for m in metrics], horizontal_spacing=0.08)
    for i, (name, run) in enumerate(runs.items()):
        xs = _pruned_fraction(run, combined)
        steps = [s.step for s in run.history]
        for dataset in ("forget", "retain"):
            for col, (metric, metric_label) in enumerate(metrics, start=1):
                ys = [getattr(getattr(s, dataset), metric) for s in run.history]
                fig.add_trace(go.Scatter(
                    x=xs, y=ys, customdata=steps, mode="lines+markers", name=f"{name} · {dataset}",
                    legendgroup=f"{name}-{dataset}", showlegend=col == 1,
                    line={"color": _DATASET_COLOURS[dataset], "dash": _RUN_DASHES[i % len(_RUN_DASHES)]},
                    marker={"size": 6, "symbol": "circle" if i == 0 else "diamond"},
                    hovertemplate=(f"{name}, {dataset}<br>step %{{customdata}}<br>pruned %{{x:.2%}}<br>"
                                   f"{metric_label} %{{y:.4f}}<extra></extra>"),
                ), row=1, col=col)
    x_label = "share of MLP + attention neurons pruned" if combined else "share of MLP neurons pruned"
    fig.update_xaxes(title_text=x_label, tickformat=".0%")
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", row=1, col=2)
    fig.update_yaxes(title_text="loss", row=1, col=3)
    fig.update_layout(template=_TEMPLATE, title={"text": title or "Forget and retain performance while pruning"},
                      height=420, legend={"orientation": "h", "y": -0.22})
    return fig


def _relative_path(run: PruneRun, metric: str) -> tuple[list[float], list[float]]:
    base = run.base
    f0, r0 = getattr(base.forget, metric), getattr(base.retain, metric)
    if not f0 or not r0:
        raise UnlearnLensError(f"run {run.kind!r}: unpruned {metric} is zero; the relative curve is undefined")
    xs = [1.0] + [max(getattr(s.forget, metric) / f0, 0.0) for s in run.history[1:]]
    ys = [1.0] + [max(getattr(s.retain, metric) / r0, 0.0) for s in run.history[1:]]
    return xs, ys


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def separability_trajectory(
    runs: Mapping[str, PruneRun] | PruneRun, metric: str = "top1", *, title: str | None = None
) -> go.Figure:
    """Retain against forget accuracy, both relative to the unpruned model, with the separability area.

    Each run traces a path from (1, 1) (unpruned) through its steps; the path is closed
    at (0, 0) as in :func:`unlearn_lens.pipeline.separability_area`, and the area under
    it is shaded and printed in the legend and in an annotation. The diagonal is equal
    damage to both datasets, which is roughly what random pruning gives (area 0.5).

    Args:
        runs: ``{name: PruneRun}`` or a single run.
        metric: ``"top1"`` or ``"topk"``.
        title: figure title.

    Returns:
        A figure with a diagonal reference line and, per run, three traces: the shaded
        area (its ``meta`` holds ``{"separability_area": value}``), the step path, and
        the dotted closing segment to (0, 0). One annotation per run gives the area.
    """
    go = _go()
    if metric not in ("top1", "topk"):
        raise UnlearnLensError(f"metric must be 'top1' or 'topk', got {metric!r}")
    runs = _as_runs(runs)
    metric_label = "top-1" if metric == "top1" else f"top-{next(iter(runs.values())).base.forget.k}"
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="equal damage (y = x)",
                             line={"color": "grey", "dash": "dot", "width": 1}, hoverinfo="skip"))
    top = 1.05
    for i, (name, run) in enumerate(runs.items()):
        colour = _RUN_COLOURS[i % len(_RUN_COLOURS)]
        xs, ys = _relative_path(run, metric)
        area = run.separability_area(metric)
        top = max(top, *xs, *ys)
        # The polygon path -> (0, 0) -> (1, 0) has exactly the trapezoid area of separability_area.
        fig.add_trace(go.Scatter(
            x=[*xs, 0.0, 1.0], y=[*ys, 0.0, 0.0], mode="lines", fill="toself", fillcolor=_rgba(colour, 0.15),
            line={"width": 0, "color": colour}, name=f"{name}: area {area:.3f}", legendgroup=name,
            hoverinfo="skip", meta={"separability_area": area},
        ))
        steps = [0] + [s.step for s in run.history[1:]]
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers+text", text=[str(s) for s in steps], textposition="top right",
            textfont={"size": 9, "color": colour}, name=f"{name} steps", legendgroup=name, showlegend=False,
            line={"color": colour, "width": 2}, marker={"size": 7, "color": colour}, customdata=steps,
            hovertemplate=(f"{name} step %{{customdata}}<br>forget {metric_label} %{{x:.3f}} of unpruned<br>"
                           f"retain {metric_label} %{{y:.3f}} of unpruned<extra></extra>"),
        ))
        fig.add_trace(go.Scatter(
            x=[xs[-1], 0.0], y=[ys[-1], 0.0], mode="lines", name=f"{name} closure", legendgroup=name,
            showlegend=False, line={"color": colour, "dash": "dot", "width": 1}, hoverinfo="skip",
        ))
        fig.add_annotation(
            x=0.98, y=0.04 + 0.07 * i, xref="x domain", yref="y domain", xanchor="right", yanchor="bottom",
            showarrow=False,
            text=f"<b>{html.escape(name)}</b> separability area = {area:.3f}", font={"color": colour, "size": 13},
            bgcolor="rgba(255,255,255,0.8)",
        )
    fig.update_layout(
        template=_TEMPLATE,
        title={"text": title or f"Separability: retain vs forget {metric_label} (relative to unpruned)"},
        xaxis={"title": {"text": f"forget {metric_label} / unpruned"}, "range": [0, top], "constrain": "domain"},
        yaxis={"title": {"text": f"retain {metric_label} / unpruned"}, "range": [0, top], "scaleanchor": "x",
               "scaleratio": 1, "constrain": "domain"},
        height=600, legend={"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.14},
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
    _check_kind(kind)
    d = run.dims
    per_layer = d.d_mlp if kind == "mlp" else d.n_heads * d.d_head
    layers = list(range(d.n_layers))
    fig = go.Figure()
    n_steps = max(len(run.history) - 1, 1)
    colours = _step_colours(n_steps)
    for i, step in enumerate(run.history[1:]):
        counts = step.new_mlp if kind == "mlp" else step.new_attn
        fig.add_trace(go.Bar(
            x=layers, y=list(counts), name=f"step {step.step}", marker={"color": colours[i]},
            customdata=[c / per_layer for c in counts],
            hovertemplate=f"step {step.step}<br>layer %{{x}}: %{{y}} pruned (%{{customdata:.1%}} of layer)<extra></extra>",
        ))
    total = sum(run.final.mlp_counts if kind == "mlp" else run.final.attn_counts)
    tallest = max(run.final.mlp_counts if kind == "mlp" else run.final.attn_counts, default=0)
    fig.update_layout(
        template=_TEMPLATE, barmode="stack",
        title={"text": title or f"{_KIND_TITLE[kind]} pruned per layer ({run.kind} run: {total} of "
                                f"{per_layer * d.n_layers}, {total / (per_layer * d.n_layers):.1%})"},
        xaxis={"title": {"text": "layer"}, "dtick": 1 if d.n_layers <= 48 else None},
        yaxis={"title": {"text": f"{_KIND_NAME[kind]} pruned"}, "dtick": 1 if tallest <= 8 else None}, height=400,
    )
    return fig


def _step_colours(n: int) -> list[str]:
    from plotly.colors import sample_colorscale

    if n == 1:
        return sample_colorscale("Viridis", [0.35])
    return sample_colorscale("Viridis", [0.1 + 0.8 * i / (n - 1) for i in range(n)])


# --- neuron cards -------------------------------------------------------------------------------------------

CARD_CSS = """
.ul-card{border:1px solid #d5d8dc;border-radius:8px;padding:14px 16px;margin:14px 0;background:#fff}
.ul-card h3{margin:0 0 4px 0;font-size:1.05em}
.ul-card .ul-sub{color:#5d6d7e;font-size:.85em;margin-bottom:10px}
.ul-card .ul-sub code{font-size:1em}
.ul-card table.ul-stats{border-collapse:collapse;font-size:.85em;margin:6px 0 10px 0}
.ul-card table.ul-stats th,.ul-card table.ul-stats td{padding:3px 10px;border-bottom:1px solid #eaecee;text-align:right}
.ul-card table.ul-stats th:first-child,.ul-card table.ul-stats td:first-child{text-align:left}
.ul-card table.ul-stats thead th{border-bottom:2px solid #aab7b8}
.ul-card h4{margin:10px 0 4px 0;font-size:.9em}
.ul-card ol.ul-contexts{margin:0;padding-left:1.6em;font-size:.85em}
.ul-card ol.ul-contexts li{margin:3px 0}
.ul-card .ul-act{display:inline-block;min-width:4.5em;color:#5d6d7e;font-variant-numeric:tabular-nums}
.ul-card .ul-ctx{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;
  background:#fbfcfc;border-radius:3px;padding:1px 3px}
.ul-card .ul-tok{border-radius:2px}
.ul-card .ul-max{outline:2px solid #17202a;font-weight:bold}
.ul-card .ul-special{color:#95a5a6}
.ul-card .ul-none{color:#95a5a6;font-style:italic}
"""
"""Style sheet of the neuron cards (included once per page)."""

_STAT_ROWS = (("tokens", "n"), ("mean", "mean"), ("std", "std"), ("mean |x|", "abs_mean"), ("RMS", "rms"),
              ("freq (x > 0)", "freq"), ("max", "max"))


@dataclass
class _Unit:
    kind: str
    layer: int
    index: int  # flat index: MLP neuron, or head * d_head + d
    head: int | None = None
    d: int | None = None

    @property
    def hook(self) -> str:
        return mlp_hook_name(self.layer) if self.kind == "mlp" else attn_hook_name(self.layer)

    @property
    def label(self) -> str:
        if self.kind == "mlp":
            return f"MLP neuron L{self.layer}.N{self.index}"
        return f"attention neuron L{self.layer}.H{self.head}.D{self.d}"

    @property
    def address(self) -> str:
        if self.kind == "mlp":
            return f"{self.hook}[..., {self.index}]"
        return f"{self.hook}[..., {self.head}, {self.d}]"


def _resolve_unit(model: Any, kind: str, layer: int, unit: int | tuple[int, int]) -> _Unit:
    _check_kind(kind)
    dims = model_dims(model)
    if not 0 <= int(layer) < dims.n_layers:
        raise UnlearnLensError(f"layer {layer} is out of range: the model has {dims.n_layers} layers")
    if kind == "mlp":
        if isinstance(unit, tuple) or not 0 <= int(unit) < dims.d_mlp:
            raise UnlearnLensError(f"MLP unit {unit!r} is out of range: d_mlp is {dims.d_mlp}")
        return _Unit("mlp", int(layer), int(unit))
    if isinstance(unit, tuple):
        head, d = (int(u) for u in unit)
    else:
        head, d = divmod(int(unit), dims.d_head)
    if not (0 <= head < dims.n_heads and 0 <= d < dims.d_head):
        raise UnlearnLensError(
            f"attention unit {unit!r} is out of range: {dims.n_heads} heads of {dims.d_head} neurons"
        )
    return _Unit("attn", int(layer), head * dims.d_head + d, head, d)


@torch.no_grad()
def _capture(model: Any, tokens: TokenSet, units: Sequence[_Unit], batch_size: int) -> list[torch.Tensor]:
    """Activations ``[rows pos]`` (float32, CPU) of each unit over all of ``tokens``, in one pass."""
    found: list[list[torch.Tensor]] = [[] for _ in units]
    hooks = []
    by_hook: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        by_hook.setdefault(u.hook, []).append(i)
    for name, members in by_hook.items():
        def fn(activation: torch.Tensor, hook: Any, members: list[int] = members) -> None:
            for i in members:
                u = units[i]
                x = activation[..., u.index] if u.kind == "mlp" else activation[..., u.head, u.d]
                found[i].append(x.detach().to("cpu", torch.float32))

        hooks.append((name, fn))
    device = model_device(model)
    with attached(model, hooks):
        for batch in tokens.batches(batch_size, device):
            model(batch.tokens)
    return [torch.cat(parts, 0) for parts in found]


def unit_activations(
    model: Any,
    texts: Dataset,
    layer: int,
    unit: int | tuple[int, int],
    kind: str = "mlp",
    *,
    max_tokens: int | None = 20_000,
    seq_len: int | None = None,
    batch_size: int = 8,
) -> tuple[TokenSet, torch.Tensor]:
    """Activations of one unit on every token of a dataset.

    Args:
        model: a TransformerLens model.
        texts: texts or a :class:`TokenSet`.
        layer: the layer.
        unit: MLP neuron index; for ``kind="attn"`` a flat index ``head * d_head + d``
            or a ``(head, d)`` tuple.
        kind: ``"mlp"`` (``blocks.{layer}.mlp.hook_post``) or ``"attn"`` (``hook_z``).
        max_tokens: counted tokens to use at most.
        seq_len: row length (default: the model's context, at most 256).
        batch_size: rows per forward pass.

    Returns:
        ``(tokens, activations)``: the token rows used and ``[rows pos]`` activations
        (BOS and padding positions are included; ``tokens.valid`` tells them apart).
    """
    u = _resolve_unit(model, kind, layer, unit)
    tokens = as_token_set(model, texts, seq_len=seq_len, max_tokens=max_tokens)
    return tokens, _capture(model, tokens, [u], batch_size)[0]


def _stats_from_activations(acts: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    x = acts[valid].double()
    n = x.numel()
    if n == 0:
        return {name: math.nan for _, name in _STAT_ROWS} | {"n": 0}
    mean = float(x.mean())
    return {"n": n, "mean": mean, "std": float(x.std(unbiased=False)), "abs_mean": float(x.abs().mean()),
            "rms": float(x.pow(2).mean().sqrt()), "freq": float((x > 0).double().mean()), "max": float(x.max())}


def _stats_from_object(stats: ActivationStats, u: _Unit) -> dict[str, float]:
    block = stats.mlp if u.kind == "mlp" else stats.attn
    index = (u.layer, u.index) if u.kind == "mlp" else (u.layer, u.head, u.d)
    return {"n": int(block.count[index]), "mean": float(block.mean[index]), "std": float(block.std[index]),
            "abs_mean": float(block.abs_mean[index]), "rms": float(block.rms[index]),
            "freq": float(block.freq[index]), "max": float(block.max[index])}


def _fmt(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.4g}"


_VISIBLE = str.maketrans({"\n": "↵\n", "\t": "→", "\r": "␍"})


class _Decoder:
    """Token id -> display text, cached."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.special = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
        self.cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            text = self.tokenizer.decode([token]) if self.tokenizer is not None else f"<{token}>"
            self.cache[token] = text
        return self.cache[token]


def _top_positions(acts: torch.Tensor, valid: torch.Tensor, n: int, gap: int) -> list[tuple[int, int]]:
    """The ``n`` highest-activating valid positions, at most one per ``gap``-token stretch of a row."""
    flat = acts.masked_fill(~valid, -math.inf).reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)
    width = acts.shape[1]
    chosen: list[tuple[int, int]] = []
    for idx in order.tolist():
        if flat[idx] == -math.inf or len(chosen) >= n:
            break
        row, pos = divmod(idx, width)
        if any(r == row and abs(p - pos) <= gap for r, p in chosen):
            continue
        chosen.append((row, pos))
    return chosen


def _token_span(text: str, token: int, act: float, scale: float, is_max: bool, special: bool) -> str:
    a = max(-1.0, min(1.0, act / scale)) if scale > 0 else 0.0
    colour = f"rgba(231,76,60,{abs(a):.2f})" if a >= 0 else f"rgba(52,152,219,{abs(a):.2f})"
    classes = "ul-tok" + (" ul-max" if is_max else "") + (" ul-special" if special else "")
    body = html.escape(text.translate(_VISIBLE)) or "∅"
    return (f'<span class="{classes}" style="background:{colour}" data-token="{token}" '
            f'title="token {token}: {act:.4g}">{body}</span>')


def _render_contexts(
    tokens: TokenSet, acts: torch.Tensor, decode: _Decoder, n_contexts: int, before: int, after: int, scale: float
) -> str:
    chosen = _top_positions(acts, tokens.valid, n_contexts, gap=before)
    if not chosen:
        return '<p class="ul-none">no tokens</p>'
    items = []
    for row, pos in chosen:
        start, stop = max(1, pos - before), min(tokens.tokens.shape[1], pos + after + 1)
        spans = []
        for p in range(start, stop):
            if not bool(tokens.valid[row, p]):
                continue
            tok = int(tokens.tokens[row, p])
            spans.append(_token_span(decode(tok), tok, float(acts[row, p]), scale, p == pos, tok in decode.special))
        items.append(f'<li><span class="ul-act">{float(acts[row, pos]):.3g}</span>'
                     f'<span class="ul-ctx">{"".join(spans)}</span></li>')
    return f'<ol class="ul-contexts">{"".join(items)}</ol>'


def _datasets(texts: Any, forget_texts: Dataset | None, retain_texts: Dataset | None) -> dict[str, Dataset]:
    out: dict[str, Dataset] = {}
    if isinstance(texts, Mapping):
        out.update(texts)
    elif texts is not None:
        out["texts"] = texts
    if forget_texts is not None:
        out["forget"] = forget_texts
    if retain_texts is not None:
        out["retain"] = retain_texts
    if not out:
        raise UnlearnLensError("neuron cards need texts: a dataset, {'forget': ..., 'retain': ...}, or forget_texts=")
    return out


def neuron_cards(
    model: Any,
    texts: Dataset | Mapping[str, Dataset] | None,
    units: Sequence[tuple[int, int | tuple[int, int]]],
    kind: str = "mlp",
    *,
    forget_texts: Dataset | None = None,
    retain_texts: Dataset | None = None,
    n_contexts: int = 5,
    max_tokens: int | None = 20_000,
    seq_len: int | None = None,
    batch_size: int = 8,
    stats: Mapping[str, ActivationStats] | None = None,
    scores: Scores | None = None,
    masks: Masks | None = None,
    context: tuple[int, int] = (16, 4),
    include_css: bool = True,
) -> list[str]:
    """HTML cards for several units at once (one forward pass per dataset).

    See :func:`neuron_card` for the arguments; ``units`` is a list of ``(layer, unit)``.

    Returns:
        One HTML string per unit, in order.
    """
    if n_contexts < 0:
        raise UnlearnLensError(f"n_contexts must be non-negative, got {n_contexts}")
    resolved = [_resolve_unit(model, kind, layer, unit) for layer, unit in units]
    datasets = _datasets(texts, forget_texts, retain_texts)
    if stats is not None:
        unknown = set(stats) - set(datasets)
        if unknown:
            raise UnlearnLensError(f"stats given for {sorted(unknown)}, which are not among the datasets {sorted(datasets)}")
    decode = _Decoder(getattr(model, "tokenizer", None))
    captured: dict[str, tuple[TokenSet, list[torch.Tensor]]] = {}
    for name, data in datasets.items():
        tokens = as_token_set(model, data, seq_len=seq_len, max_tokens=max_tokens)
        captured[name] = (tokens, _capture(model, tokens, resolved, batch_size))
    before, after = context
    cards = []
    for i, u in enumerate(resolved):
        table = {name: (_stats_from_object(stats[name], u) if stats is not None and name in stats
                        else _stats_from_activations(acts[i], tokens.valid))
                 for name, (tokens, acts) in captured.items()}
        scale = max((float(acts[i][tokens.valid].abs().max()) if tokens.n_tokens else 0.0)
                    for tokens, acts in captured.values())
        head = [f"<h3>{html.escape(u.label)}</h3>", f'<div class="ul-sub"><code>{html.escape(u.address)}</code>']
        if scores is not None:
            s = scores.mlp[u.layer, u.index] if u.kind == "mlp" else scores.attn[u.layer, u.head, u.d]
            head.append(f" · score {float(s):.4g} ('{html.escape(scores.method)}')")
        if masks is not None:
            m = masks.mlp[u.layer, u.index] if u.kind == "mlp" else masks.attn[u.layer, u.head, u.d]
            head.append(" · <b>pruned</b>" if bool(m) else " · not pruned")
        source = ("statistics from the given ActivationStats" if stats is not None
                  else "statistics over the tokens scanned here (BOS and padding excluded)")
        head.append(f" · {source}</div>")
        names = list(captured)
        ratio_col = "forget" in table and "retain" in table
        header = "".join(f"<th>{html.escape(n)}</th>" for n in names) + ("<th>forget / retain</th>" if ratio_col else "")
        rows = []
        for label, key in _STAT_ROWS:
            cells = "".join(f"<td>{_fmt(table[n][key])}</td>" for n in names)
            if ratio_col:
                f, r = table["forget"][key], table["retain"][key]
                ratio = f / r if key not in ("n", "mean", "max") and r else None
                cells += f"<td>{_fmt(ratio) if ratio is not None else ''}</td>"
            rows.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
        stats_html = (f'<table class="ul-stats"><thead><tr><th>statistic</th>{header}</tr></thead>'
                      f'<tbody>{"".join(rows)}</tbody></table>')
        contexts = []
        for name, (tokens, acts) in captured.items():
            contexts.append(f"<h4>Top {n_contexts} contexts on {html.escape(name)}</h4>")
            contexts.append(_render_contexts(tokens, acts[i], decode, n_contexts, before, after, scale))
        style = f"<style>{CARD_CSS}</style>" if include_css else ""
        cards.append(f'{style}<div class="ul-card" data-layer="{u.layer}" data-unit="{u.index}" data-kind="{u.kind}">'
                     f'{"".join(head)}{stats_html}{"".join(contexts)}</div>')
    return cards


def neuron_card(
    model: Any,
    texts: Dataset | Mapping[str, Dataset] | None,
    layer: int,
    unit: int | tuple[int, int],
    kind: str = "mlp",
    *,
    forget_texts: Dataset | None = None,
    retain_texts: Dataset | None = None,
    n_contexts: int = 5,
    max_tokens: int | None = 20_000,
    seq_len: int | None = None,
    batch_size: int = 8,
    stats: Mapping[str, ActivationStats] | None = None,
    scores: Scores | None = None,
    masks: Masks | None = None,
    context: tuple[int, int] = (16, 4),
    include_css: bool = True,
) -> str:
    """An HTML card of one unit: its statistics per dataset and its top-activating contexts.

    Activations are read at ``blocks.{layer}.mlp.hook_post`` (``[batch pos d_mlp]``) or
    ``blocks.{layer}.attn.hook_z`` (``[batch pos head d_head]``) of ``model`` as it is
    (run it inside :func:`unlearn_lens.pruned` to see a pruned model). Tokens are
    coloured by activation: red positive, blue negative, scaled by the largest
    |activation| of the unit over all datasets; the top token of each context is outlined.

    Args:
        model: a TransformerLens model with a tokenizer.
        texts: one dataset (texts or a :class:`TokenSet`), or ``{"forget": ..., "retain": ...}``
            (any names), or None when ``forget_texts`` / ``retain_texts`` are given.
        layer: the layer.
        unit: MLP neuron index; for ``kind="attn"`` a flat index ``head * d_head + d`` or
            a ``(head, d)`` tuple.
        kind: ``"mlp"`` or ``"attn"``.
        forget_texts: the forget dataset (added as ``"forget"``).
        retain_texts: the retain dataset (added as ``"retain"``).
        n_contexts: top contexts shown per dataset.
        max_tokens: counted tokens scanned per dataset.
        seq_len: row length (default: the model's context, at most 256).
        batch_size: rows per forward pass.
        stats: ``{dataset name: ActivationStats}`` to take the statistics table from
            (e.g. a run's ``forget_stats``); by default they are computed over the
            scanned tokens (count, mean, population std, mean |x|, RMS, freq x > 0, max).
        scores: show the unit's score.
        masks: show whether the unit is pruned.
        context: tokens shown before and after the top token.
        include_css: start with a ``<style>`` block (leave out when the page has :data:`CARD_CSS`).

    Returns:
        The card as an HTML string (a ``div`` of class ``ul-card``; all text escaped).
    """
    return neuron_cards(
        model, texts, [(layer, unit)], kind, forget_texts=forget_texts, retain_texts=retain_texts,
        n_contexts=n_contexts, max_tokens=max_tokens, seq_len=seq_len, batch_size=batch_size, stats=stats,
        scores=scores, masks=masks, context=context, include_css=include_css,
    )[0]
