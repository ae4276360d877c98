"""The self-contained HTML report of a pruning run.

:func:`write_report` writes ``report.html`` into a run directory: one file that
opens offline in any browser (plotly.js is embedded once, in the page head), with

* the run's settings and a summary table (unpruned vs the final step of each run,
  e.g. selective vs random pruning, with the separability area);
* every figure of :mod:`unlearn_lens.viz`, each with a short explanation;
* neuron cards of the most forget-specific MLP neurons (highest initial score),
  when a model and texts are available; otherwise the report says why they are missing.

The runs come from memory (``runs=``, as ``unlearn-lens prune`` does) or are rebuilt
from the files :func:`unlearn_lens.cli.write_run` leaves in the directory
(``results.json``, ``masks.safetensors``, ``random_masks.safetensors``,
``initial_scores.safetensors``, ``scores.safetensors``, ``forget_stats.safetensors``,
``retain_stats.safetensors``, ``means.safetensors``); see :func:`load_runs`.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from unlearn_lens._io import write_text
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.masks import Masks
from unlearn_lens.pipeline import PruneRun
from unlearn_lens.scoring import Scores, load_scores
from unlearn_lens.stats import ActivationStats

__all__ = ["REPORT_NAME", "load_runs", "top_units", "write_report"]

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
_MASK_FILES = {"selective": "masks.safetensors", "random": "random_masks.safetensors"}


def _mask_file(name: str) -> str:
    return _MASK_FILES.get(name, f"{name}_masks.safetensors")


def _read_results(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UnlearnLensError(
            f"file {str(path)!r} does not exist (is {str(path.parent)!r} a run directory written by `unlearn-lens prune`?)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnlearnLensError(f"file {str(path)!r} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict) or not data["runs"]:
        raise UnlearnLensError(f"file {str(path)!r} has no \"runs\" entry (not a results file of `unlearn-lens prune`)")
    return data


def load_runs(run_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, PruneRun]]:
    """Rebuild the runs saved in a run directory.

    Reads ``results.json`` (``{"runs": {name: PruneRun.to_dict()}, ...}``) and each run's
    masks (``masks.safetensors`` for ``selective``, ``random_masks.safetensors`` for
    ``random``, ``<name>_masks.safetensors`` otherwise). The first selective run also gets
    the scores, statistics and means found beside them (each optional).

    Args:
        run_dir: the directory.

    Returns:
        ``(results, runs)``: the parsed ``results.json`` and ``{name: PruneRun}``.

    Raises:
        UnlearnLensError: a missing or corrupt file, named in the message.
    """
    run_dir = Path(run_dir)
    results_path = run_dir / "results.json"
    results = _read_results(results_path)
    runs: dict[str, PruneRun] = {}
    for name, data in results["runs"].items():
        try:
            run = PruneRun.from_dict(data)
        except UnlearnLensError as exc:
            raise UnlearnLensError(f"file {str(results_path)!r}, run {name!r}: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UnlearnLensError(f"file {str(results_path)!r}: run {name!r} is incomplete or corrupt ({exc!r})") from exc
        run.masks = Masks.load(run_dir / _mask_file(name), dims=run.dims)
        runs[name] = run
    selective = _main_run(runs)
    optional: dict[str, Any] = {
        "initial_scores": lambda p: load_scores(p),
        "scores": lambda p: load_scores(p),
        "forget_stats": lambda p: ActivationStats.load(p),
        "retain_stats": lambda p: ActivationStats.load(p),
        "means": lambda p: ActivationStats.load(p),
    }
    for attr, loader in optional.items():
        path = run_dir / f"{attr}.safetensors"
        if path.is_file():
            setattr(selective, attr, loader(path))
    return results, runs


def _main_run(runs: Mapping[str, PruneRun]) -> PruneRun:
    if "selective" in runs:
        return runs["selective"]
    for run in runs.values():
        if run.kind == "selective":
            return run
    return next(iter(runs.values()))


def top_units(scores: Scores, n: int, kind: str = "mlp", exclude_nonfinite: bool = True) -> list[tuple[int, int]]:
    """The ``n`` units with the highest score, as ``(layer, unit)`` (unit flat for ``attn``).

    Args:
        scores: unit scores.
        n: how many.
        kind: ``"mlp"`` or ``"attn"`` (flat index ``head * d_head + d``).
        exclude_nonfinite: skip NaN and infinite scores.
    """
    values = scores.mlp if kind == "mlp" else scores.attn.reshape(scores.attn.shape[0], -1)
    flat = values.detach().to("cpu", torch.float64).reshape(-1)
    if exclude_nonfinite:
        flat = torch.where(torch.isfinite(flat), flat, torch.full_like(flat, -torch.inf))
    order = torch.argsort(flat, descending=True, stable=True)[: max(n, 0)]
    width = values.shape[1]
    return [divmod(int(i), width) for i in order if torch.isfinite(flat[i])]


# --- HTML pieces ----------------------------------------------------------------------------------------------

_CSS = """
:root{--ink:#1c2833;--muted:#5d6d7e;--rule:#d5d8dc;--accent:#1b9e77}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",Arial,sans-serif;color:var(--ink);
  margin:0;background:#f4f6f7;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 32px 60px 32px;background:#fff;min-height:100vh}
h1{font-size:1.6em;margin:0 0 4px 0}
h2{font-size:1.25em;margin:34px 0 6px 0;padding-bottom:4px;border-bottom:2px solid var(--rule)}
.meta{color:var(--muted);font-size:.9em;margin-bottom:14px}
.meta code,.explain code{background:#f2f3f4;padding:0 3px;border-radius:3px}
p.explain{color:#424949;margin:4px 0 10px 0;max-width:900px}
p.note{background:#fef9e7;border-left:4px solid #f4d03f;padding:8px 12px;margin:10px 0}
nav.toc{font-size:.9em;margin:10px 0 4px 0}
nav.toc a{color:var(--accent);text-decoration:none;margin-right:14px;white-space:nowrap}
table.summary,table.kv,table.steps{border-collapse:collapse;font-size:.92em;margin:8px 0}
table.summary th,table.summary td,table.steps th,table.steps td{padding:5px 14px;border-bottom:1px solid #eaecee;
  text-align:right;font-variant-numeric:tabular-nums}
table.summary th:first-child,table.summary td:first-child,table.steps td:first-child{text-align:left}
table.summary thead th,table.steps thead th{border-bottom:2px solid #aab7b8;background:#f8f9f9}
table.summary tr.group td{background:#f8f9f9;font-weight:600;text-align:left;color:var(--muted)}
table.summary td.best{font-weight:600}
span.rel{color:var(--muted);font-size:.88em;margin-left:4px}
table.kv td{padding:3px 14px 3px 0;vertical-align:top;font-size:.92em}
table.kv td:first-child{color:var(--muted);white-space:nowrap}
table.kv td code{font-size:.9em;background:#f2f3f4;padding:0 4px;border-radius:3px}
.kv-grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(330px,1fr));gap:0 28px;align-items:start;justify-items:start}
details{margin:8px 0}
summary{cursor:pointer;color:var(--accent)}
.figure{margin:6px 0 18px 0;border:1px solid #eaecee;border-radius:6px;padding:4px}
footer{color:var(--muted);font-size:.85em;margin-top:40px;border-top:1px solid var(--rule);padding-top:8px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _cell(value: float, ref: float | None, fmt: str = ".4f") -> str:
    text = f"{value:{fmt}}"
    if ref:
        text += f'<span class="rel">({value / ref:.0%})</span>'
    return text


def _summary_table(runs: Mapping[str, PruneRun]) -> str:
    main = _main_run(runs)
    base = main.base
    names = list(runs)
    head = "".join(f"<th>{_e(n)}<br><small>final step</small></th>" for n in names)
    rows: list[str] = []

    def row(label: str, unpruned: str, values: Sequence[str]) -> None:
        rows.append(f"<tr><td>{label}</td><td>{unpruned}</td>{''.join(f'<td>{v}</td>' for v in values)}</tr>")

    def group(label: str) -> None:
        rows.append(f'<tr class="group"><td colspan="{2 + len(names)}">{label}</td></tr>')

    group("pruned")
    row("steps", "0", [str(len(r.history) - 1) for r in runs.values()])
    for kind, attr, total in (("MLP neurons", "n_mlp", base.n_mlp), ("attention neurons", "n_attn", base.n_attn)):
        cells = []
        for r in runs.values():
            d = r.dims
            size = d.n_layers * d.d_mlp if attr == "n_mlp" else d.n_layers * d.n_heads * d.d_head
            n = getattr(r.final, attr)
            cells.append(f"{n:,} <span class=\"rel\">({n / size:.1%})</span>")
        row(kind, str(total), cells)
    k = base.forget.k
    for dataset in ("forget", "retain"):
        group(f"{dataset} set <small>({getattr(base, dataset).n_tokens:,} evaluation tokens)</small>")
        for metric, label, fmt in (("top1", "top-1 accuracy", ".4f"), ("topk", f"top-{k} accuracy", ".4f"),
                                   ("loss", "loss (nats)", ".4f"), ("perplexity", "perplexity", ".2f")):
            b = getattr(getattr(base, dataset), metric)
            row(label, f"{b:{fmt}}",
                [_cell(getattr(getattr(r.final, dataset), metric), b, fmt) for r in runs.values()])
    group("separation")
    areas = []
    for r in runs.values():
        try:
            areas.append(f"{r.separability_area():.3f}")
        except UnlearnLensError:
            areas.append("–")
    row("separability area (top-1)", "–", areas)
    return (f'<table class="summary"><thead><tr><th></th><th>unpruned</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>'
            '<p class="explain">Values in brackets are relative to the unpruned model. The random run prunes the '
            'same number of units per layer and step as the selective run, chosen uniformly at random.</p>')


def _steps_table(name: str, run: PruneRun) -> str:
    d = run.dims
    k = run.base.forget.k
    head = ("<tr><th>step</th><th>MLP pruned</th><th>attn pruned</th><th>forget top-1</th>"
            f"<th>forget top-{k}</th><th>forget loss</th><th>retain top-1</th><th>retain top-{k}</th>"
            "<th>retain loss</th><th>seconds</th></tr>")
    rows = []
    for s in run.history:
        rows.append(
            f"<tr><td>{s.step}</td><td>{s.n_mlp / (d.n_layers * d.d_mlp):.1%}</td>"
            f"<td>{s.n_attn / (d.n_layers * d.n_heads * d.d_head):.1%}</td>"
            f"<td>{s.forget.top1:.4f}</td><td>{s.forget.topk:.4f}</td><td>{s.forget.loss:.4f}</td>"
            f"<td>{s.retain.top1:.4f}</td><td>{s.retain.topk:.4f}</td><td>{s.retain.loss:.4f}</td>"
            f"<td>{s.seconds:.1f}</td></tr>"
        )
    return (f"<details><summary>Step by step: {_e(name)} run</summary>"
            f'<table class="steps"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></details>')


def _kv_table(items: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td><code>{_e(_plain(v))}</code></td></tr>" for k, v in items.items())
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _plain(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if value is None:
        return "None"
    return str(value)


def _settings(results: Mapping[str, Any], main: PruneRun) -> str:
    run_info = {
        "model": results.get("model") or main.model or "?",
        "forget dataset": results.get("forget", "?"),
        "retain dataset": results.get("retain", "?"),
        "units": f"{main.dims.n_layers} layers × {main.dims.d_mlp} MLP neurons; "
                 f"{main.dims.n_heads} heads × {main.dims.d_head} attention neurons",
        "unlearn_lens version": results.get("version", main.version),
    }
    seconds = results.get("seconds", main.seconds)
    if isinstance(seconds, (int, float)):
        run_info["run time"] = f"{seconds:.0f} s"
    config = results.get("config") if isinstance(results.get("config"), dict) else main.config.to_dict()
    return f'<div class="kv-grid">{_kv_table(run_info)}{_kv_table(config)}</div>'


class _Page:
    """Collects sections and renders them with plotly.js embedded once."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, str, str]] = []  # (anchor, heading, body)
        self.n_figures = 0

    def add(self, anchor: str, heading: str, body: str) -> None:
        self.sections.append((anchor, heading, body))

    def figure(self, fig: Any, anchor: str) -> str:
        self.n_figures += 1
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{anchor}",
                          config={"displaylogo": False, "responsive": True})
        return f'<div class="figure">{div}</div>'

    def render(self, title: str, meta: str) -> str:
        from plotly.offline import get_plotlyjs

        from unlearn_lens.viz import CARD_CSS

        toc = "\n".join(f'<a href="#{a}">{_e(h)}</a>' for a, h, _ in self.sections)
        body = "".join(f'<section id="{a}"><h2>{_e(h)}</h2>{b}</section>' for a, h, b in self.sections)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{_CSS}{CARD_CSS}</style>"
            f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head>"
            f"<body><main><h1>{_e(title)}</h1><div class=\"meta\">{meta}</div>"
            f"<nav class=\"toc\">{toc}</nav>{body}"
            "<footer>Written by unlearn_lens. Selective pruning after Pochinkov &amp; Schoots (2024), "
            "arXiv:2403.01267. This file is self-contained and works offline.</footer></main></body></html>\n"
        )


_EXPLAIN = {
    "effects": "Next-token accuracy and loss on held-out forget and retain tokens after each pruning step; x is the "
               "share of units pruned so far. Selective pruning should make forget performance fall much faster "
               "than retain performance; the random run (same number of units per layer) is the control.",
    "separability": "Each point is a pruning step: forget top-1 (x) and retain top-1 (y), both relative to the "
                    "unpruned model, starting at (1, 1). The shaded region (the path closed at (0, 0)) is the "
                    "separability area: about 0.5 when both fall together (the dotted diagonal), approaching 1 "
                    "when forget collapses while retain holds.",
    "map_mlp": "Score of every MLP neuron, sorted within each layer (highest first). Red: more important for "
               "forget than retain; blue: the reverse. Black ticks mark the neurons pruned by the end of the run; "
               "steps after the first chose from scores re-collected on the pruned model, so not every tick sits "
               "at the left edge.",
    "map_attn": "The same for attention neurons (each head's d_head outputs, flattened as head × d_head + d).",
    "heads": "Left: the score of each whole head (the mean of its neurons' scores). Right: the share of each "
             "head's neurons that was pruned.",
    "dist": "Spread of the scores in each layer: where the forget-specific outliers live.",
    "per_layer": "How many units each step took from each layer (selective run). The random baseline takes the "
                 "same counts per layer, so this also describes it.",
}


def _score_note(scores: Scores, which: str) -> str:
    from unlearn_lens.viz import RATIO_METHODS

    if scores.method in RATIO_METHODS:
        scale = (f"Colours and values are log10 of the '{_e(scores.method)}' score ratio (0 = equally important "
                 "for both datasets; scores below 1e-6 are drawn at −6).")
    else:
        scale = f"The '{_e(scores.method)}' score is not a ratio; values are shown as they are."
    return f'<p class="explain">Scores: {which}. {scale}</p>'


def _figures(page: _Page, runs: Mapping[str, PruneRun]) -> None:
    from unlearn_lens import viz

    main = _main_run(runs)
    page.add("effects", "Forget and retain performance", f'<p class="explain">{_EXPLAIN["effects"]}</p>'
             + page.figure(viz.pruning_effects(runs), "effects")
             + "".join(_steps_table(n, r) for n, r in runs.items()))
    try:
        sep = page.figure(viz.separability_trajectory(runs), "separability")
    except UnlearnLensError as exc:
        sep = f'<p class="note">No separability plot: {_e(exc)}</p>'
    page.add("separability", "Separability", f'<p class="explain">{_EXPLAIN["separability"]}</p>{sep}')

    scores, which = main.initial_scores, "the unpruned model (step 1), the ranking the first step pruned by"
    if scores is None and main.scores is not None:
        scores, which = main.scores, "the last step, collected on the already pruned model"
    if scores is None:
        page.add("scores", "Unit scores", '<p class="note">This run has no saved scores (random runs have none), '
                 "so the specialisation maps and score distributions are left out.</p>")
    else:
        note = _score_note(scores, which)
        page.add("map-mlp", "Where the forget-specific MLP neurons are",
                 f'<p class="explain">{_EXPLAIN["map_mlp"]}</p>{note}'
                 + page.figure(viz.specialisation_map(scores, main.masks, "mlp"), "map-mlp"))
        page.add("map-attn", "Where the forget-specific attention neurons are",
                 f'<p class="explain">{_EXPLAIN["map_attn"]}</p>'
                 + page.figure(viz.specialisation_map(scores, main.masks, "attn"), "map-attn"))
        page.add("heads", "Attention heads", f'<p class="explain">{_EXPLAIN["heads"]}</p>'
                 + page.figure(viz.head_map(scores, main.masks, agg=main.config.head_agg), "heads"))
        page.add("dist", "Score distributions", f'<p class="explain">{_EXPLAIN["dist"]}</p>'
                 + page.figure(viz.score_distributions(scores, "mlp"), "dist-mlp")
                 + page.figure(viz.score_distributions(scores, "attn"), "dist-attn"))
    body = f'<p class="explain">{_EXPLAIN["per_layer"]}</p>' + page.figure(viz.pruned_per_layer(main, "mlp"), "pl-mlp")
    if main.final.n_attn:
        body += page.figure(viz.pruned_per_layer(main, "attn"), "pl-attn")
    page.add("per-layer", "Units pruned per layer", body)


def _resolve_card_inputs(
    results: Mapping[str, Any], model: Any, forget_texts: Any, retain_texts: Any, load_model_from_results: bool,
    device: str | None,
) -> tuple[Any, Any, Any, str | None]:
    """The model and texts for the neuron cards, or a note saying why there are none."""
    from unlearn_lens.data import load_texts
    from unlearn_lens.models import load_model

    if model is None or isinstance(model, (str, os.PathLike)):
        if model is None and not load_model_from_results:
            return None, None, None, ("No model was given, so there are no neuron cards. Rebuild the report with "
                                      "<code>unlearn-lens report RUN_DIR</code> (which loads the model named in "
                                      "results.json) or <code>write_report(..., model=...)</code>.")
        name = model if model is not None else results.get("model")
        if not name:
            return None, None, None, "results.json names no model, so there are no neuron cards."
        try:
            model = load_model(name, device=device)
        except UnlearnLensError as exc:
            return None, None, None, f"The model {_e(name)} is unavailable, so there are no neuron cards: {_e(exc)}"
    texts: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for key, given in (("forget", forget_texts), ("retain", retain_texts)):
        if given is not None:
            texts[key] = given
        elif results.get(key):
            field = results.get(f"{key}_field", results.get("text_field", "text"))
            try:
                texts[key] = load_texts(results[key], split=results.get("split", "train"), text_field=field)
            except UnlearnLensError as exc:
                problems[key] = str(exc)
                logger.warning("report: cannot load the %s texts %r: %s", key, results[key], exc)
    if "forget" not in texts:
        reason = f": {_e(problems['forget'])}" if "forget" in problems else " (none given, none named in results.json)"
        return None, None, None, f"The forget texts are unavailable, so there are no neuron cards{reason}."
    return model, texts.get("forget"), texts.get("retain"), None


def _cards_section(
    page: _Page, runs: Mapping[str, PruneRun], results: Mapping[str, Any], *, model: Any, forget_texts: Any,
    retain_texts: Any, n_cards: int, load_model_from_results: bool, device: str | None, card_tokens: int,
    n_contexts: int,
) -> None:
    from unlearn_lens.models import model_dims
    from unlearn_lens.viz import neuron_cards

    main = _main_run(runs)
    scores = main.initial_scores if main.initial_scores is not None else main.scores
    if scores is None:
        page.add("cards", "Neuron cards", '<p class="note">No scores are saved, so there is no ranking of units '
                 "to pick neuron cards from.</p>")
        return
    model, forget, retain, note = _resolve_card_inputs(results, model, forget_texts, retain_texts,
                                                       load_model_from_results, device)
    if note is None:
        try:
            if model_dims(model) != main.dims:
                note = (f"The model has units {_e(model_dims(model).to_dict())}, but the run was made for "
                        f"{_e(main.dims.to_dict())}; no neuron cards.")
            else:
                units = top_units(scores, n_cards, "mlp")
                cards = neuron_cards(model, None, units, "mlp", forget_texts=forget, retain_texts=retain,
                                     n_contexts=n_contexts, max_tokens=card_tokens, seq_len=main.config.seq_len,
                                     batch_size=main.config.batch_size, scores=scores, masks=main.masks,
                                     include_css=False)
        except UnlearnLensError as exc:
            note = f"Neuron cards could not be made: {_e(exc)}"
    if note is not None:
        page.add("cards", "Neuron cards", f'<p class="note">{note}</p>')
        return
    intro = (f'<p class="explain">The {len(cards)} MLP neurons with the highest score on the unpruned model. '
             f"Statistics are over up to {card_tokens:,} tokens of each dataset, read on the unpruned model "
             "(BOS excluded); the ratio column divides forget by retain. Each context shows the tokens before a "
             "top-activating token (outlined) and a few after, coloured by the neuron's activation "
             "(red positive, blue negative). ↵ marks a newline.</p>")
    page.add("cards", "Neuron cards: the most forget-specific MLP neurons", intro + "".join(cards))


def write_report(
    run_dir: str | os.PathLike,
    *,
    runs: Mapping[str, PruneRun] | None = None,
    model: Any = None,
    forget_texts: Any = None,
    retain_texts: Any = None,
    n_cards: int = 4,
    load_model_from_results: bool = False,
    device: str | None = None,
    info: Mapping[str, Any] | None = None,
    title: str | None = None,
    card_tokens: int = 20_000,
    n_contexts: int = 5,
) -> Path:
    """Write ``run_dir/report.html``: settings, summary, every figure and neuron cards, in one offline file.

    Args:
        run_dir: the run directory (created if needed when ``runs`` are given).
        runs: ``{name: PruneRun}`` in memory (e.g. ``{"selective": run, "random": baseline}``);
            None to rebuild them from the files in ``run_dir`` (see :func:`load_runs`).
        model: the (unpruned) model for the neuron cards, or a name or directory to load it
            from (as :func:`unlearn_lens.load_model`; if that fails the report says so).
        forget_texts: forget dataset for the cards (default: reloaded from ``results.json``).
        retain_texts: retain dataset for the cards (default: reloaded from ``results.json``).
        n_cards: neuron cards of the top-scoring MLP neurons (0: none).
        load_model_from_results: without ``model``, load the model named in ``results.json``
            for the cards; if that fails the report says so instead of failing.
        device: device for a model loaded here.
        info: extra facts for the settings table (``model``, ``forget``, ``retain``, ...);
            they override ``results.json``.
        title: page title.
        card_tokens: tokens scanned per dataset for the cards.
        n_contexts: contexts per dataset in each card.

    Returns:
        The path of the report.

    Raises:
        UnlearnLensError: the run directory lacks a needed file, or a file is corrupt.
    """
    run_dir = Path(run_dir)
    results: dict[str, Any] = {}
    if runs is None:
        results, runs = load_runs(run_dir)
    else:
        if not runs:
            raise UnlearnLensError("runs is empty: nothing to report")
        try:
            results = _read_results(run_dir / "results.json")
        except UnlearnLensError:
            results = {}
    results = {**results, **(info or {})}
    main = _main_run(runs)
    model_label = results.get("model") or main.model or "model"
    title = title or f"Selective pruning report: {model_label}"
    meta = (f"forget <code>{_e(results.get('forget', '?'))}</code> · retain <code>{_e(results.get('retain', '?'))}</code>"
            f" · {len(runs)} run{'s' if len(runs) != 1 else ''} ({_e(', '.join(runs))}) · written "
            f"{time.strftime('%Y-%m-%d %H:%M')} · run directory <code>{_e(run_dir)}</code>")
    page = _Page()
    page.add("summary", "Summary", _summary_table(runs))
    page.add("settings", "Settings", _settings(results, main))
    _figures(page, runs)
    if n_cards <= 0:
        page.add("cards", "Neuron cards", '<p class="note">Neuron cards were switched off (n_cards=0 or --no-cards).</p>')
    else:
        _cards_section(page, runs, results, model=model, forget_texts=forget_texts, retain_texts=retain_texts,
                       n_cards=n_cards, load_model_from_results=load_model_from_results, device=device,
                       card_tokens=card_tokens, n_contexts=n_contexts)
    path = run_dir / REPORT_NAME
    write_text(path, page.render(title, meta))
    logger.info("report written to %s (%d figures)", path, page.n_figures)
    return path
