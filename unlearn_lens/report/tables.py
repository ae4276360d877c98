"""The tables of a run: in the HTML report, and as plain text in the terminal.

The summary table sets the unpruned model against the final step of the selective run
and of its random baseline, led by the headline number (retain top-1 where forget top-1
first falls to a level) and the separability area. With a baseline of several seeds
(:meth:`~unlearn_lens.results.PruneRun.random_runs`) the random column gives each
number as the mean over the seeds with its min–max range, and the headline of every
seed. The report (:mod:`unlearn_lens.report.html`) renders :func:`summary_table_html`,
:func:`settings` and :func:`steps_table` through its Jinja2 template, which reads the
:class:`Cell` and :class:`Row` fields; :func:`summary_table_text` and :func:`sweep_table`
are the terminal's text tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from unlearn_lens.report.bands import group_label, run_groups, spread
from unlearn_lens.results import PruneRun

__all__ = [
    "Cell",
    "Row",
    "pct",
    "settings",
    "steps_table",
    "summary_table_html",
    "summary_table_text",
    "sweep_table",
]


@dataclass
class Cell:
    """One cell: its text, a relative value or range in brackets, the exact number, a CSS class."""

    text: str
    rel: str = ""
    value: float | None = None  # the exact number, written as data-value
    cls: str = ""


@dataclass
class Row:
    """One row of the summary (a group heading when ``group`` is set)."""

    label: str = ""
    unpruned: str = ""
    cells: list[Cell] = field(default_factory=list)
    definition: str = ""
    cls: str = ""
    group: str = ""
    detail: str = ""


def pct(level: float) -> str:
    """A level as a percentage: ``0.5`` -> ``"50 %"``."""
    return f"{level * 100:g} %"


def _cell(values: list[float], fmt: str, base: float | None = None) -> Cell:
    """One number of a column (relative to ``base`` in brackets); over several seeds their mean, with the min–max."""
    mean, lo, hi = spread(values)
    rel = f"{mean / base:.0%}" if base else ""
    if len(values) > 1:
        rel += f"{'; ' if rel else ''}min–max {lo:{fmt}}–{hi:{fmt}}"
    return Cell(f"{mean:{fmt}}", rel, mean)


def _separation_rows(groups: dict[str, list[PruneRun]], level: float) -> list[Row]:
    headline, areas = [], []
    for group in groups.values():
        stops = [f"{r.relative_path()[0][-1]:.0%}" for r in group]
        stop = f"forget at {', '.join(stops)} after step {group[0].final.step}"
        values = [r.retain_at_forget(level) for r in group]
        if len(group) > 1:  # every seed's headline
            texts = [f"{v:.1%}" if v is not None else "not reached" for v in values]
            headline.append(Cell(", ".join(texts), f"seeds {', '.join(str(r.seed) for r in group)}; {stop}"))
        elif values[0] is None:
            headline.append(Cell("not reached", stop))
        else:
            headline.append(Cell(f"{values[0]:.1%}", f"top-1 {values[0] * group[0].base.retain.top1:.4f}", values[0]))
        area = _cell([r.separability_area() for r in group], ".3f")
        rel = f"stopped with {stop}"
        if len(group) > 1:  # the seeds' min–max first
            rel = f"{area.rel}; {rel}"
        areas.append(Cell(area.text, rel, area.value))
    return [
        Row(group="separation", detail="top-1, relative to the unpruned model"),
        Row(
            f"retain top-1 at forget top-1 = {pct(level)}",
            "100 %",
            headline,
            cls="headline",
            definition=f"Retain top-1 (share of its unpruned value) where forget top-1 first falls to {pct(level)} "
            "of its unpruned value, interpolated linearly between steps. It does not depend on where the "
            "run stopped; “not reached” gives the forget level of the last step.",
        ),
        Row(
            "separability area (top-1)",
            "–",
            areas,
            definition="Area under the path of retain top-1 against forget top-1 (both relative to the unpruned "
            "model) from (1, 1), closed by a straight line from the last step to (0, 0). It depends on "
            f"where the run stopped: a perfect run stopped at forget {pct(level)} scores at most 0.75, "
            "so compare areas only of runs stopped at similar forget levels.",
        ),
    ]


def _dataset_rows(groups: dict[str, list[PruneRun]], main: PruneRun, dataset: str) -> list[Row]:
    """The rows of one dataset: each metric at the final step of every group, against the unpruned model."""
    base = getattr(main.base, dataset)
    skipped = base.all_tokens is not None  # the metrics leave out the most common tokens; all tokens follow
    metrics = (
        ("top1", "top-1 accuracy", ".4f"),
        ("topk", f"top-{main.base.forget.k} accuracy", ".4f"),
        ("loss", "loss (nats)", ".4f"),
        ("perplexity", "perplexity", ".2f"),
    )
    rows = [Row(group=f"{dataset} set", detail=f"{base.n_tokens:,} evaluation tokens")]
    for metric, label, fmt in metrics:
        if skipped:
            label += f" (without the {main.config.skip_common} most common tokens)"
        ref = getattr(base, metric)
        cells = [_cell([getattr(getattr(r.final, dataset), metric) for r in g], fmt, ref) for g in groups.values()]
        rows.append(Row(label, f"{ref:{fmt}}", cells))
    if skipped:
        for metric, label, fmt in metrics[:2]:
            ref = getattr(base.all_tokens, metric)
            cells = [
                _cell([getattr(getattr(r.final, dataset).all_tokens, metric) for r in g], fmt, ref)
                for g in groups.values()
            ]
            rows.append(Row(f"{label} (all tokens)", f"{ref:{fmt}}", cells))
    return rows


def summary_table_html(groups: dict[str, list[PruneRun]], main: PruneRun, level: float) -> dict[str, Any]:
    """The summary table of the report: one column per name (the seeds of a group summarised in one column).

    Args:
        groups: ``{name: [run, ...]}`` (:func:`unlearn_lens.bands.run_groups`).
        main: the run whose unpruned model is the reference column.
        level: forget level of the headline row.

    Returns:
        ``{"names": [column label, ...], "rows": [Row, ...], "explain": [paragraph, ...]}``.
    """
    runs = {name: group[0] for name, group in groups.items()}  # the seeds of a group prune the same counts
    rows = _separation_rows(groups, level)
    rows.append(Row(group="pruned"))
    rows.append(Row("steps", "0", [Cell(str(len(r.history) - 1)) for r in runs.values()]))
    for label, attr in (("MLP neurons", "n_mlp"), ("attention neurons", "n_attn")):
        cells = [
            Cell(f"{getattr(r.final, attr):,}", f"{getattr(r.final, attr) / getattr(r.dims, attr):.1%}")
            for r in runs.values()
        ]
        rows.append(Row(label, "0", cells))
    for dataset in ("forget", "retain"):
        rows += _dataset_rows(groups, main, dataset)
    explain = [
        "Values in brackets are relative to the unpruned model. The random run prunes the same number of "
        "units per layer and step as the selective run, chosen uniformly at random."
    ]
    for name, group in groups.items():
        if len(group) > 1:
            explain.append(
                f"The {name} column gives each number over {len(group)} seeds "
                f"({', '.join(str(r.seed) for r in group)}): their mean, with their min–max range in "
                "brackets; the headline row lists every seed's value, and the figures draw the seeds as a band."
            )
    return {"names": [group_label(name, group) for name, group in groups.items()], "rows": rows, "explain": explain}


def _plain(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _texts_used(texts: dict[str, Any]) -> str:
    """One line on which texts gave the statistics and which the evaluation."""

    def ranges(spans: list[dict[str, Any]]) -> str:
        parts = [
            f"{s['tokens']:,} tokens from texts {s['texts'][0]}–{s['texts'][1] - 1} of {s['source']}" for s in spans
        ]
        return "; ".join(parts) or "unknown"

    shared = texts.get("shared_texts")
    return (
        f"statistics: {ranges(texts.get('statistics', []))}. "
        f"evaluation: {ranges(texts.get('evaluation', []))}. "
        f"texts shared: {'unknown' if shared is None else shared}"
    )


def settings(run: PruneRun, groups: dict[str, list[PruneRun]]) -> dict[str, dict[str, str]]:
    """The run's facts (model, data, units, version, run times) and its config, as text.

    Returns:
        ``{"run": {fact: text}, "config": {field: text}}``.
    """
    info, d = run.info, run.dims
    facts: dict[str, Any] = {"model": info.get("model") or run.model or "?"}
    if run.model and run.model != facts["model"]:
        facts["model name"] = run.model
    for key in ("forget", "retain"):
        facts[f"{key} dataset"] = info.get(key, "?")
        if f"{key}_field" in info:
            facts[f"{key} text field"] = info[f"{key}_field"]
    if "split" in info:
        facts["split"] = info["split"]
    for key, texts in (info.get("texts") or {}).items():
        facts[f"{key} texts"] = _texts_used(texts)
    facts["units"] = f"{d.n_layers} layers × {d.d_mlp} MLP neurons; {d.n_heads} heads × {d.d_head} attention neurons"
    if run.config.compat != "none":
        facts["rules"] = f"the reference implementation's (compat {run.config.compat!r}), not the textbook ones"
    facts["unlearn_lens version"] = run.version
    for name, group in groups.items():
        for r in group:
            which = f"{name} seed {r.seed}" if len(group) > 1 else name
            facts[f"run time ({which})"] = f"{r.seconds:.0f} s"
    return {
        "run": {k: _plain(v) for k, v in facts.items()},
        "config": {k: _plain(v) for k, v in run.config.to_dict().items()},
    }


def steps_table(name: str, run: PruneRun) -> dict[str, Any]:
    """Every step of one run: ``{"name": name, "header": [...], "rows": [[Cell, ...], ...]}``."""
    d, k = run.dims, run.base.forget.k
    header = [
        "step",
        "MLP pruned",
        "attn pruned",
        "forget top-1",
        f"forget top-{k}",
        "forget loss",
        "retain top-1",
        f"retain top-{k}",
        "retain loss",
        "seconds",
    ]
    rows = []
    for s in run.history:
        metrics = [getattr(getattr(s, ds), m) for ds in ("forget", "retain") for m in ("top1", "topk", "loss")]
        rows.append(
            [
                Cell(str(s.step)),
                Cell(f"{s.n_mlp / d.n_mlp:.1%}"),
                Cell(f"{s.n_attn / d.n_attn:.1%}"),
                *[Cell(f"{v:.4f}", value=v) for v in metrics],
                Cell(f"{s.seconds:.1f}", cls="secs"),
            ]
        )
    return {"name": name, "header": header, "rows": rows}


def summary_table_text(run: Any, level: float = 0.5) -> str:
    """The summary table as text for the terminal: the unpruned model vs the final step of the run and its baseline.

    With a baseline of several seeds (:meth:`~unlearn_lens.results.PruneRun.random_runs`), its
    column is headed ``"random (N seeds)"`` and gives each number as the mean over the seeds
    with their min–max range, and the headline of every seed.
    """
    groups = run_groups(run)
    base = run.base
    rows: list[list[str]] = [["", "unpruned", *[group_label(n, g) for n, g in groups.items()]]]

    def rel(values: list[float], ref: float) -> str:
        mean, lo, hi = spread(values)
        text = f"{mean:.4f} ({mean / ref:.0%})" if ref else f"{mean:.4f}"
        return text if len(values) == 1 else f"{text} [{lo:.4f}–{hi:.4f}]"

    def column(dataset: str, metric: str, all_tokens: bool, ref: float) -> list[str]:
        def value(r: Any) -> float:
            result = getattr(r.final, dataset)
            return getattr(result.all_tokens if all_tokens else result, metric)

        return [rel([value(r) for r in g], ref) for g in groups.values()]

    firsts = [g[0] for g in groups.values()]  # the seeds of a group prune the same counts
    if run.config.compat != "none":  # the reference implementation's rules, not the textbook ones
        rows.append(["compat (rules)", run.config.compat, *[r.config.compat for r in firsts]])
    rows.append(["steps", "0", *[str(len(r.history) - 1) for r in firsts]])
    rows.append(["MLP neurons pruned", "0%", *[f"{r.final.n_mlp / r.dims.n_mlp:.1%}" for r in firsts]])
    rows.append(["attention neurons pruned", "0%", *[f"{r.final.n_attn / r.dims.n_attn:.1%}" for r in firsts]])
    names = {"top1": "top1", "topk": f"top{base.forget.k}", "loss": "loss"}
    skipped = base.forget.all_tokens is not None  # the metrics leave out the most common tokens; all tokens follow
    for dataset in ("forget", "retain"):
        for metric in ("top1", "topk", "loss"):
            ref = getattr(getattr(base, dataset), metric)
            label = f"{dataset} {names[metric]}"
            if skipped:
                label += f" (w/o {run.config.skip_common} most common)"
            rows.append([label, f"{ref:.4f}", *column(dataset, metric, False, ref)])
        if skipped:
            for metric in ("top1", "topk"):
                ref = getattr(getattr(base, dataset).all_tokens, metric)
                label = f"{dataset} {names[metric]} (all tokens)"
                rows.append([label, f"{ref:.4f}", *column(dataset, metric, True, ref)])
    headline = []
    for g in groups.values():
        values = [(r.retain_at_forget(level), r.relative_path()[0][-1]) for r in g]
        texts = [f"{v:.1%}" if v is not None else f"not reached ({last:.0%})" for v, last in values]
        headline.append(", ".join(texts))
    rows.append([f"retain top1 at forget top1 = {level:.0%}", "-", *headline])
    rows.append(
        ["separability area (to last step)", "-", *[_area([r.separability_area() for r in g]) for g in groups.values()]]
    )
    return aligned(rows, n_left=1)


def _area(values: list[float]) -> str:
    mean, lo, hi = spread(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} [{lo:.3f}–{hi:.3f}]"


def aligned(rows: list[list[str]], n_left: int) -> str:
    """Rows as text columns (the first ``n_left`` left-aligned, the rest right-aligned), a rule under the first."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i < n_left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def sweep_table(result: Any) -> str:
    """One line per cell of a :class:`~unlearn_lens.sweep.Sweep`: the headline, the area, the steps run."""
    rows = [["ablation", "scoring", f"retain at forget {result.level:.0%}", "area", "steps"]]
    for r in result.table():
        value = r["retain_at_forget"]
        rows.append(
            [
                r["ablation"],
                r["scoring"],
                f"{value:.1%}" if value is not None else f"not reached ({r['forget_rel']:.0%})",
                f"{r['separability_area']:.3f}",
                str(r["n_steps"]),
            ]
        )
    return aligned(rows, n_left=2)
