"""A unit's dashboard in a notebook: :func:`dashboard` and the :class:`Dashboard` it returns.

``ul.report.dashboard(model, run, "L2.mlp.17")`` makes the dashboard of one unit of a run
(:mod:`unlearn_lens.report.dashboards`); it renders inline in Jupyter (``_repr_html_``: the
fragment of :func:`~unlearn_lens.report.dashboard_view.dashboards_html`, style, data and
script included), writes a page of its own that opens offline (:meth:`Dashboard.save`), and
shows the unit's activation on any text, unpruned beside pruned (:meth:`Dashboard.on_text`,
:func:`~unlearn_lens.report.live.text_activations`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markupsafe import Markup

from unlearn_lens._io import write_text
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.report.dashboard_view import dashboard_css, dashboards_html, page_data
from unlearn_lens.report.dashboards import DashboardConfig, unit_dashboards
from unlearn_lens.report.display import Unit, ramp_colour, token_text
from unlearn_lens.report.html import card_inputs
from unlearn_lens.report.live import text_activations
from unlearn_lens.report.templating import render
from unlearn_lens.results import PruneRun

__all__ = ["Dashboard", "TextActivations", "dashboard"]


@dataclass
class TextActivations:
    """One unit's activation on a text, unpruned and pruned (:meth:`Dashboard.on_text`); renders in a notebook.

    Attributes:
        unit: the unit.
        tokens: the text's tokens (BOS left out).
        acts: the unit's activation at each, on the unpruned model.
        acts_pruned: the same with the run's pruning hooks in place.
    """

    unit: Unit
    tokens: list[str]
    acts: list[float]
    acts_pruned: list[float]

    def _repr_html_(self) -> str:
        scale = max([abs(a) for a in self.acts + self.acts_pruned] + [0.0]) or 1.0
        rows = [
            {
                "name": name,
                "tokens": [
                    {"text": token_text(t), "colour": ramp_colour(a, scale), "value": f"{a:.4g}"}
                    for t, a in zip(self.tokens, acts)
                ],
            }
            for name, acts in (("unpruned", self.acts), ("pruned", self.acts_pruned))
        ]
        return render("on_text.html.j2", title=self.unit.title, rows=rows, css=dashboard_css())


class Dashboard:
    """The dashboard of one unit of a run, for a notebook: ``_repr_html_``, :meth:`save` and :meth:`on_text`.

    Attributes:
        record: the dashboard record (:data:`~unlearn_lens.report.dashboards.FIELDS`).
        unit: the unit.
        run: the run.
        model: the unpruned model.
    """

    def __init__(self, record: dict[str, Any], unit: Unit, run: PruneRun, model: Any):
        self.record, self.unit, self.run, self.model = record, unit, run, model

    def html(self, include_css: bool = True) -> str:
        """The dashboard as an HTML fragment (style, data and script included)."""
        return dashboards_html(page_data([self.record], self.run), include_css=include_css)

    def _repr_html_(self) -> str:
        return self.html()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the dashboard as a page of its own that opens offline; returns its path."""
        page = render("dashboard_page.html.j2", title=self.unit.title, body=Markup(self.html()))
        path = Path(path)
        write_text(path, page)
        return path

    def on_text(self, text: str) -> TextActivations:
        """The unit's activation at each token of ``text``, unpruned and with the run's pruning in place."""
        found = text_activations(self.model, self.run, self.unit, text)
        return TextActivations(self.unit, found["tokens"], found["acts"], found["acts_pruned"])

    def __repr__(self) -> str:
        return f"Dashboard({self.unit.name}, score {self.record['score']}, pruned {self.record['pruned']})"


def dashboard(
    model: Any,
    run: PruneRun,
    unit: str | Unit,
    forget_texts: Any = None,
    retain_texts: Any = None,
    *,
    config: DashboardConfig | None = None,
    trust_sources: bool = False,
) -> Dashboard:
    """The dashboard of one unit of a run, to show in a notebook.

    Args:
        model: the unpruned model the run was made on.
        run: the run (a :class:`PruneRun`, or its directory).
        unit: ``"L2.mlp.17"``, ``"L1.attn.H3.D5"`` (or ``"L2.N17"``, ``"L1.H3.D5"``), or a
            :class:`~unlearn_lens.report.display.Unit`.
        forget_texts: forget texts (default: the run's sources, read again and checked as the report reads them).
        retain_texts: retain texts (default likewise).
        config: what the dashboard holds (:class:`~unlearn_lens.report.dashboards.DashboardConfig`).
        trust_sources: as :func:`unlearn_lens.write_report`.

    Raises:
        UnlearnLensError: an unknown unit, a model the run was not made with, or no texts.
    """
    run = run if isinstance(run, PruneRun) else PruneRun.load(run)
    config = config or DashboardConfig()
    unit = unit if isinstance(unit, Unit) else Unit.parse(unit, run.dims)
    if forget_texts is None:
        tokens = config.max_tokens or 20_000
        inputs = card_inputs(run, model, None, retain_texts, True, None, tokens, trust_sources)
        if inputs.note is not None:
            raise UnlearnLensError(str(inputs.note).replace("there are no neuron cards", "there is no dashboard"))
        forget_texts, retain_texts = inputs.forget, inputs.retain
    (record,) = unit_dashboards(run, model, forget_texts, retain_texts, [unit], config)
    return Dashboard(record, unit, run, model)
