"""The self-contained HTML report of a pruning run.

:func:`write_report` writes ``report.html``, one file that opens offline (plotly.js is
embedded once, in the head), rendered from the autoescaped Jinja2 template
``report/templates/report.html.j2`` with the style sheets of ``report/static/``. It holds:

* a summary table (the unpruned model vs the final step of the run and of its random
  baseline) led by the headline number, retain top-1 where forget top-1 first falls to
  50 % (:meth:`PruneRun.retain_at_forget <unlearn_lens.results.PruneRun.retain_at_forget>`),
  with the separability area, its definition and its dependence on the stop beside it;
* the settings and data sources;
* every figure of :mod:`unlearn_lens.report.viz`, with an explanation, and the step tables;
* neuron cards (:mod:`unlearn_lens.report.cards`) of the top-scoring MLP neurons and the
  neuron explorer (:mod:`unlearn_lens.report.explorer`) of every unit, whose pruned and
  top-scoring units open a dashboard (:mod:`unlearn_lens.report.dashboard_view`), or notes
  saying why they are missing.

A run directory is read only by ``PruneRun.load``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from unlearn_lens._io import check_output_dir, write_text
from unlearn_lens.data import TokenSet
from unlearn_lens.errors import SourceCheckError, UnlearnLensError
from unlearn_lens.report.bands import group_label, run_groups
from unlearn_lens.report.tables import Cell, pct, settings, steps_table, summary_table_html
from unlearn_lens.report.templating import fragment, render, static_text
from unlearn_lens.results import PruneRun
from unlearn_lens.scoring import RATIO_METHODS, Scores, top_units

__all__ = ["HEADLINE_LEVEL", "REPORT_NAME", "TEMPLATE_NAME", "write_report"]

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
TEMPLATE_NAME = "report.html.j2"
HEADLINE_LEVEL = 0.5
"""Forget level of the headline: retain top-1 where relative forget top-1 first falls to it."""


@dataclass
class _Section:
    anchor: str
    heading: str
    explain: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[Markup] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    cards: list[Markup] = field(default_factory=list)
    explorer: Markup | None = None


# --- figures ----------------------------------------------------------------------------------------------------

_EXPLAIN = {
    "effects": "Next-token accuracy and loss on held-out forget and retain tokens after each pruning step; x is the "
    "share of units pruned so far. Selective pruning should make forget performance fall much faster "
    "than retain performance; the random run (same number of units per layer) is the control.",
    "separability": "Each point is a pruning step: forget top-1 (x) and retain top-1 (y), both relative to the "
    "unpruned model, starting at (1, 1). The star on a path is the headline number: retain top-1 "
    f"where forget top-1 first falls to {pct(HEADLINE_LEVEL)} (the dashed line), interpolated "
    "between steps. The shaded region is the path closed by a straight (dotted) line from its last "
    "step to (0, 0): the separability area, about 0.5 when both fall together (the dotted diagonal) "
    "and approaching 1 when forget collapses while retain holds. Because of that closing line the "
    "area depends on where the run stopped.",
    "map_mlp": "Score of every MLP neuron, sorted within each layer (highest first). Red: more important for "
    "forget than retain; blue: the reverse. Black ticks mark the neurons pruned by the end of the run; "
    "steps after the first chose from scores re-collected on the pruned model, so not every tick sits "
    "at the left edge.",
    "map_attn": "The same for attention neurons (each head's d_head outputs, flattened as head × d_head + d).",
    "heads": "Left: the score of each whole head (the mean or median of its neurons' scores). Right: the share of "
    "each head's neurons that was pruned.",
    "dist": "Spread of the scores in each layer: where the forget-specific outliers live.",
    "per_layer": "How many units each step took from each layer (selective run). The random baseline takes the "
    "same counts per layer, so this also describes it.",
}


def _score_note(scores: Scores, which: str, kind: str) -> str:
    method = scores.scoring_of(kind)
    if method in RATIO_METHODS:
        scale = (
            f"Colours and values are log10 of the '{method}' score ratio (0 = equally important for both "
            "datasets; scores below 1e-6 are drawn at −6)."
        )
    else:
        scale = f"The '{method}' score is not a ratio; values are shown as they are."
    return f"Scores: {which}. {scale}"


def _figure(fig: Any, anchor: str) -> Markup:
    """A figure as a plotly div, without plotly.js (which the page head holds once)."""
    return Markup(
        fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"fig-{anchor}",
            config={"displaylogo": False, "responsive": True},
        )
    )


def _figure_sections(runs: dict[str, list[PruneRun]], main: PruneRun) -> list[_Section]:
    from unlearn_lens.report import viz

    effects = _Section(
        "effects",
        "Forget and retain performance",
        [_EXPLAIN["effects"]],
        figures=[_figure(viz.pruning_effects(runs), "effects")],
        steps=[steps_table(f"{n} seed {r.seed}" if len(g) > 1 else n, r) for n, g in runs.items() for r in g],
    )
    sep = _Section("separability", "Separability", [_EXPLAIN["separability"]])
    try:
        sep.figures.append(_figure(viz.separability_trajectory(runs, level=HEADLINE_LEVEL), "separability"))
    except UnlearnLensError as exc:
        sep.notes.append(f"No separability plot: {exc}")
    for name, group in runs.items():
        if len(group) > 1:
            seeds = ", ".join(str(r.seed) for r in group)
            effects.explain.append(
                f"The {name} run is drawn over {len(group)} seeds ({seeds}): the shaded band "
                "spans their minimum and maximum at each step, the line is their mean."
            )
            sep.explain.append(
                f"Each of the {len(group)} seeds of the {name} run ({seeds}) is drawn as its own "
                "thin, lightly shaded path, with a star where it reaches the dashed line."
            )
    sections = [effects, sep]
    scores, which = main.initial_scores, "the unpruned model (step 1), the ranking the first step pruned by"
    if scores is None and main.scores is not None:
        scores, which = main.scores, "the last step, collected on the already pruned model"
    if scores is None:
        sections.append(
            _Section(
                "scores",
                "Unit scores",
                notes=[
                    "This run has no saved scores (random runs have none), so the specialisation maps and score "
                    "distributions are left out."
                ],
            )
        )
    else:
        sections += [
            _Section(
                "map-mlp",
                "Where the forget-specific MLP neurons are",
                [_EXPLAIN["map_mlp"], _score_note(scores, which, "mlp")],
                figures=[_figure(viz.specialisation_map(scores, main.masks, "mlp"), "map-mlp")],
            ),
            _Section(
                "map-attn",
                "Where the forget-specific attention neurons are",
                [_EXPLAIN["map_attn"], _score_note(scores, which, "attn")],
                figures=[_figure(viz.specialisation_map(scores, main.masks, "attn"), "map-attn")],
            ),
            _Section(
                "heads",
                "Attention heads",
                [_EXPLAIN["heads"]],
                figures=[_figure(viz.head_map(scores, main.masks, agg=main.config.head_agg), "heads")],
            ),
            _Section(
                "dist",
                "Score distributions",
                [_EXPLAIN["dist"]],
                figures=[
                    _figure(viz.score_distributions(scores, "mlp"), "dist-mlp"),
                    _figure(viz.score_distributions(scores, "attn"), "dist-attn"),
                ],
            ),
        ]
    per_layer = _Section(
        "per-layer",
        "Units pruned per layer",
        [_EXPLAIN["per_layer"]],
        figures=[_figure(viz.pruned_per_layer(main, "mlp"), "pl-mlp")],
    )
    if main.final.n_attn:
        per_layer.figures.append(_figure(viz.pruned_per_layer(main, "attn"), "pl-attn"))
    return [*sections, per_layer]


# --- neuron cards ---------------------------------------------------------------------------------------------


@dataclass
class _Inputs:
    """The model and texts of the neuron cards and the explorer, or a note saying why there are none."""

    model: Any = None
    forget: Any = None
    retain: Any = None
    note: str | None = None


def card_inputs(
    run: PruneRun,
    model: Any,
    forget_texts: Any,
    retain_texts: Any,
    load_model_from_results: bool,
    device: str | None,
    card_tokens: int,
    trust_sources: bool = False,
) -> _Inputs:
    """The model and texts for the neuron cards, or a note saying why there are none.

    Texts named in the run's data sources are read again lazily, only as far as
    ``card_tokens`` needs (in the run's order, shuffled alike if it was), and only after
    their tokens are found to be the run's own (see :func:`~unlearn_lens.pipeline.run_tokens`).

    Raises:
        SourceCheckError: the sources no longer give the run's tokens (or cannot be checked).
        UnlearnLensError: a model the run was not made with.
    """
    from unlearn_lens.models import load_model

    info = run.info
    if model is None and not load_model_from_results:
        return _Inputs(note=fragment("notes.html.j2", "no_model"))
    if model is None or isinstance(model, (str, os.PathLike)):
        name = model if model is not None else (info.get("model") or run.model)
        if not name:
            return _Inputs(note="The run names no model, so there are no neuron cards.")
        try:
            model = load_model(name, device=device)
        except UnlearnLensError as exc:
            return _Inputs(note=f"The model {name} is unavailable, so there are no neuron cards: {exc}")
    run.check_model(model)
    texts: dict[str, Any] = {"forget": forget_texts, "retain": retain_texts}
    problem = " (none given, none named in the run's data sources)"
    for key in ("forget", "retain"):
        if texts[key] is None and info.get(key):
            try:
                texts[key] = _source_tokens(run, model, key, card_tokens, trust_sources)
            except SourceCheckError:
                raise
            except UnlearnLensError as exc:
                logger.warning("report: cannot load the %s texts %r: %s", key, info[key], exc)
                if key == "forget":
                    problem = f": {exc}"
    if texts["forget"] is None:
        return _Inputs(note=f"The forget texts are unavailable, so there are no neuron cards{problem}.")
    return _Inputs(model, texts["forget"], texts["retain"])


def _source_tokens(run: PruneRun, model: Any, key: str, n_tokens: int, trust_sources: bool) -> TokenSet:
    """The first ``n_tokens`` tokens of a run's dataset, read again from its sources and checked."""
    from unlearn_lens.pipeline import run_tokens

    rest = n_tokens - run.config.collect_tokens - run.config.eval_tokens
    parts = run_tokens(run, model, key, [rest] if rest > 0 else [], trust_sources=trust_sources)
    return TokenSet.concat(parts).split(n_tokens)[0]


def _top_cards(run: PruneRun, inputs: _Inputs, scores: Scores, n_cards: int, tokens: int, n_contexts: int) -> list[str]:
    """The cards of the ``n_cards`` top-scoring MLP neurons, on the cards' model and texts.

    Raises:
        UnlearnLensError: the cards cannot be made (a dataset is unusable, say).
    """
    from unlearn_lens.report.cards import neuron_cards

    return neuron_cards(
        inputs.model,
        None,
        top_units(scores, n_cards, "mlp"),
        "mlp",
        forget_texts=inputs.forget,
        retain_texts=inputs.retain,
        n_contexts=n_contexts,
        max_tokens=tokens,
        seq_len=run.config.seq_len,
        batch_size=run.config.batch_size,
        scores=scores,
        masks=run.masks,
        include_css=False,
    )


def _cards_section(
    run: PruneRun, inputs: Callable[[], _Inputs], *, n_cards: int, card_tokens: int, n_contexts: int
) -> _Section:
    """The neuron cards of the top-scoring MLP neurons, or a note saying why there are none.

    ``inputs`` gives the model and texts; it is called only when cards are to be made.
    """
    from unlearn_lens.models import ModelDims

    section = _Section("cards", "Neuron cards")
    if n_cards <= 0:
        section.notes.append("Neuron cards were switched off (n_cards=0 or --no-cards).")
        return section
    scores = run.initial_scores if run.initial_scores is not None else run.scores
    if scores is None:
        section.notes.append("No scores are saved, so there is no ranking of units to pick neuron cards from.")
        return section
    given = inputs()
    if given.note is not None:
        section.notes.append(given.note)
        return section
    try:
        dims = ModelDims.of(given.model)
        if dims != run.dims:
            section.notes.append(
                f"The model has units {dims.to_dict()}, but the run was made for {run.dims.to_dict()}; no neuron cards."
            )
            return section
        cards = _top_cards(run, given, scores, n_cards, card_tokens, n_contexts)
    except UnlearnLensError as exc:
        section.notes.append(f"Neuron cards could not be made: {exc}")
        return section
    section.heading = "Neuron cards: the most forget-specific MLP neurons"
    section.explain.append(
        f"The {len(cards)} MLP neurons with the highest score on the unpruned model. Statistics are over up to "
        f"{card_tokens:,} tokens of each dataset, read on the unpruned model (BOS excluded); the ratio column "
        "divides forget by retain. Each context shows the tokens before a top-activating token (outlined) and a "
        "few after, coloured by the neuron's activation (red positive, blue negative). ↵ marks a newline."
    )
    section.cards = [Markup(card) for card in cards]
    return section


def _dashboards(
    run: PruneRun, inputs: _Inputs, tokens: int, request: tuple[int, tuple[str, ...], int] | None, section: _Section
) -> dict[str, Any] | None:
    """The unit dashboards the explorer opens (:mod:`unlearn_lens.report.dashboard_view`), or None with a note."""
    from unlearn_lens.report.dashboard_view import explorer_dashboards

    if request is None:
        section.notes.append("Unit dashboards were switched off (dashboards=False): rows open the unit's card.")
        return None
    top, named, light_budget = request
    try:
        t0 = time.time()
        found = explorer_dashboards(
            run,
            inputs.model,
            inputs.forget,
            inputs.retain,
            top=top,
            named=named,
            max_tokens=tokens,
            light_budget=light_budget,
        )
    except UnlearnLensError as exc:
        section.notes.append(f"The unit dashboards could not be made: {exc}")
        return None
    n_light = sum(1 for u in found["units"].values() if u["light"])
    n_full = len(found["units"]) - n_light
    logger.info("unit dashboards: %d full and %d light in %.1f s", n_full, n_light, time.time() - t0)
    section.explain.append(
        f"{n_full:,} units have a dashboard: every pruned unit, the {top:,} highest scores"
        + (f", and {', '.join(named)}" if named else "")
        + ". A dashboard shows the unit's activations on forget and on retain as two histograms on the same bins "
        "(counts or density, log scale available) with the share of tokens where it fires (x > 0) and where it is "
        "exactly 0; its top, bottom and quantile-band contexts (hover a token for its activation, and on a top "
        "context for the change of log p(next token) when the unit alone is ablated with the run's ablation); its "
        "direct logit effect (the output row through the final norm's weight and the unembedding, the per-token "
        "scale of the norm left out); and its layer's scores with the unit marked. "
        + (
            f"The next {n_light:,} units by score open their card with a light dashboard: the histograms, the logit "
            f"effect and the layer's scores, without further contexts or the ablation effect (up to "
            f"{light_budget / 1e6:g} MB of the page, dashboard_light_mb). "
            if n_light
            else ""
        )
        + "Other rows open the unit's card; `unlearn-lens serve` computes any unit's full dashboard on demand."
    )
    return found


def _explorer_section(
    run: PruneRun, inputs: _Inputs | None, tokens: int, dashboards: tuple[int, tuple[str, ...], int] | None = None
) -> _Section:
    """The neuron explorer of every unit (:mod:`unlearn_lens.report.explorer`), or a note saying why it is missing.

    ``dashboards``: ``(top, named units, light budget in bytes)`` of the unit dashboards the explorer opens, or
    None for none.
    """
    from unlearn_lens.report.explorer import explorer_data, explorer_html

    section = _Section("explorer", "Neuron explorer")
    if inputs is None:
        section.notes.append("The neuron explorer was switched off (explorer=False).")
        return section
    if inputs.note is not None:
        section.notes.append(inputs.note.replace("there are no neuron cards", "the neuron explorer is left out"))
        return section
    try:
        t0 = time.time()
        data = explorer_data(run, inputs.model, inputs.forget, inputs.retain, max_tokens=tokens)
    except UnlearnLensError as exc:
        section.notes.append(f"The neuron explorer could not be made: {exc}")
        return section
    logger.info("neuron explorer: %d units in %.1f s", len(data["step"]), time.time() - t0)
    found = _dashboards(run, inputs, tokens, dashboards, section)
    section.explorer = Markup(explorer_html(data, include_css=False, dashboards=found))
    d = run.dims
    section.explain.insert(
        0,
        f"Every unit of the model: {d.n_mlp:,} MLP neurons and {d.n_attn:,} attention neurons. The score is the "
        f"run's, from {data['score_from'] or 'nowhere (no scores saved)'}; the statistics are over up to {tokens:,} "
        "tokens of each dataset on the unpruned model (BOS excluded), and the ratio divides forget mean |x| by "
        "retain mean |x|; “pruned” is the step that pruned the unit. Click a column to sort; search by words such "
        "as L2 mlp 17, L1.H3.D5, attn H3, pruned, kept, step2, score>5 or ratio<0.5 (all must match); click a row "
        "(or press Enter on it) for the unit's top-activating contexts on each dataset, coloured as in the cards.",
    )
    if not data["step_known"]:
        section.notes.append(
            "This run directory does not record at which step each unit was pruned (it was "
            "written before pruned_step.safetensors existed): pruned units show “?”."
        )
    return section


def _checks_section(checks: Any) -> _Section:
    """Relearning and membership checks (:mod:`unlearn_lens.checks.suite`), or how to add them."""
    section = _Section("checks", "Checks beyond the paper: relearning, membership, overlap")
    if checks is None:
        section.notes.append(fragment("notes.html.j2", "no_checks"))
        return section
    parts = checks.report_parts()
    section.explain, section.notes = parts["explain"], parts["notes"]
    section.figures = [_figure(fig, f"checks-{i}") for i, fig in enumerate(parts["figures"])]
    section.steps = [{**t, "rows": [[Cell(c) for c in row] for row in t["rows"]]} for t in parts["tables"]]
    return section


# --- the page -------------------------------------------------------------------------------------------------


def _render(**context: Any) -> str:
    from plotly.offline import get_plotlyjs

    from unlearn_lens.report.cards import card_css
    from unlearn_lens.report.dashboard_view import dashboard_css
    from unlearn_lens.report.explorer import explorer_css

    return render(
        TEMPLATE_NAME,
        plotlyjs=Markup(get_plotlyjs()),
        report_css=static_text("report.css"),
        card_css=card_css(),
        explorer_css=explorer_css(),
        dashboard_css=dashboard_css(),
        **context,
    )


def write_report(
    run: PruneRun | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    model: Any = None,
    forget_texts: Any = None,
    retain_texts: Any = None,
    n_cards: int = 4,
    load_model_from_results: bool = False,
    device: str | None = None,
    title: str | None = None,
    card_tokens: int = 20_000,
    n_contexts: int = 5,
    explorer: bool = True,
    explorer_tokens: int = 20_000,
    checks: Any = None,
    trust_sources: bool = False,
    dashboards: bool = True,
    dashboard_top: int = 200,
    dashboard_units: Sequence[str] = (),
    dashboard_light_mb: float = 8.0,
) -> Path:
    """Write ``report.html``, one offline file: summary, settings, every figure, neuron cards and the neuron explorer.

    Args:
        run: a :class:`PruneRun` (its ``baseline``, if any, is reported beside it), or a run
            directory written by :meth:`PruneRun.save`, read with :meth:`PruneRun.load`.
        out_dir: the directory to write ``report.html`` into (created if needed); required
            for a run in memory; default for a directory: that directory.
        model: the (unpruned) model for the neuron cards, or a name or directory to load it
            from (as :func:`unlearn_lens.load_model`; if that fails the report says so).
        forget_texts: forget dataset for the cards (default: reloaded from ``run.info``).
        retain_texts: retain dataset for the cards (default: reloaded from ``run.info``).
        n_cards: neuron cards of the top-scoring MLP neurons (0: none).
        load_model_from_results: without ``model``, load the model the run names
            (``run.info["model"]``, else ``run.model``) for the cards; if that fails the
            report says so instead of failing.
        device: device for a model loaded here.
        title: page title.
        card_tokens: tokens scanned per dataset for the cards.
        n_contexts: contexts per dataset in each card.
        explorer: add the neuron explorer: every unit in a searchable, sortable table with its
            top contexts (one more forward pass per dataset; it needs the model and texts as the cards do).
        explorer_tokens: tokens scanned per dataset for the explorer (and its dashboards).
        checks: relearning and membership checks (:class:`~unlearn_lens.checks.suite.RunChecks`);
            default for a run directory: its ``checks.json``, if any.
        trust_sources: read again, unchecked, the sources of a run that recorded no checksum
            of its tokens (run directories of unlearn_lens 0.2); see
            :func:`~unlearn_lens.pipeline.run_tokens`.
        dashboards: give the explorer's units of interest a dashboard
            (:mod:`unlearn_lens.report.dashboard_view`), opened from their row: one more
            streamed pass per dataset, and two forward passes per top context.
        dashboard_top: the units with the highest scores that get one (besides every pruned unit).
        dashboard_units: further units that get one (``"L2.mlp.17"``, ``"L1.attn.H3.D5"``).
        dashboard_light_mb: megabytes of the page the other units' light dashboards may take
            (statistics, histograms, logit effect and layer map, no examples: about 1 KB a unit),
            highest score first; 0 for none.

    Returns:
        The path of the report.

    Raises:
        UnlearnLensError: the run directory lacks a needed file or a file is corrupt, or a
            run in memory is given without ``out_dir``.
    """
    if isinstance(run, (str, os.PathLike)):
        from unlearn_lens.checks.suite import RunChecks

        run_dir = Path(run)
        run = PruneRun.load(run_dir)
        checks = checks if checks is not None else RunChecks.load(run_dir)
        out = Path(out_dir) if out_dir is not None else run_dir
    elif isinstance(run, PruneRun):
        if out_dir is None:
            raise UnlearnLensError("write_report needs out_dir (the run directory) for a run in memory")
        out = Path(out_dir)
    else:
        raise UnlearnLensError(f"run must be a PruneRun or a run directory, got {type(run).__name__}")
    check_output_dir(out, overwrite=True)  # fail before loading a model for the cards
    runs = run_groups(run)  # every seed of the random baseline
    model_label = run.info.get("model") or run.model or "model"
    meta = {
        "forget": run.info.get("forget", "?"),
        "retain": run.info.get("retain", "?"),
        "runs": [group_label(n, g) for n, g in runs.items()],
        "written": time.strftime("%Y-%m-%d %H:%M"),
        "run_dir": str(out),
    }
    sections = _figure_sections(runs, run) + [_checks_section(checks)]

    def resolve(tokens: int) -> _Inputs:
        return card_inputs(
            run, model, forget_texts, retain_texts, load_model_from_results, device, tokens, trust_sources
        )

    # With the explorer, the model and texts are resolved once, for the cards and the explorer.
    inputs = resolve(max(card_tokens, explorer_tokens)) if explorer else None
    sections.append(
        _cards_section(
            run,
            lambda: inputs if inputs is not None else resolve(card_tokens),
            n_cards=n_cards,
            card_tokens=card_tokens,
            n_contexts=n_contexts,
        )
    )
    if not 0 <= dashboard_light_mb < math.inf:
        raise UnlearnLensError(f"dashboard_light_mb must be 0 or more, got {dashboard_light_mb}")
    request = (dashboard_top, tuple(dashboard_units), round(dashboard_light_mb * 1e6)) if dashboards else None
    sections.append(_explorer_section(run, inputs, explorer_tokens, request))
    page = _render(
        title=title or f"Selective pruning report: {model_label}",
        meta=meta,
        version=run.version,
        summary_table=summary_table_html(runs, run, HEADLINE_LEVEL),
        settings=settings(run, runs),
        sections=sections,
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_NAME
    write_text(path, page)
    logger.info("report written to %s (%d figures)", path, sum(len(s.figures) for s in sections))
    return path
