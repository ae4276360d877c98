"""Plain-text tables for the terminal: a run against its baseline, and the cells of a sweep."""

from __future__ import annotations

from typing import Any

from unlearn_lens.bands import group_label, run_groups, spread

__all__ = ["summary_table", "sweep_table"]


def summary_table(run: Any, level: float = 0.5) -> str:
    """A one-screen text table: the unpruned model vs the final step of the run and of its baseline.

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
    rows.append(["steps", "0", *[str(len(r.history) - 1) for r in firsts]])
    rows.append(["MLP neurons pruned", "0%", *[f"{r.final.n_mlp / r.dims.n_mlp:.1%}" for r in firsts]])
    rows.append(["attention neurons pruned", "0%", *[f"{r.final.n_attn / r.dims.n_attn:.1%}" for r in firsts]])
    skipped = base.forget.all_tokens is not None
    for dataset in ("forget", "retain"):
        for metric in ("top1", "topk", "loss"):
            ref = getattr(getattr(base, dataset), metric)
            label = f"{dataset} {metric if metric != 'topk' else f'top{base.forget.k}'}"
            label += f" (w/o {run.config.skip_common} most common)" if skipped else ""
            rows.append([label, f"{ref:.4f}", *column(dataset, metric, False, ref)])
        for metric in ("top1", "topk") if skipped else ():
            ref = getattr(getattr(base, dataset).all_tokens, metric)
            label = f"{dataset} {metric if metric != 'topk' else f'top{base.forget.k}'} (all tokens)"
            rows.append([label, f"{ref:.4f}", *column(dataset, metric, True, ref)])
    headline = []
    for g in groups.values():
        values = [(r.retain_at_forget(level), r.relative_path()[0][-1]) for r in g]
        texts = [f"{v:.1%}" if v is not None else f"not reached ({last:.0%})" for v, last in values]
        headline.append(", ".join(texts))
    rows.append([f"retain top1 at forget top1 = {level:.0%}", "-", *headline])
    rows.append(["separability area (to last step)", "-",
                 *[_area([r.separability_area() for r in g]) for g in groups.values()]])
    return aligned(rows, n_left=1)


def _area(values: list[float]) -> str:
    mean, lo, hi = spread(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} [{lo:.3f}–{hi:.3f}]"


def aligned(rows: list[list[str]], n_left: int) -> str:
    """Rows as text columns (the first ``n_left`` left-aligned, the rest right-aligned), a rule under the first."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < n_left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def sweep_table(result: Any) -> str:
    """One line per cell of a :class:`~unlearn_lens.sweep.Sweep`: the headline, the area, the steps run."""
    rows = [["ablation", "scoring", f"retain at forget {result.level:.0%}", "area", "steps"]]
    for r in result.table():
        value = r["retain_at_forget"]
        rows.append([r["ablation"], r["scoring"], f"{value:.1%}" if value is not None else
                     f"not reached ({r['forget_rel']:.0%})", f"{r['separability_area']:.3f}", str(r["steps"])])
    return aligned(rows, n_left=2)
