"""Looking at results: figures, tables, neuron cards, the explorer and the HTML report.

* :mod:`~unlearn_lens.report.viz`: plotly figures of a run (they take results, run no model);
* :mod:`~unlearn_lens.report.tables`: the summary, settings and step tables, in HTML and as text;
* :mod:`~unlearn_lens.report.bands`: the random baseline's seeds as a band;
* :mod:`~unlearn_lens.report.cards`: neuron cards (a unit's numbers and top contexts);
* :mod:`~unlearn_lens.report.explorer`: every unit of a run, searchable, in the browser;
* unit dashboards: :mod:`~unlearn_lens.report.dashboards` (one unit's activations, examples
  across its range, logit and ablation effects, as a record; streamed by
  :mod:`~unlearn_lens.report.unit_scan`, ablated by :mod:`~unlearn_lens.report.ablation_effect`),
  :mod:`~unlearn_lens.report.dashboard_view` (on a page), :mod:`~unlearn_lens.report.notebook`
  (:func:`dashboard`, in a notebook), :mod:`~unlearn_lens.report.export` and :mod:`~unlearn_lens.report.neuronpedia`
  (as JSON lines), :mod:`~unlearn_lens.report.live` and :mod:`~unlearn_lens.report.serve`
  (any text, unpruned beside pruned, in a notebook or served);
* :mod:`~unlearn_lens.report.display`: the rules the cards and the explorer share (unit
  labels, token texts, the colour ramp, the choice of distinct top contexts);
* :mod:`~unlearn_lens.report.templating`: templates, static files and JSON for the page;
* :mod:`~unlearn_lens.report.html`: :func:`write_report`, one self-contained ``report.html``.

The HTML lives in ``templates/`` (Jinja2, autoescaped), the JavaScript and CSS in
``static/``; Python hands the page its data as JSON.
"""

from __future__ import annotations

from unlearn_lens.report import cards, viz
from unlearn_lens.report.html import write_report
from unlearn_lens.report.notebook import dashboard

__all__ = ["cards", "dashboard", "viz", "write_report"]
