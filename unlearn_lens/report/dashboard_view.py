"""Unit dashboards on a page: their compact page data and the HTML fragment that draws them.

:func:`page_data` turns dashboard records (:mod:`unlearn_lens.report.dashboards`) into the
data the page's script (``static/dashboard.js``) draws from, compactly, so that the report
can hold hundreds: every token string once (as shown: :func:`~unlearn_lens.report.display.token_text`),
examples as indices into that table with activations in thousandths of the unit's largest
|activation|, histograms as their first edge, bin width and counts, and per layer one
specialisation map (the layer's scores as :func:`~unlearn_lens.report.viz.score_values`
draws them, sorted, with the pruned units marked) that every unit of the layer points into.

:func:`explorer_dashboards` makes the dashboards the report's explorer opens; the notebook
object is :mod:`unlearn_lens.report.notebook`'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from markupsafe import Markup

from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import UNIT_KINDS
from unlearn_lens.report.dashboards import DashboardConfig, choose_units, unit_dashboards
from unlearn_lens.report.display import Unit, ramp_colours, token_text, unit_templates
from unlearn_lens.report.explorer import LEVELS
from unlearn_lens.report.templating import render, script_json, static_text
from unlearn_lens.results import PruneRun

__all__ = [
    "LIGHT",
    "LIGHT_BUDGET",
    "PAGE_FORMAT",
    "dashboard_css",
    "dashboards_html",
    "display_rules",
    "explorer_dashboards",
    "explorer_row",
    "page_data",
    "unit_pages",
]

PAGE_FORMAT = 1  # version of the layout of page_data
LIGHT_BUDGET = 8_000_000
"""Bytes of page data the explorer's light dashboards may take in a report (about 1 KB a unit)."""
LIGHT_MIN_BYTES = 400  # a light dashboard takes at least this many bytes of page data
LIGHT = DashboardConfig(n_top=0, n_bottom=0, n_bands=0, per_band=0, sample=0)
"""What a light dashboard reads: the streamed pass's statistics and histograms, no examples."""
SCALE = 1000  # example activations are stored as integers: thousandths of the unit's largest |activation|
DELTA = 1e-5  # changes of log-probability are stored as integers, in units of DELTA nats


def dashboard_css() -> Markup:
    """The style sheet of the dashboards (``report/static/dashboard.css``), to include once per page."""
    return static_text("dashboard.css")


def display_rules() -> dict[str, Any]:
    """What the script follows and does not decide itself: the unit texts and the colour ramp (the explorer's)."""
    return {"units": {kind: unit_templates(kind) for kind in UNIT_KINDS}, "ramp": ramp_colours(LEVELS)}


class _Vocab:
    """Token strings as shown, each stored once; ``index(text)`` is its place in ``strings``.

    Tokens of contexts are shown as in running text, tokens of the logit tables on one line
    (:func:`~unlearn_lens.report.display.token_text`).
    """

    def __init__(self) -> None:
        self.strings: list[str] = []
        self.at: dict[str, int] = {}

    def index(self, text: str, one_line: bool = False) -> int:
        shown = token_text(text, one_line)
        if shown not in self.at:
            self.at[shown] = len(self.strings)
            self.strings.append(shown)
        return self.at[shown]


def _sig(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else float(f"{value:.{digits}g}")


def _scale(record: Mapping[str, Any]) -> float:
    """The unit's largest |activation| on the scanned tokens (1 where it is always 0)."""
    stats = [s for s in record["stats"].values() if s.get("tokens")]
    largest = max([max(abs(s["min"] or 0.0), abs(s["max"] or 0.0)) for s in stats], default=0.0)
    return largest if largest > 0 else 1.0


def _example(e: Mapping[str, Any], vocab: _Vocab, datasets: list[str], scale: float) -> list[Any]:
    """``[dataset, max_pos, tokens, acts (SCALE-ths of scale), delta_logprob (DELTA-s; top examples only)]``."""
    acts = [None if a is None else round(a / scale * SCALE) for a in e["acts"]]
    out = [datasets.index(e["dataset"]), e["max_pos"], [vocab.index(t) for t in e["tokens"]], acts]
    if "delta_logprob" in e:
        out.append([None if v is None else round(v / DELTA) for v in e["delta_logprob"]])
    return out


def _even(edges: Sequence[float]) -> dict[str, float]:
    """Equally spaced edges as their first edge and width."""
    return {"lo": edges[0], "w": (edges[-1] - edges[0]) / max(len(edges) - 1, 1)}


def _compact(record: Mapping[str, Any], vocab: _Vocab, datasets: list[str], maps: Mapping[str, Any]) -> dict:
    scale = _scale(record)
    hist = record["histogram"]
    logits = record["logits"]
    key = f"{record['kind']}.{record['layer']}"
    at = maps[key]["order"].index(record["index"]) if key in maps else None
    return {
        "kind": record["kind"],
        "layer": record["layer"],
        "index": record["index"],
        "head": record["head"],
        "d": record["d"],
        "score": record["score"],
        "method": record["score_method"],
        "rank": record["rank"],
        "rank_in_layer": record["rank_in_layer"],
        "pruned": record["pruned"],
        "step": record["pruned_step"],
        "stats": {
            name: {k: _sig(v) if isinstance(v, float) else v for k, v in s.items()}
            for name, s in record["stats"].items()
        },
        "scale": _sig(scale, 6),
        "hist": _even(hist["edges"]) | {"counts": [hist.get(name) for name in datasets]},
        "top": [_example(e, vocab, datasets, scale) for e in record["top"]],
        "bottom": [_example(e, vocab, datasets, scale) for e in record["bottom"]],
        "bands": [
            [b["range"], [_example(e, vocab, datasets, scale) for e in b["examples"]]] for b in record["quantiles"]
        ],
        "up": [[vocab.index(t, one_line=True), _sig(v)] for t, v in logits["promoted"]],
        "down": [[vocab.index(t, one_line=True), _sig(v)] for t, v in logits["suppressed"]],
        "logit_hist": _even(logits["histogram"]["edges"]) | {"counts": logits["histogram"]["counts"]},
        "effect": record["ablation_effect"],
        "light": not record["top"],
        "map": key if at is not None else None,
        "at": at,
    }


def layer_maps(run: PruneRun, records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per layer and kind of the records: the layer's scores sorted (highest first), and the pruned ones.

    Returns:
        ``{"mlp.2": {"values": [...], "order": [unit index of each value], "pruned": [positions], "label"}}``;
        empty without scores.
    """
    from unlearn_lens.report.viz import score_values

    scores = run.initial_scores if run.initial_scores is not None else run.scores
    if scores is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for kind in UNIT_KINDS:
        layers = sorted({r["layer"] for r in records if r["kind"] == kind})
        if not layers:
            continue
        values, label, _ = score_values(scores, kind)
        masks = (run.masks.mlp if kind == "mlp" else run.masks.attn).reshape(run.dims.n_layers, -1)
        for layer in layers:
            row = values[layer].nan_to_num(nan=-math.inf)
            order = sorted(range(row.numel()), key=lambda i: (-float(row[i]), i))
            out[f"{kind}.{layer}"] = {
                "values": [_sig(float(row[i]), 3) for i in order],
                "order": order,
                "pruned": [p for p, i in enumerate(order) if bool(masks[layer, i])],
                "label": label,
            }
    return out


def page_data(records: Sequence[Mapping[str, Any]], run: PruneRun, keys: Sequence[str] | None = None) -> dict[str, Any]:
    """The page data of some dashboard records (see the module docstring).

    Args:
        records: from :func:`~unlearn_lens.report.dashboards.unit_dashboards`.
        run: their run (its layer maps and unit counts).
        keys: the key of each record in ``units`` (default ``"0"``, ``"1"``, ...; the explorer
            uses its row index).

    Returns:
        ``{"format", "datasets", "vocab", "counts" ({kind: units per layer}), "n_layers", "scale", "delta",
        "norm" (how the final norm enters the logit effect), "maps", "units"}``.
    """
    keys = list(keys) if keys is not None else [str(i) for i in range(len(records))]
    if len(keys) != len(records):
        raise UnlearnLensError(f"{len(keys)} keys for {len(records)} dashboards")
    datasets = list(records[0]["stats"]) if records else ["forget"]
    vocab, maps = _Vocab(), layer_maps(run, records)
    units = {key: _compact(r, vocab, datasets, maps) for key, r in zip(keys, records)}
    for value in maps.values():
        del value["order"]
    dims = run.dims
    return {
        "format": PAGE_FORMAT,
        "datasets": datasets,
        "vocab": vocab.strings,
        "counts": {"mlp": dims.d_mlp, "attn": dims.n_heads * dims.d_head},
        "n_layers": dims.n_layers,
        "scale": SCALE,
        "delta": DELTA,
        "norm": records[0]["logits"]["norm"] if records else "",
        "maps": maps,
        "units": units,
    }


def dashboards_html(data: Mapping[str, Any], *, include_css: bool = True) -> str:
    """Dashboards as one HTML fragment that draws itself (``templates/dashboard.html.j2``, ``static/dashboard.js``).

    Args:
        data: from :func:`page_data`: every unit in it is drawn, in order.
        include_css: start with a ``style`` element (the explorer's and the dashboards' style sheets).
    """
    css = Markup(static_text("explorer.css") + "\n" + dashboard_css()) if include_css else None
    return render(
        "dashboard.html.j2",
        css=css,
        data=script_json(data),
        display=script_json(display_rules()),
        script=static_text("dashboard.js"),
    )


# --- in the neuron explorer -----------------------------------------------------------------------------------


def explorer_row(unit: Unit, dims: Any) -> int:
    """The unit's row in the neuron explorer (:func:`~unlearn_lens.report.explorer.unit_order`)."""
    if unit.kind == "mlp":
        return unit.layer * dims.d_mlp + unit.index
    return dims.n_mlp + unit.layer * dims.n_heads * dims.d_head + unit.index


def unit_pages(
    run: PruneRun,
    model: Any,
    forget_texts: Any,
    retain_texts: Any,
    units: Sequence[Unit],
    *,
    light: Sequence[Unit] = (),
    max_tokens: int | None = 20_000,
    n_contexts: int = 3,
) -> dict[str, Any]:
    """The dashboards of ``units`` (and the light ones of ``light``) as the neuron explorer opens them.

    They read the explorer's tokens and show its number of top contexts, chosen by the same
    rule, so a unit's dashboard opens on the contexts its row had.

    Returns:
        :func:`page_data`, keyed by explorer row.
    """
    config = DashboardConfig(n_top=n_contexts, n_bottom=n_contexts, max_tokens=max_tokens)
    records = unit_dashboards(run, model, forget_texts, retain_texts, units, config)
    if light:
        records += unit_dashboards(run, model, forget_texts, retain_texts, light, replace(LIGHT, max_tokens=max_tokens))
    return page_data(records, run, [str(explorer_row(u, run.dims)) for u in [*units, *light]])


def _light_units(run: PruneRun, held: Sequence[Unit], budget: int, scored: bool) -> list[Unit]:
    """The units besides ``held``, highest score first (if ``scored``), as many as ``budget`` bytes could hold."""
    every = choose_units(run, [f"top:{run.dims.n_mlp + run.dims.n_attn}", "all"] if scored else "all")
    taken = set(held)
    return [u for u in every if u not in taken][: budget // LIGHT_MIN_BYTES]


def _within(data: dict[str, Any], light: Sequence[str], budget: int) -> None:
    """Drop the light dashboards of ``data`` from the end (the lowest scores) until they take ``budget`` bytes."""
    sizes = [len(json.dumps(data["units"][key], separators=(",", ":"))) + len(key) + 4 for key in light]
    total, kept = 0, 0
    for size in sizes:
        if total + size > budget:
            break
        total, kept = total + size, kept + 1
    for key in light[kept:]:
        del data["units"][key]


def explorer_dashboards(
    run: PruneRun,
    model: Any,
    forget_texts: Any,
    retain_texts: Any,
    *,
    top: int = 200,
    named: Sequence[str] = (),
    max_tokens: int | None = 20_000,
    n_contexts: int = 3,
    light_budget: int = LIGHT_BUDGET,
) -> dict[str, Any]:
    """The dashboards of the neuron explorer, full and light.

    Full dashboards go to every pruned unit, the ``top`` highest scores, and the ``named``
    units. Every other unit, highest score first, gets a **light** one while they fit
    ``light_budget`` bytes of page data: the parts that cost nothing per unit once the
    streamed pass has run (its statistics, its activation histograms on forget and retain,
    its direct logit effect and its layer's map), without examples or the ablation effect,
    which need forward passes per unit. The explorer shows a light unit's card (its top
    contexts) with those panels; past the budget a unit keeps its card alone, and
    ``unlearn-lens serve`` computes any unit's full dashboard on demand.

    Returns:
        :func:`page_data` of both, keyed by explorer row; the light ones are marked ``"light": true``.
    """
    scored = run.initial_scores is not None or run.scores is not None
    spec = ["pruned", *([f"top:{top}"] if top > 0 and scored else []), *named]
    units = choose_units(run, spec)
    light = _light_units(run, units, light_budget, scored) if light_budget > 0 else []
    data = unit_pages(
        run, model, forget_texts, retain_texts, units, light=light, max_tokens=max_tokens, n_contexts=n_contexts
    )
    _within(data, [str(explorer_row(u, run.dims)) for u in light], light_budget)
    return data
